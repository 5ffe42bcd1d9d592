// A blocked f32 matmul for the dense layers (cpu_dense.cc): C = A B with
// 6 x 64 register tiles (24 accumulators, one B row of 4 vectors per k and
// 6 broadcasts of A) and the bias added as the tiles are stored; and the
// weight gradient A^T B, with the column sums of B (the bias gradient) taken
// as B is packed.
//
// Why not XLA's dot: XLA:CPU runs f32 dots through Eigen's tensor
// contraction, which packs both operands for every call. Here A (the
// activation, thousands of rows) is never packed: its rows are read in place
// by broadcasts, and only the small weight operand is packed. The weight
// gradient packs both sides per 256-row chunk of its reduction axis instead,
// since read in place their rows (M or N floats apart) share a few L1 sets.
// Measured on the base config's layers (docs/benchmarking.md): the weight
// gradients 1.05-1.6x XLA's speed, the forward and input gradients 0.7-1.35x,
// and the whole base step 7-13% faster.

#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tiles.h"

namespace mmjax_gemm {

using mmjax_attention::kW;
using mmjax_attention::load;
using mmjax_attention::splat;
using mmjax_attention::store;
using mmjax_attention::v16;

constexpr int kRows = 6;        // Rows of C per register tile.
constexpr int kVecs = 4;        // 16-float vectors of C per tile row.
constexpr int kCols = kW * kVecs;

// Element (i, j) at p[i * rs + j * cs].
struct Strided {
  const float* p;
  int64_t rs, cs;
};

// C[R x 16V] (+)= sum_k A(r, k) B[k, :16V], B's rows `ldb` floats apart;
// at the end `bias` (16V floats, or null) is added.
template <int R, int V>
inline void tile(int64_t kc, const float* a, int64_t a_r, int64_t a_k,
                 const float* b, int64_t ldb, float* c, int64_t ldc, bool acc,
                 const float* bias) {
  v16 t[R][V];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j) t[r][j] = acc ? load(c + r * ldc + j * kW) : v16{};
  for (int64_t k = 0; k < kc; ++k) {
    v16 bv[V];
    for (int j = 0; j < V; ++j) bv[j] = load(b + k * ldb + j * kW);
    for (int r = 0; r < R; ++r) {
      const v16 av = splat(a[r * a_r + k * a_k]);
      for (int j = 0; j < V; ++j) t[r][j] += av * bv[j];
    }
  }
  if (bias)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < V; ++j) t[r][j] += load(bias + j * kW);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j) store(c + r * ldc + j * kW, t[r][j]);
}

template <int R>
inline void tile_cols(int vecs, int64_t kc, const float* a, int64_t a_r,
                      int64_t a_k, const float* b, int64_t ldb, float* c,
                      int64_t ldc, bool acc, const float* bias) {
  switch (vecs) {
    case 4: return tile<R, 4>(kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
    case 3: return tile<R, 3>(kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
    case 2: return tile<R, 2>(kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
    case 1: return tile<R, 1>(kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
  }
}

// One tile of `rows` (1..6) rows and `vecs` (1..4) vectors.
inline void any_tile(int rows, int vecs, int64_t kc, const float* a,
                     int64_t a_r, int64_t a_k, const float* b, int64_t ldb,
                     float* c, int64_t ldc, bool acc, const float* bias) {
  switch (rows) {
    case 6: return tile_cols<6>(vecs, kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
    case 5: return tile_cols<5>(vecs, kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
    case 4: return tile_cols<4>(vecs, kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
    case 3: return tile_cols<3>(vecs, kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
    case 2: return tile_cols<2>(vecs, kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
    case 1: return tile_cols<1>(vecs, kc, a, a_r, a_k, b, ldb, c, ldc, acc, bias);
  }
}

// Copies B(k0 + k, j0 + n) for k < kc, n < 64 into a contiguous kc x 64
// panel, zero past N.
inline void pack_panel(Strided b, int64_t k0, int64_t kc, int64_t j0, int64_t N,
                       float* out) {
  const int64_t n_end = std::min<int64_t>(kCols, N - j0);
  for (int64_t k = 0; k < kc; ++k) {
    float* row = out + k * kCols;
    const float* src = b.p + (k0 + k) * b.rs + j0 * b.cs;
    if (b.cs == 1) {
      std::copy(src, src + n_end, row);
    } else {
      for (int64_t n = 0; n < n_end; ++n) row[n] = src[n * b.cs];
    }
    std::fill(row + n_end, row + kCols, 0.0f);
  }
}

// C (M x N, row-major, N a multiple of 16) = A B + bias, with B (K x N)
// packed once into 64-column panels of up to kKc rows (`packed`, from
// `packed_size`). Work is split into blocks of kMc rows of C; `run_block`
// does one. A's 6-row strips stay in L1 while the panels stream from L2.
struct PackedGemm {
  static constexpr int64_t kKc = 256, kMc = 96;
  int64_t M, N, K;
  Strided a, b;
  const float* bias;  // N floats, or null.
  float* c;
  float* packed;

  int64_t panels() const { return (N + kCols - 1) / kCols; }
  int64_t chunks() const { return (K + kKc - 1) / kKc; }
  static int64_t packed_size(int64_t N, int64_t K) {
    return (N + kCols - 1) / kCols * kCols * std::max<int64_t>(K, 1);
  }
  // Pack unit u (of chunks() * panels()): one panel of one k chunk.
  int64_t pack_units() const { return chunks() * panels(); }
  float* panel(int64_t chunk, int64_t p) const {
    return packed + chunk * kKc * panels() * kCols +
           p * std::min(kKc, K - chunk * kKc) * kCols;
  }
  void pack(int64_t u) const {
    const int64_t chunk = u / panels(), p = u % panels();
    pack_panel(b, chunk * kKc, std::min(kKc, K - chunk * kKc), p * kCols, N,
               panel(chunk, p));
  }
  int64_t blocks() const { return (M + kMc - 1) / kMc; }
  void run_block(int64_t blk) const {
    const int64_t m0 = blk * kMc, m1 = std::min(M, m0 + kMc);
    if (K == 0) {
      for (int64_t i = m0; i < m1; ++i)
        for (int64_t j = 0; j < N; ++j) c[i * N + j] = bias ? bias[j] : 0.0f;
      return;
    }
    for (int64_t ch = 0; ch < chunks(); ++ch) {
      const int64_t k0 = ch * kKc, kc = std::min(kKc, K - k0);
      const bool last = ch + 1 == chunks();
      for (int64_t i = m0; i < m1; i += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, m1 - i));
        for (int64_t p = 0; p < panels(); ++p) {
          const int64_t j = p * kCols;
          const int vecs = static_cast<int>(std::min<int64_t>(kCols, N - j) / kW);
          any_tile(rows, vecs, kc, a.p + i * a.rs + k0 * a.cs, a.rs, a.cs,
                   panel(ch, p), kCols, c + i * N + j, N, ch > 0,
                   last && bias ? bias + j : nullptr);
        }
      }
    }
  }
};

// C (M x N) = A^T B for A (T x M) and B (T x N), both row-major: a weight
// gradient x^T dy, reducing over T. `sums` (N floats, or null) gets the
// column sums of B: the bias gradient, taken while B is packed. T is cut
// into slices (work items), each reducing into its own partial C
// (`partials`, from `partials_size`); `reduce_rows` then adds them up. Per
// chunk of kTc rows a slice packs A^T into 6-row strips and B into 64-column
// panels, both contiguous: read in place, their rows (M or N floats apart)
// fall into a few L1 sets and every load would come from L2.
struct ReduceGemm {
  static constexpr int64_t kTc = 256;
  int64_t M, N, T, slices;
  const float* a;  // T x M
  const float* b;  // T x N
  float* c;
  float* sums;      // N floats, or null.
  float* partials;  // slices x (M x N + Np) floats.

  int64_t Np() const { return (N + kCols - 1) / kCols * kCols; }
  int64_t part_size() const { return M * N + Np(); }
  static int64_t scratch_size(int64_t M, int64_t N) {
    return (M + kRows - 1) / kRows * kRows * kTc + (N + kCols - 1) / kCols * kCols * kTc;
  }
  void run_slice(int64_t s, float* scratch) const {
    const int64_t t_begin = T * s / slices, t_end = T * (s + 1) / slices;
    float* part = partials + s * part_size();
    float* col = part + M * N;
    std::fill(part, part + part_size(), 0.0f);
    const int64_t strips = (M + kRows - 1) / kRows, panels = Np() / kCols;
    float* pa = scratch;                       // strips x tc x 6
    float* pb = scratch + strips * kRows * kTc;  // panels x tc x 64
    for (int64_t t0 = t_begin; t0 < t_end; t0 += kTc) {
      const int64_t tc = std::min(kTc, t_end - t0);
      for (int64_t st = 0; st < strips; ++st) {
        float* out = pa + st * tc * kRows;
        const int64_t i0 = st * kRows, rows = std::min<int64_t>(kRows, M - i0);
        for (int64_t t = 0; t < tc; ++t) {
          const float* src = a + (t0 + t) * M + i0;
          for (int64_t r = 0; r < kRows; ++r) out[t * kRows + r] = r < rows ? src[r] : 0.0f;
        }
      }
      for (int64_t p = 0; p < panels; ++p) {
        pack_panel(Strided{b, N, 1}, t0, tc, p * kCols, N, pb + p * tc * kCols);
        if (sums) {
          const float* panel = pb + p * tc * kCols;
          for (int j = 0; j < kVecs; ++j) {
            v16 acc = load(col + p * kCols + j * kW);
            for (int64_t t = 0; t < tc; ++t) acc += load(panel + t * kCols + j * kW);
            store(col + p * kCols + j * kW, acc);
          }
        }
      }
      for (int64_t st = 0; st < strips; ++st) {
        const int64_t i = st * kRows;
        const int rows = static_cast<int>(std::min<int64_t>(kRows, M - i));
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t j = p * kCols;
          const int vecs = static_cast<int>(std::min<int64_t>(kCols, N - j) / kW);
          any_tile(rows, vecs, tc, pa + st * tc * kRows, 1, kRows,
                   pb + p * tc * kCols, kCols, part + i * N + j, N, true, nullptr);
        }
      }
    }
  }
  // Rows [r0, r1) of C (and, for the first block, `sums`) from the partials.
  static constexpr int64_t kReduceRows = 64;
  int64_t reduce_blocks() const { return (M + kReduceRows - 1) / kReduceRows + 1; }
  void reduce(int64_t blk) const {
    if (blk == reduce_blocks() - 1) {
      if (!sums) return;
      for (int64_t j = 0; j < N; ++j) {
        float s = 0.0f;
        for (int64_t p = 0; p < slices; ++p) s += partials[p * part_size() + M * N + j];
        sums[j] = s;
      }
      return;
    }
    const int64_t e0 = blk * kReduceRows * N, e1 = std::min(M, (blk + 1) * kReduceRows) * N;
    for (int64_t e = e0; e < e1; e += kW) {
      v16 acc = load(partials + e);
      for (int64_t p = 1; p < slices; ++p) acc += load(partials + p * part_size() + e);
      store(c + e, acc);
    }
  }
};

}  // namespace mmjax_gemm
