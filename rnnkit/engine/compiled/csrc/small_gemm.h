// Small GEMMs for recurrences of small hidden size (elman.cpp: H <= 32).
//
// A step of an Elman recurrence at B=100, H=16 is a 100x16 @ 16x16 product: 51 kFLOP, which
// the BLAS (MKL) takes ~4 us for, mostly copying its operands into packed panels. Written as
// register tiles with broadcast FMAs it needs no copy: each output row is at most 4 vectors
// wide (32 floats, 16 doubles per panel), R rows of it (4, or 2 for 3-4 vectors) are held
// in registers while k runs, and the caller's init / store functions fuse the bias or input
// term and the activation into the same pass (no separate pointwise sweep).
//
//   C (M, N) tile = store(init(i, j) + sum_k A(i, k) B(k, j))
//
// A is read through two strides, A(i, k) = a[i * row + k * col], so a transposed operand
// (the weight gradient's G^T) needs no copy either; B has contiguous rows (ldb >= N); the
// last vector of a row is a masked load/store when N is not a multiple of the vector width.
// Single-threaded: the callers use it where the template's GEMM would stay on one thread.
#pragma once

#include "common.h"

namespace rnnkit {
namespace small_gemm {

// A (M, K) operand: A(i, k) = p[i * row + k * col].
template <typename scalar_t>
struct Operand {
  const scalar_t* p;
  int64_t row, col;
};

// Vectors per column panel (4 AVX2 vectors: 32 floats).
constexpr int64_t kPanelVectors = 4;

// Rows [i0, i0 + R) x columns [n0, n0 + nv) of C; NV = ceil(nv / W) vectors.
template <typename scalar_t, int R, int NV, typename Init, typename Store>
inline void tile(int64_t i0, int64_t n0, int64_t nv, int64_t K, const Operand<scalar_t>& a,
                 const scalar_t* Bm, int64_t ldb, const Init& init, const Store& store) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  const int64_t last = nv - (NV - 1) * W;  // values in the last vector, 1..W
  // Fully unrolled, so that the accumulators live in registers (GCC keeps a rolled array of
  // Vectorized on the stack: a load and a store per FMA).
  V acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = init(i0 + r, n0 + v * W, v == NV - 1 ? last : W);
  }
  const scalar_t* ap[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) ap[r] = a.p + (i0 + r) * a.row;
  const scalar_t* bk = Bm + n0;
  for (int64_t k = 0; k < K; ++k, bk += ldb) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) b[v] = V::loadu(bk + v * W);
    b[NV - 1] = ld(bk, (NV - 1) * W, last);
    const int64_t ak = k * a.col;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V av(ap[r][ak]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(av, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store(i0 + r, n0 + v * W, v == NV - 1 ? last : W, acc[r][v]);
  }
}

template <typename scalar_t, int NV, typename Init, typename Store>
inline void panel(int64_t M, int64_t n0, int64_t nv, int64_t K, const Operand<scalar_t>& a,
                  const scalar_t* Bm, int64_t ldb, const Init& init, const Store& store) {
  constexpr int R = NV <= 2 ? 4 : 2;  // R * NV accumulators stay in the 16 AVX2 registers
  int64_t i = 0;
  for (; i + R <= M; i += R) tile<scalar_t, R, NV>(i, n0, nv, K, a, Bm, ldb, init, store);
  for (; i < M; ++i) tile<scalar_t, 1, NV>(i, n0, nv, K, a, Bm, ldb, init, store);
}

// For every tile of C (M, N): acc = init(i, j, cnt) + sum_k A(i, k) Bm(k, j..j+cnt), then
// store(i, j, cnt, acc). init returns a Vec whose first cnt lanes count; store writes cnt
// values at row i, column j. Bm (K, N) has row stride ldb >= N.
template <typename scalar_t, typename Init, typename Store>
inline void apply(int64_t M, int64_t N, int64_t K, const Operand<scalar_t>& a,
                  const scalar_t* Bm, int64_t ldb, const Init& init, const Store& store) {
  constexpr int64_t W = Vec<scalar_t>::size();
  constexpr int64_t width = kPanelVectors * W;
  for (int64_t n0 = 0; n0 < N; n0 += width) {
    const int64_t nv = std::min(width, N - n0);
    switch ((nv + W - 1) / W) {
      case 1: panel<scalar_t, 1>(M, n0, nv, K, a, Bm, ldb, init, store); break;
      case 2: panel<scalar_t, 2>(M, n0, nv, K, a, Bm, ldb, init, store); break;
      case 3: panel<scalar_t, 3>(M, n0, nv, K, a, Bm, ldb, init, store); break;
      default: panel<scalar_t, 4>(M, n0, nv, K, a, Bm, ldb, init, store); break;
    }
  }
}

// Plain C (M, N) = A (M, K) Bm (K, N) + beta C (C's row stride ldc; beta == 0 never reads C).
template <typename scalar_t>
inline void gemm(int64_t M, int64_t N, int64_t K, const Operand<scalar_t>& a,
                 const scalar_t* Bm, int64_t ldb, scalar_t beta, scalar_t* C, int64_t ldc) {
  using V = Vec<scalar_t>;
  const V vbeta(beta);
  const bool read = beta != scalar_t(0);
  apply<scalar_t>(
      M, N, K, a, Bm, ldb,
      [&](int64_t i, int64_t j, int64_t cnt) {
        return read ? vbeta * ld(C + i * ldc, j, cnt) : V(scalar_t(0));
      },
      [&](int64_t i, int64_t j, int64_t cnt, const V& v) { st(v, C + i * ldc, j, cnt); });
}

}  // namespace small_gemm
}  // namespace rnnkit

namespace rnnkit {
namespace small_gemm {

// ---- The hoisted input projection of a small layer (ProjectedRecurrence, _functions.py) ----
// x (M, K) W^T + bias for W (N, K), N small (the Elman layer of issue 13 row 2: M = T*B =
// 2800, K = 28, N = 16, where MKL's addmm ran at ~10 GFLOP/s on one thread).
inline Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "rnnkit small linear: x (M, K) and weight (N, K) expected, got ", x.sizes(),
              " and ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
                  x.device().is_cpu() && w.device().is_cpu(),
              "rnnkit small linear: float32 or float64 CPU tensors of one dtype expected");
  const bool has_bias = present(bias);
  if (has_bias) {
    check_arg("rnnkit small linear", "bias", bias, {w.size(0)}, x.scalar_type(), false);
  }
  const Tensor b = has_bias ? bias.contiguous() : Tensor();  // a view of a flat buffer
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  Tensor out = at::empty({M, N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_small_linear", [&] {
    using V = Vec<scalar_t>;
    std::vector<scalar_t> wt(K * N);  // W^T (K, N): contiguous rows for the B operand
    const Tensor wc = w.contiguous();
    const scalar_t* w_p = wc.data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) wt[k * N + n] = w_p[n * K + k];
    const scalar_t* b_p = has_bias ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* o_p = out.data_ptr<scalar_t>();
    apply<scalar_t>(
        M, N, K, {x.data_ptr<scalar_t>(), x.stride(0), x.stride(1)}, wt.data(), N,
        [&](int64_t, int64_t j, int64_t cnt) {
          return b_p != nullptr ? ld(b_p, j, cnt) : V(scalar_t(0));
        },
        [&](int64_t i, int64_t j, int64_t cnt, const V& v) { st(v, o_p + i * N, j, cnt); });
  });
  return out;
}

// Gradients of linear(): d W (N, K) = d^T x and d bias (N) = column sums of d, for d (M, N);
// each only when asked for (else an undefined tensor).
inline std::vector<Tensor> linear_grads(const Tensor& x_in, const Tensor& d, bool weight,
                                        bool bias) {
  TORCH_CHECK(x_in.dim() == 2 && d.dim() == 2 && x_in.size(0) == d.size(0),
              "rnnkit small linear backward: x (M, K) and grad (M, N) expected, got ",
              x_in.sizes(), " and ", d.sizes());
  TORCH_CHECK(x_in.scalar_type() == d.scalar_type() &&
                  (d.scalar_type() == at::kFloat || d.scalar_type() == at::kDouble) &&
                  x_in.device().is_cpu() && d.device().is_cpu(),
              "rnnkit small linear backward: float32 or float64 CPU tensors of one dtype "
              "expected");
  const int64_t M = d.size(0), N = d.size(1), K = x_in.size(1);
  Tensor dw = weight ? at::zeros({N, K}, d.options()) : Tensor();
  Tensor db = bias ? at::zeros({N}, d.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "rnnkit_small_linear_grads", [&] {
    const scalar_t* d_p = d.data_ptr<scalar_t>();
    if (weight) {
      const Tensor x = x_in.size(1) <= 1 || x_in.stride(1) == 1 ? x_in : x_in.contiguous();
      // (N, K) = d^T (N, M) x (M, K): A(n, m) = d[m, n]; over blocks of 256 rows, each
      // summed apart and then added (error growing with 256 + M / 256 terms, not M)
      constexpr int64_t kBlock = 256;
      const scalar_t* x_p = x.data_ptr<scalar_t>();
      const int64_t ldx = row_ld(x);
      scalar_t* dw_p = dw.data_ptr<scalar_t>();
      std::vector<scalar_t> part(M > kBlock ? N * K : 0);
      for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const int64_t rows = std::min(kBlock, M - m0);
        const Operand<scalar_t> a{d_p + m0 * d.stride(0), d.stride(1), d.stride(0)};
        if (M <= kBlock) {
          gemm<scalar_t>(N, K, rows, a, x_p + m0 * ldx, ldx, scalar_t(0), dw_p, K);
          continue;
        }
        gemm<scalar_t>(N, K, rows, a, x_p + m0 * ldx, ldx, scalar_t(0), part.data(), K);
        for (int64_t i = 0; i < N * K; ++i) dw_p[i] += part[i];
      }
    }
    if (bias) {
      scalar_t* db_p = db.data_ptr<scalar_t>();
      if (d.size(1) <= 1 || d.stride(1) == 1) {
        // blocks of 64 rows summed apart, then added: rounding error grows with 64 + M / 64
        // terms, not M (torch's sum is pairwise)
        constexpr int64_t kBlock = 64;
        std::vector<scalar_t> part(N);
        for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
          std::fill(part.begin(), part.end(), scalar_t(0));
          for (int64_t m = m0; m < std::min(M, m0 + kBlock); ++m) {
            const scalar_t* row = d_p + m * d.stride(0);
            vloop<scalar_t>(N, [&](int64_t j, int64_t c) {
              st(ld(part.data(), j, c) + ld(row, j, c), part.data(), j, c);
            });
          }
          vloop<scalar_t>(N, [&](int64_t j, int64_t c) {
            st(ld(db_p, j, c) + ld(part.data(), j, c), db_p, j, c);
          });
        }
      } else {
        db.copy_(d.sum(0));
      }
    }
  });
  return {dw, db};
}

}  // namespace small_gemm
}  // namespace rnnkit
