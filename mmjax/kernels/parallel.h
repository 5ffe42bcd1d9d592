// The work split shared by the kernels: items on the caller and XLA's
// intra-op thread pool (the pool the FFI call is given).

#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace mmjax_kernels {

// Runs fn(item, scratch) for item in [0, n) on the caller and XLA's pool;
// `scratch` is the running thread's own buffer, for fn to size.
// The caller works too (it is itself one of the pool's threads when XLA
// runs ops in parallel), so waiting never idles a core; late pool tasks
// find no items left and touch only the shared counters.
template <typename Fn>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, Fn fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, fn]() {
    // Per thread and kept across calls: a fresh buffer per call would be
    // fresh pages to fault in every step.
    static thread_local std::vector<float> scratch;
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      fn(i, scratch);
      state->done.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t t = 0; t < helpers; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (state->done.load() < n) std::this_thread::yield();
}

}  // namespace mmjax_kernels
