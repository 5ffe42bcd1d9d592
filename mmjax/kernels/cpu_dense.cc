// The dense layer's matmuls for XLA:CPU as XLA FFI handlers (see
// cpu_dense.py, which compiles and registers this file with the attention
// kernel): y = x W + b, dx = dy W^T, and dW = x^T dy with db = sum(dy) in
// the same pass over dy. All f32, 2-D (the caller flattens leading axes),
// N (W's columns) a multiple of 16. The tiles and blocking are in gemm.h;
// blocks run on XLA's intra-op pool (parallel.h).

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gemm.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using mmjax_gemm::PackedGemm;
using mmjax_gemm::ReduceGemm;
using mmjax_gemm::Strided;
using mmjax_kernels::parallel_for;
using F32 = ffi::Buffer<ffi::F32>;

ffi::Error check_2d(const F32& x, const char* name) {
  if (x.dimensions().size() != 2)
    return ffi::Error::InvalidArgument(std::string("dense kernel: ") + name +
                                       " must be 2-D");
  return ffi::Error::Success();
}

ffi::Error check_width(int64_t n) {
  if (n % mmjax_gemm::kW)
    return ffi::Error::InvalidArgument(
        "dense kernel: the output width must be a multiple of 16");
  return ffi::Error::Success();
}

// Packs B and runs C = A B (+ bias) on the pool. The packed panels live in
// a per-thread buffer that is reused across calls (no fresh pages per step).
void packed_gemm(ffi::ThreadPool& pool, PackedGemm g) {
  static thread_local std::vector<float> packed;
  packed.resize(PackedGemm::packed_size(g.N, g.K));
  g.packed = packed.data();
  parallel_for(pool, g.pack_units(),
               [&](int64_t u, std::vector<float>&) { g.pack(u); });
  parallel_for(pool, g.blocks(),
               [&](int64_t b, std::vector<float>&) { g.run_block(b); });
}

// y (M x N) = x (M x K) w (K x N) + b (N).
ffi::Error DenseForward(ffi::ThreadPool pool, F32 x, F32 w, F32 b,
                        ffi::ResultBuffer<ffi::F32> y) {
  for (auto [buf, name] : {std::pair{&x, "x"}, {&w, "w"}})
    if (ffi::Error e = check_2d(*buf, name); e.failure()) return e;
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1],
                N = w.dimensions()[1];
  if (w.dimensions()[0] != K || b.element_count() != N)
    return ffi::Error::InvalidArgument("dense kernel: x, w, b do not agree");
  if (ffi::Error e = check_width(N); e.failure()) return e;
  packed_gemm(pool, PackedGemm{M, N, K, Strided{x.typed_data(), K, 1},
                               Strided{w.typed_data(), N, 1}, b.typed_data(),
                               y->typed_data(), nullptr});
  return ffi::Error::Success();
}

// dx (M x K) = dy (M x N) w^T, w (K x N).
ffi::Error DenseInputGrad(ffi::ThreadPool pool, F32 dy, F32 w,
                          ffi::ResultBuffer<ffi::F32> dx) {
  for (auto [buf, name] : {std::pair{&dy, "dy"}, {&w, "w"}})
    if (ffi::Error e = check_2d(*buf, name); e.failure()) return e;
  const int64_t M = dy.dimensions()[0], N = dy.dimensions()[1],
                K = w.dimensions()[0];
  if (w.dimensions()[1] != N)
    return ffi::Error::InvalidArgument("dense kernel: dy, w do not agree");
  if (ffi::Error e = check_width(K); e.failure()) return e;
  // B(n, k) = w[k, n]: w^T, packed from w's columns.
  packed_gemm(pool, PackedGemm{M, K, N, Strided{dy.typed_data(), N, 1},
                               Strided{w.typed_data(), 1, N}, nullptr,
                               dx->typed_data(), nullptr});
  return ffi::Error::Success();
}

// dw (K x N) = x^T dy and db (N) = the column sums of dy, for x (T x K) and
// dy (T x N).
ffi::Error DenseWeightGrad(ffi::ThreadPool pool, F32 x, F32 dy,
                           ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db) {
  for (auto [buf, name] : {std::pair{&x, "x"}, {&dy, "dy"}})
    if (ffi::Error e = check_2d(*buf, name); e.failure()) return e;
  const int64_t T = x.dimensions()[0], K = x.dimensions()[1],
                N = dy.dimensions()[1];
  if (dy.dimensions()[0] != T)
    return ffi::Error::InvalidArgument("dense kernel: x, dy do not agree");
  if (ffi::Error e = check_width(N); e.failure()) return e;
  // Two slices of T per thread (when T is long enough) balance the work if
  // one thread is held up elsewhere; each slice costs a partial K x N sum.
  const int64_t slices = std::max<int64_t>(
      1, std::min<int64_t>((T + ReduceGemm::kTc - 1) / ReduceGemm::kTc,
                           2 * (pool.num_threads() + 1)));
  static thread_local std::vector<float> partials;
  ReduceGemm g{K, N, T, slices, x.typed_data(), dy.typed_data(),
               dw->typed_data(), db->typed_data(), nullptr};
  partials.resize(slices * g.part_size());
  g.partials = partials.data();
  const int64_t scratch = ReduceGemm::scratch_size(K, N);
  parallel_for(pool, slices, [&](int64_t s, std::vector<float>& buf) {
    buf.resize(scratch);
    g.run_slice(s, buf.data());
  });
  parallel_for(pool, g.reduce_blocks(),
               [&](int64_t b, std::vector<float>&) { g.reduce(b); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxDenseForward, DenseForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxDenseInputGrad, DenseInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxDenseWeightGrad, DenseWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>());
