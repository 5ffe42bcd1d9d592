// Fused multi-head attention for XLA:CPU, forward and backward, as XLA FFI
// handlers (see cpu_attention.py, which compiles and registers this file).
//
// Why: XLA:CPU lowers attention to head transposes plus batched dots that run
// each small (T x D x T) product on one core at a fraction of the machine's
// FMA rate. Here every batch row is one work item on XLA's intra-op thread
// pool; for each head in turn its q/k/v rows are copied from the
// (..., T, H, D) layout into small contiguous tiles (adding the projections'
// biases on the way), the products run in register tiles (tiles.h) and
// softmax is fused between them, so no transposed or (B, H, T, T) tensor
// ever reaches memory. The backward recomputes the probabilities from the
// saved row max and row sum, and returns the bias gradients per batch row.
//
// Semantics are those of `dot_product_attention` in attention.py: logits
// (q . k) * D^-1/2, masked keys replaced by -FLT_MAX (a fully masked row is
// uniform), softmax, times v. Only f32.

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "parallel.h"
#include "tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace mmjax_attention;  // NOLINT: the kernel's own helpers.
using mmjax_kernels::parallel_for;

struct Shape {
  int64_t pairs, heads, tq, tk, d;
};

// Per key: keep = 1 (attend) or 0; fill = the logit of a dropped key,
// -FLT_MAX for a masked one (as `jnp.where(mask, x, finfo.min)`) and -inf
// for padding (never any probability).
void key_masks(const uint8_t* mask, int64_t tk, int64_t Np, float* keep,
               float* fill) {
  for (int64_t j = 0; j < Np; ++j) {
    const bool real = j < tk;
    keep[j] = real && mask[j] ? 1.0f : 0.0f;
    fill[j] = real ? -FLT_MAX : -INFINITY;
  }
}

// Scaled, masked logits S[tq x Np] = (q k^T) * scale from packed q rows and
// k^T; also each row's max, unless `row_max` is null.
void logits(const Shape& s, const float* q, const float* kt, const float* keep,
            const float* fill, float* S, float* row_max) {
  const int64_t Np = round_up(s.tk), Dp = round_up(s.d);
  gemm(s.tq, Np, s.d, q, Dp, 1, kt, Np, S, Np);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
  for (int64_t i = 0; i < s.tq; ++i) {
    float* row = S + i * Np;
    v16 mv = splat(-INFINITY);
    for (int64_t j = 0; j < Np; j += kW) {
      const v16 x = load(row + j) * scale;
      const v16 y = load(keep + j) > 0.0f ? x : load(fill + j);
      store(row + j, y);
      mv = y > mv ? y : mv;
    }
    if (row_max == nullptr) continue;
    float m = -INFINITY;
    for (int t = 0; t < kW; ++t) m = std::max(m, mv[t]);
    row_max[i] = m;
  }
}

// Row i of S becomes exp(S - max_i); returns the row sums.
void exp_rows(int64_t rows, int64_t Np, float* S, const float* row_max,
              float* row_sum) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = S + i * Np;
    v16 sv{};
    for (int64_t j = 0; j < Np; j += kW) {
      const v16 e = vexp(load(row + j) - row_max[i]);
      store(row + j, e);
      sv += e;
    }
    float l = 0.0f;
    for (int t = 0; t < kW; ++t) l += sv[t];
    row_sum[i] = l;
  }
}

// The probabilities exp(S - max) / sum, from the forward's row statistics.
void probs_from_stats(int64_t rows, int64_t Np, float* S, const float* row_max,
                      const float* row_sum) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = S + i * Np;
    const v16 inv = splat(1.0f / row_sum[i]);
    for (int64_t j = 0; j < Np; j += kW)
      store(row + j, vexp(load(row + j) - row_max[i]) * inv);
  }
}

ffi::Error check(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k,
                 const ffi::Buffer<ffi::F32>& v, const ffi::Buffer<ffi::U8>& mask,
                 std::initializer_list<const ffi::Buffer<ffi::F32>*> biases,
                 Shape* s) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(),
       md = mask.dimensions();
  const size_t r = qd.size();
  if (r < 3 || kd.size() != r || vd.size() != r || md.size() != r - 2)
    return ffi::Error::InvalidArgument(
        "attention: q, k, v must be (..., T, H, D) and mask (..., Tk)");
  int64_t pairs = 1;
  for (size_t i = 0; i + 3 < r; ++i) {
    if (kd[i] != qd[i] || vd[i] != qd[i] || md[i] != qd[i])
      return ffi::Error::InvalidArgument("attention: batch dims differ");
    pairs *= qd[i];
  }
  for (size_t i = r - 3; i < r; ++i)
    if (kd[i] != vd[i])
      return ffi::Error::InvalidArgument("attention: k and v shapes differ");
  if (kd[r - 2] != qd[r - 2] || kd[r - 1] != qd[r - 1] || md[r - 3] != kd[r - 3])
    return ffi::Error::InvalidArgument("attention: heads, dims or Tk differ");
  *s = Shape{pairs * qd[r - 2], qd[r - 2], qd[r - 3], kd[r - 3], qd[r - 1]};
  if (s->tk < 1) return ffi::Error::InvalidArgument("attention: no keys");
  for (const auto* b : biases)
    if (b->element_count() != static_cast<size_t>(s->heads * s->d))
      return ffi::Error::InvalidArgument("attention: biases must be (H, D)");
  return ffi::Error::Success();
}

ffi::Error AttentionForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                            ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                            ffi::Buffer<ffi::F32> bq, ffi::Buffer<ffi::F32> bk,
                            ffi::Buffer<ffi::F32> bv, ffi::Buffer<ffi::U8> mask,
                            ffi::ResultBuffer<ffi::F32> out,
                            ffi::ResultBuffer<ffi::F32> row_max,
                            ffi::ResultBuffer<ffi::F32> row_sum) {
  Shape s;
  if (ffi::Error e = check(q, k, v, mask, {&bq, &bk, &bv}, &s); e.failure())
    return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(),
              *bqp = bq.typed_data(), *bkp = bk.typed_data(),
              *bvp = bv.typed_data();
  const uint8_t* mp = mask.typed_data();
  float *op = out->typed_data(), *mx = row_max->typed_data(),
        *sm = row_sum->typed_data();
  const int64_t H = s.heads, ld = H * s.d, Np = round_up(s.tk),
                Dp = round_up(s.d);
  // One item per batch row: its heads share cache lines of q, k and v.
  parallel_for(pool, s.pairs / H, [&](int64_t b, std::vector<float>& buf) {
    buf.resize(2 * Np + Dp * Np + 2 * s.tk * Dp + s.tq * Np + 2 * s.tq * Dp);
    float *keep = buf.data(), *fill = keep + Np, *kt = fill + Np,
          *kr = kt + Dp * Np, *vr = kr + s.tk * Dp, *qr = vr + s.tk * Dp,
          *S = qr + s.tq * Dp, *obuf = S + s.tq * Np;
    key_masks(mp + b * s.tk, s.tk, Np, keep, fill);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t item = b * H + h;
      const int64_t q0 = (b * s.tq * H + h) * s.d, k0 = (b * s.tk * H + h) * s.d;
      float *mxi = mx + item * s.tq, *smi = sm + item * s.tq;
      transpose(pack(kp + k0, ld, s.tk, s.d, Dp, kr, bkp + h * s.d), s.tk, Np,
                Dp, kt);
      pack(vp + k0, ld, s.tk, s.d, Dp, vr, bvp + h * s.d);
      pack(qp + q0, ld, s.tq, s.d, Dp, qr, bqp + h * s.d);
      logits(s, qr, kt, keep, fill, S, mxi);
      exp_rows(s.tq, Np, S, mxi, smi);
      // O = (E V) / sum: the normalisation on D columns instead of Tk.
      const Rows o = rows_at(op + q0, ld, s.d, Dp, obuf);
      gemm(s.tq, Dp, s.tk, S, Np, 1, vr, Dp, o.p, o.ld);
      for (int64_t i = 0; i < s.tq; ++i) {
        const v16 inv = splat(1.0f / smi[i]);
        for (int64_t j = 0; j < Dp; j += kW)
          store(o.p + i * o.ld + j, load(o.p + i * o.ld + j) * inv);
      }
      rows_out(o, op + q0, ld, s.tq, s.d);
    }
  });
  return ffi::Error::Success();
}

ffi::Error AttentionBackward(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> bq, ffi::Buffer<ffi::F32> bk,
    ffi::Buffer<ffi::F32> bv, ffi::Buffer<ffi::U8> mask,
    ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> row_max,
    ffi::Buffer<ffi::F32> row_sum, ffi::Buffer<ffi::F32> d_out,
    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
    ffi::ResultBuffer<ffi::F32> dv, ffi::ResultBuffer<ffi::F32> dbq,
    ffi::ResultBuffer<ffi::F32> dbk, ffi::ResultBuffer<ffi::F32> dbv) {
  Shape s;
  if (ffi::Error e = check(q, k, v, mask, {&bq, &bk, &bv}, &s); e.failure())
    return e;
  const float *bqp = bq.typed_data(), *bkp = bk.typed_data(),
              *bvp = bv.typed_data();
  float *dbqp = dbq->typed_data(), *dbkp = dbk->typed_data(),
        *dbvp = dbv->typed_data();
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(),
              *op = out.typed_data(), *mx = row_max.typed_data(),
              *sm = row_sum.typed_data(), *gp = d_out.typed_data();
  const uint8_t* mp = mask.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  const int64_t H = s.heads, ld = H * s.d, Np = round_up(s.tk),
                Dp = round_up(s.d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
  // One item per batch row: its heads share cache lines of q, k and v.
  parallel_for(pool, s.pairs / H, [&](int64_t b, std::vector<float>& buf) {
    buf.resize(2 * Np + 2 * Dp * Np + 4 * s.tk * Dp + 3 * s.tq * Dp +
               2 * s.tq * Np + s.tq);
    float *keep = buf.data(), *fill = keep + Np, *kt = fill + Np,
          *vt = kt + Dp * Np, *kr = vt + Dp * Np, *vr = kr + s.tk * Dp,
          *qr = vr + s.tk * Dp, *gr = qr + s.tq * Dp, *P = gr + s.tq * Dp,
          *dS = P + s.tq * Np, *delta = dS + s.tq * Np,
          *dkbuf = delta + s.tq, *dvbuf = dkbuf + s.tk * Dp,
          *dqbuf = dvbuf + s.tk * Dp;
    key_masks(mp + b * s.tk, s.tk, Np, keep, fill);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t item = b * H + h;
      const int64_t q0 = (b * s.tq * H + h) * s.d, k0 = (b * s.tk * H + h) * s.d;
      transpose(pack(kp + k0, ld, s.tk, s.d, Dp, kr, bkp + h * s.d), s.tk, Np,
                Dp, kt);
      transpose(pack(vp + k0, ld, s.tk, s.d, Dp, vr, bvp + h * s.d), s.tk, Np,
                Dp, vt);
      pack(qp + q0, ld, s.tq, s.d, Dp, qr, bqp + h * s.d);
      pack(gp + q0, ld, s.tq, s.d, Dp, gr);
      for (int64_t i = 0; i < s.tq; ++i) {
        float acc = 0.0f;
        const float *g = gp + q0 + i * ld, *o = op + q0 + i * ld;
        for (int64_t d = 0; d < s.d; ++d) acc += g[d] * o[d];
        delta[i] = acc;
      }
      logits(s, qr, kt, keep, fill, P, nullptr);  // The saved max is used.
      probs_from_stats(s.tq, Np, P, mx + item * s.tq, sm + item * s.tq);
      // dP = dO V^T, then dS = P (dP - delta) * scale, zero on dropped keys.
      gemm(s.tq, Np, s.d, gr, Dp, 1, vt, Np, dS, Np);
      for (int64_t i = 0; i < s.tq; ++i) {
        float *ds = dS + i * Np, *p = P + i * Np;
        for (int64_t j = 0; j < Np; j += kW)
          store(ds + j, load(p + j) * (load(ds + j) - delta[i]) *
                            (load(keep + j) * scale));
      }
      const Rows dqr = rows_at(dqp + q0, ld, s.d, Dp, dqbuf),
                 dkr = rows_at(dkp + k0, ld, s.d, Dp, dkbuf),
                 dvr = rows_at(dvp + k0, ld, s.d, Dp, dvbuf);
      gemm(s.tq, Dp, s.tk, dS, Np, 1, kr, Dp, dqr.p, dqr.ld);  // dS K
      gemm(s.tk, Dp, s.tq, dS, 1, Np, qr, Dp, dkr.p, dkr.ld);  // dS^T Q
      gemm(s.tk, Dp, s.tq, P, 1, Np, gr, Dp, dvr.p, dvr.ld);   // P^T dO
      // Per-row bias gradients (B, H, D); the caller sums them over B.
      column_sums(dqr, s.tq, s.d, dbqp + item * s.d);
      column_sums(dkr, s.tk, s.d, dbkp + item * s.d);
      column_sums(dvr, s.tk, s.d, dbvp + item * s.d);
      rows_out(dqr, dqp + q0, ld, s.tq, s.d);
      rows_out(dkr, dkp + k0, ld, s.tk, s.d);
      rows_out(dvr, dvp + k0, ld, s.tk, s.d);
    }
  });
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;

// Both handlers start with the pool, q, k, v, their biases and the mask.
auto bind_operands() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<F32>().Arg<F32>().Arg<F32>()
      .Arg<F32>().Arg<F32>().Arg<F32>()
      .Arg<ffi::Buffer<ffi::U8>>();
}

}  // namespace

// Forward: -> out, row max, row sum.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    MmjaxAttentionForward, AttentionForward,
    bind_operands().Ret<F32>().Ret<F32>().Ret<F32>());

// Backward: + out, row max, row sum, d_out -> dq, dk, dv and the per-row
// bias gradients.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    MmjaxAttentionBackward, AttentionBackward,
    bind_operands()
        .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>());
