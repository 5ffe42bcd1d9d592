// Register-tiled building blocks of cpu_attention.cc: 16-float vectors
// (GCC/Clang vector extensions, so one source serves AVX-512 and AVX2), a
// vector exp, small matmuls, operand packing and a 16x16 transpose.

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

namespace mmjax_attention {

// 16 floats: one AVX-512 register, two AVX2 ones elsewhere.
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));
constexpr int kW = 16;

inline v16 load(const float* p) { v16 r; std::memcpy(&r, p, sizeof r); return r; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline v16 splat(float x) { return v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline int64_t round_up(int64_t n) { return (n + kW - 1) / kW * kW; }

// exp(x) for a vector, Cephes' expf polynomial (~1 ulp); exactly 0 below
// the f32 range, so masked and padded logits give zero probability.
inline v16 vexp(v16 x) {
  const v16 lo = splat(-87.33654f), hi = splat(88.0f);
  v16 xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  v16 n = xc * 1.44269504088896341f;
  n = __builtin_convertvector(__builtin_convertvector(
          n + (n < 0 ? splat(-0.5f) : splat(0.5f)), i16), v16);
  v16 r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  i16 e = (__builtin_convertvector(n, i16) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &e, sizeof scale);
  v16 out = p * scale;
  return x < lo ? v16{} : out;
}

// C[R x 16*CB] (+)= sum_k A[r, k] * B[k, :], A read as scalars through two
// strides (so A^T is free), B rows contiguous and padded to 16.
template <int R, int CB>
inline void tile(int64_t K, const float* A, int64_t a_row, int64_t a_k,
                 const float* B, int64_t ldb, float* C, int64_t ldc, bool acc) {
  v16 c[R][CB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < CB; ++j)
      c[r][j] = acc ? load(C + r * ldc + j * kW) : v16{};
  for (int64_t k = 0; k < K; ++k) {
    v16 b[CB];
    for (int j = 0; j < CB; ++j) b[j] = load(B + k * ldb + j * kW);
    for (int r = 0; r < R; ++r) {
      const v16 a = splat(A[r * a_row + k * a_k]);
      for (int j = 0; j < CB; ++j) c[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < CB; ++j) store(C + r * ldc + j * kW, c[r][j]);
}

template <int R>
inline void row_block(int64_t chunks, int64_t K, const float* A, int64_t a_row,
                      int64_t a_k, const float* B, int64_t ldb, float* C,
                      int64_t ldc, bool acc) {
  int64_t j = 0;
  // Up to 6 chunks in one pass (R * 6 accumulators fit 32 registers for
  // R <= 4); wider outputs go 4 chunks at a time.
  if (chunks <= 6) {
    switch (chunks) {
      case 1: tile<R, 1>(K, A, a_row, a_k, B, ldb, C, ldc, acc); return;
      case 2: tile<R, 2>(K, A, a_row, a_k, B, ldb, C, ldc, acc); return;
      case 3: tile<R, 3>(K, A, a_row, a_k, B, ldb, C, ldc, acc); return;
      case 4: tile<R, 4>(K, A, a_row, a_k, B, ldb, C, ldc, acc); return;
      case 5: tile<R, 5>(K, A, a_row, a_k, B, ldb, C, ldc, acc); return;
      case 6: tile<R, 6>(K, A, a_row, a_k, B, ldb, C, ldc, acc); return;
    }
  }
  for (; j + 4 <= chunks; j += 4)
    tile<R, 4>(K, A, a_row, a_k, B + j * kW, ldb, C + j * kW, ldc, acc);
  if (j < chunks)
    row_block<R>(chunks - j, K, A, a_row, a_k, B + j * kW, ldb, C + j * kW,
                 ldc, acc);
}

// C[M x N] = A[M x K] B[K x N]; N a multiple of 16.
inline void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_row,
          int64_t a_k, const float* B, int64_t ldb, float* C, int64_t ldc) {
  const int64_t chunks = N / kW;
  int64_t i = 0;
  for (; i + 4 <= M; i += 4)
    row_block<4>(chunks, K, A + i * a_row, a_row, a_k, B, ldb, C + i * ldc, ldc,
                 false);
  switch (M - i) {
    case 3: row_block<3>(chunks, K, A + i * a_row, a_row, a_k, B, ldb,
                         C + i * ldc, ldc, false); break;
    case 2: row_block<2>(chunks, K, A + i * a_row, a_row, a_k, B, ldb,
                         C + i * ldc, ldc, false); break;
    case 1: row_block<1>(chunks, K, A + i * a_row, a_row, a_k, B, ldb,
                         C + i * ldc, ldc, false); break;
  }
}

// A row-major operand: rows `ld` floats apart, each padded to 16.
struct Rows {
  float* p;
  int64_t ld;
};

// dst[rows x Dp] <- rows of a (..., T, H, D) tensor (`ld` apart) plus
// `bias` (D floats, or null), zero-padded. Contiguous copies: the tensor's
// rows are H * D floats apart, a stride that maps a whole operand onto a few
// L1 sets. The bias is the projection's, added here rather than in a pass of
// its own over the projection's output.
inline float* pack(const float* src, int64_t ld, int64_t rows, int64_t D, int64_t Dp,
            float* dst, const float* bias = nullptr) {
  for (int64_t r = 0; r < rows; ++r) {
    float* out = dst + r * Dp;
    const float* in = src + r * ld;
    if (bias)
      for (int64_t d = 0; d < D; ++d) out[d] = in[d] + bias[d];
    else
      std::memcpy(out, in, D * sizeof(float));
    std::fill(out + D, out + Dp, 0.0f);
  }
  return dst;
}

// out[D] = the sum of `rows` rows of r (the bias gradient of one pair).
inline void column_sums(Rows r, int64_t rows, int64_t D, float* out) {
  std::fill(out, out + D, 0.0f);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < D; ++d) out[d] += r.p[i * r.ld + d];
}

// Where a result's rows go: in place when D is a multiple of 16, else `buf`
// (then `rows_out` copies them to the tensor).
inline Rows rows_at(float* dst, int64_t ld, int64_t D, int64_t Dp, float* buf) {
  return D == Dp ? Rows{dst, ld} : Rows{buf, Dp};
}

inline void rows_out(Rows r, float* dst, int64_t ld, int64_t rows, int64_t D) {
  if (r.p == dst) return;
  for (int64_t i = 0; i < rows; ++i)
    std::memcpy(dst + i * ld, r.p + i * r.ld, D * sizeof(float));
}

// One butterfly stage of a 16x16 transpose: swaps bit W of the row index
// with bit W of the column index between rows r and r | W.
template <int W, int... C>
inline void swap_bit(v16& a, v16& b, std::integer_sequence<int, C...>) {
  const v16 lo = __builtin_shufflevector(a, b, ((C & W) ? 16 + C - W : C)...);
  const v16 hi = __builtin_shufflevector(a, b, ((C & W) ? 16 + C : C + W)...);
  a = lo;
  b = hi;
}

template <int W>
inline void stage(v16* m) {
  for (int r = 0; r < kW; ++r)
    if (!(r & W)) swap_bit<W>(m[r], m[r | W], std::make_integer_sequence<int, kW>{});
}

// dst[Dp x Np] <- src[rows x Dp]^T (src packed by `pack`), zero-padded.
inline void transpose(const float* src, int64_t rows, int64_t Np, int64_t Dp,
               float* dst) {
  for (int64_t r0 = 0; r0 < Np; r0 += kW)
    for (int64_t c0 = 0; c0 < Dp; c0 += kW) {
      v16 m[kW];
      for (int r = 0; r < kW; ++r)
        m[r] = r0 + r < rows ? load(src + (r0 + r) * Dp + c0) : v16{};
      stage<1>(m);
      stage<2>(m);
      stage<4>(m);
      stage<8>(m);
      for (int c = 0; c < kW; ++c) store(dst + (c0 + c) * Np + r0, m[c]);
    }
}

}  // namespace mmjax_attention
