// Small GEMMs for recurrences of small hidden size (elman.cpp: H <= 32).
//
// A step of an Elman recurrence at B=100, H=16 is a 100x16 @ 16x16 product: 51 kFLOP, which
// the BLAS (MKL) takes ~4 us for, mostly copying its operands into packed panels. Written as
// register tiles with broadcast FMAs it needs no copy: each output row is at most 4 vectors
// wide per panel, R rows of it (8 for one vector, 6, 3, 2 for two to four) are held in
// registers while k runs, and the caller's init / store functions (always inlined) fuse the
// bias or input term and the activation into the same pass (no separate pointwise sweep).
//
//   C (M, N) tile = store(init(i, j) + sum_k A(i, k) B(k, j))
//
// A is read through two strides, A(i, k) = a[i * row + k * col], so a transposed operand
// (the weight gradient's G^T) needs no copy either; B has contiguous rows (ldb >= N); the
// last vector of a row is a masked load/store when N is not a multiple of the vector width.
// Single-threaded: the callers use it where the template's GEMM would stay on one thread.
#pragma once

#include <utility>

#include "common.h"

namespace rnnkit {
namespace small_gemm {

// A (M, K) operand: A(i, k) = p[i * row + k * col].
template <typename scalar_t>
struct Operand {
  const scalar_t* p;
  int64_t row, col;
};

// Vectors per column panel (4 vectors: 32 floats with AVX2, 64 with AVX-512).
constexpr int64_t kPanelVectors = 4;

// f(integral_constant<0>), ..., f(integral_constant<N - 1>): a loop unrolled in the front
// end, so that every array index below is a constant when GCC's scalar replacement runs
// (`#pragma GCC unroll` acts only after it).
template <typename F, int... I>
[[gnu::always_inline]] inline void unrolled(const F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
[[gnu::always_inline]] inline void unroll(const F& f) {
  unrolled(f, std::make_integer_sequence<int, N>{});
}

// The register type under Vec<scalar_t>. GCC never splits an array of Vectorized objects
// into registers (it did for no unroll and no attribute tried), so tile() kept its
// accumulators on the stack: a load or a store beside every FMA, 3-4x slower. An array of
// the raw vector type is split; Vectorized converts to and from it at no cost.
template <typename scalar_t>
struct Register {
  using type = Vec<scalar_t>;  // the portable build: Vectorized is an array itself
};
#if defined(CPU_CAPABILITY_AVX512)
template <>
struct Register<float> {
  using type = __m512;
};
template <>
struct Register<double> {
  using type = __m512d;
};
#elif defined(CPU_CAPABILITY_AVX2)
template <>
struct Register<float> {
  using type = __m256;
};
template <>
struct Register<double> {
  using type = __m256d;
};
#endif

// One product A (M, K) B (K, N) of a sum C = init + sum of products; B's rows are contiguous
// with row stride ldb >= N.
template <typename scalar_t>
struct Product {
  Operand<scalar_t> a;
  const scalar_t* b;
  int64_t ldb, K;
};

// Rows [i0, i0 + R) x columns [n0, n0 + nv) of C; NV = ceil(nv / W) vectors; the products
// ps[0 .. np) accumulate into the same registers. The caller's init and store lambdas are
// marked RNNKIT_ALWAYS_INLINE: GCC left them as calls per row (each with a vzeroupper) once a
// file's inlining budget ran out, and [[gnu::flatten]] here did not change that.
template <typename scalar_t, int R, int NV, typename Init, typename Store>
inline void tile(int64_t i0, int64_t n0, int64_t nv, const Product<scalar_t>* ps, int np,
                 const Init& init, const Store& store) {
  using V = Vec<scalar_t>;
  using Reg = typename Register<scalar_t>::type;
  constexpr int64_t W = V::size();
  const int64_t last = nv - (NV - 1) * W;  // values in the last vector, 1..W
  Reg acc[R][NV];
  unroll<R>([&](auto r) {
    unroll<NV>([&](auto v) { acc[r][v] = init(i0 + r, n0 + v * W, v == NV - 1 ? last : W); });
  });
  for (int q = 0; q < np; ++q) {
    const Operand<scalar_t>& a = ps[q].a;
    const int64_t K = ps[q].K, ldb = ps[q].ldb;
    const scalar_t* ap[R];
    unroll<R>([&](auto r) { ap[r] = a.p + (i0 + r) * a.row; });
    const scalar_t* bk = ps[q].b + n0;
    for (int64_t k = 0; k < K; ++k, bk += ldb) {
      Reg b[NV];
      unroll<NV - 1>([&](auto v) { b[v] = V::loadu(bk + v * W); });
      b[NV - 1] = ld(bk, (NV - 1) * W, last);
      const int64_t ak = k * a.col;
      unroll<R>([&](auto r) {
        const V av(ap[r][ak]);
        unroll<NV>([&](auto v) { acc[r][v] = at::vec::fmadd(av, V(b[v]), V(acc[r][v])); });
      });
    }
  }
  unroll<R>([&](auto r) {
    unroll<NV>([&](auto v) { store(i0 + r, n0 + v * W, v == NV - 1 ? last : W, V(acc[r][v])); });
  });
}

// Rows [i, M) in tiles of R rows, then the rest in tiles of R/2, R/4, ..., 1 rows.
template <typename scalar_t, int R, int NV, typename Init, typename Store>
inline void rows_in_tiles(int64_t i, int64_t M, int64_t n0, int64_t nv,
                          const Product<scalar_t>* ps, int np, const Init& init,
                          const Store& store) {
  for (; i + R <= M; i += R) tile<scalar_t, R, NV>(i, n0, nv, ps, np, init, store);
  if constexpr (R > 1) {
    if (i < M) rows_in_tiles<scalar_t, R / 2, NV>(i, M, n0, nv, ps, np, init, store);
  }
}

template <typename scalar_t, int NV, typename Init, typename Store>
inline void panel(int64_t M, int64_t n0, int64_t nv, const Product<scalar_t>* ps, int np,
                  const Init& init, const Store& store) {
  // R * NV accumulators + NV B vectors fit the 16 AVX2 registers (the broadcast is a memory
  // operand), with the 8 independent FMA chains that two FMA pipes of latency 4 need. More
  // rows do not pay even with AVX-512's 32 registers: each row's A pointer takes one of the
  // 16 general registers (16 rows x 1 vector ran 20% slower at H = 16).
  constexpr int R = NV == 1 ? 8 : NV == 2 ? 6 : NV == 3 ? 3 : 2;
  rows_in_tiles<scalar_t, R, NV>(0, M, n0, nv, ps, np, init, store);
}

// For every tile of C (M, N): acc = init(i, j, cnt) + sum over the np products of
// sum_k A(i, k) B(k, j..j+cnt), then store(i, j, cnt, acc). init returns a Vec whose first
// cnt lanes count; store writes cnt values at row i, column j.
template <typename scalar_t, typename Init, typename Store>
inline void apply_products(int64_t M, int64_t N, const Product<scalar_t>* ps, int np,
                           const Init& init, const Store& store) {
  constexpr int64_t W = Vec<scalar_t>::size();
  constexpr int64_t width = kPanelVectors * W;
  for (int64_t n0 = 0; n0 < N; n0 += width) {
    const int64_t nv = std::min(width, N - n0);
    switch ((nv + W - 1) / W) {
      case 1: panel<scalar_t, 1>(M, n0, nv, ps, np, init, store); break;
      case 2: panel<scalar_t, 2>(M, n0, nv, ps, np, init, store); break;
      case 3: panel<scalar_t, 3>(M, n0, nv, ps, np, init, store); break;
      default: panel<scalar_t, 4>(M, n0, nv, ps, np, init, store); break;
    }
  }
}

// One product: C = init + A (M, K) Bm (K, N), Bm with row stride ldb >= N.
template <typename scalar_t, typename Init, typename Store>
inline void apply(int64_t M, int64_t N, int64_t K, const Operand<scalar_t>& a,
                  const scalar_t* Bm, int64_t ldb, const Init& init, const Store& store) {
  const Product<scalar_t> p{a, Bm, ldb, K};
  apply_products<scalar_t>(M, N, &p, 1, init, store);
}

// W^T of a (rows, cols) weight, any strides: out[k * rows + j] = W[j, k] (contiguous rows of
// W's columns, the B operand of a product with W^T).
template <typename scalar_t>
inline std::vector<scalar_t> transposed(const Tensor& w) {
  const Tensor c = w.contiguous();
  const int64_t rows = c.size(0), cols = c.size(1);
  const scalar_t* p = c.data_ptr<scalar_t>();
  std::vector<scalar_t> out(rows * cols);
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t k = 0; k < cols; ++k) out[k * rows + j] = p[j * cols + k];
  return out;
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
      [&](int64_t i, int64_t j, int64_t cnt) RNNKIT_ALWAYS_INLINE {
        return read ? vbeta * ld(C + i * ldc, j, cnt) : V(scalar_t(0));
      },
      [&](int64_t i, int64_t j, int64_t cnt, const V& v) RNNKIT_ALWAYS_INLINE {
        st(v, C + i * ldc, j, cnt);
      });
}

}  // namespace small_gemm
}  // namespace rnnkit

namespace rnnkit {
namespace small_gemm {

// ---- The hoisted input projection of a small layer (ProjectedRecurrence, _functions.py) ----
// x W^T + bias for W (N, K), N small (the Elman layer of issue 13 row 2: T*B = 2800 rows,
// K = 28, N = 16, where MKL's addmm ran at ~10 GFLOP/s on one thread). x is (M, K) or
// (T, B, K) with any strides: a batch-first caller's transposed view is read where it lies
// (per time step a (B, K) matrix), not copied into time-major order first.

// The rows of x as slabs of at most `limit` rows, each a (rows, K) matrix with its own row
// and column strides; slab rows follow x's row order (t, then b).
struct Slab {
  int64_t first, rows, offset, row, col;
};
inline std::vector<Slab> slabs(const Tensor& x, int64_t limit) {
  std::vector<Slab> out;
  const bool three = x.dim() == 3;
  const int64_t T = three ? x.size(0) : 1, B = three ? x.size(1) : x.size(0);
  const int64_t row = three ? x.stride(1) : x.stride(0), col = x.stride(x.dim() - 1);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t b0 = 0; b0 < B; b0 += limit) {
      const int64_t off = (three ? t * x.stride(0) : 0) + b0 * row;
      out.push_back({t * B + b0, std::min(limit, B - b0), off, row, col});
    }
  }
  return out;
}

inline void check_linear_input(const Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 2 || x.dim() == 3, what, ": x must be (M, K) or (T, B, K), got ",
              x.sizes());
  TORCH_CHECK(x.device().is_cpu() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              what, ": float32 or float64 CPU tensors of one dtype expected");
}

inline Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const char* what = "rnnkit small linear";
  check_linear_input(x, what);
  const int64_t K = x.size(x.dim() - 1);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == K, what, ": x (..., K) and weight (N, K) expected, "
              "got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && w.device().is_cpu(), what,
              ": float32 or float64 CPU tensors of one dtype expected");
  const bool has_bias = present(bias);
  if (has_bias) check_arg(what, "bias", bias, {w.size(0)}, x.scalar_type(), false);
  const Tensor b = has_bias ? bias.contiguous() : Tensor();  // a view of a flat buffer
  const int64_t N = w.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  Tensor out = at::empty(shape, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_small_linear", [&] {
    using V = Vec<scalar_t>;
    const std::vector<scalar_t> wt = transposed<scalar_t>(w);  // W^T (K, N)
    const scalar_t* b_p = has_bias ? b.data_ptr<scalar_t>() : nullptr;
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    scalar_t* o_p = out.data_ptr<scalar_t>();
    for (const Slab& sl : slabs(x, std::numeric_limits<int64_t>::max())) {
      scalar_t* o = o_p + sl.first * N;
      apply<scalar_t>(
          sl.rows, N, K, {x_p + sl.offset, sl.row, sl.col}, wt.data(), N,
          [&](int64_t, int64_t j, int64_t cnt) RNNKIT_ALWAYS_INLINE {
            return b_p != nullptr ? ld(b_p, j, cnt) : V(scalar_t(0));
          },
          [&](int64_t i, int64_t j, int64_t cnt, const V& v) RNNKIT_ALWAYS_INLINE {
            st(v, o + i * N, j, cnt);
          });
    }
  });
  return out;
}

// Sum of rows [0, rows) of p (row stride `stride`) over columns [j, j + cnt): four sums
// in registers (named, not an array: GCC keeps an array of Vectorized on the stack), added
// pairwise at the end.
template <typename scalar_t>
inline Vec<scalar_t> column_sum(const scalar_t* p, int64_t stride, int64_t rows, int64_t j,
                                int64_t cnt) {
  using V = Vec<scalar_t>;
  V p0(scalar_t(0)), p1(scalar_t(0)), p2(scalar_t(0)), p3(scalar_t(0));
  int64_t m = 0;
  for (; m + 4 <= rows; m += 4) {
    p0 = p0 + ld(p + m * stride, j, cnt);
    p1 = p1 + ld(p + (m + 1) * stride, j, cnt);
    p2 = p2 + ld(p + (m + 2) * stride, j, cnt);
    p3 = p3 + ld(p + (m + 3) * stride, j, cnt);
  }
  for (; m < rows; ++m) p0 = p0 + ld(p + m * stride, j, cnt);
  return (p0 + p1) + (p2 + p3);
}

// Gradients of linear(): d W (N, K) = d^T x and d bias (N) = column sums of d, for d (M, N)
// with M = x's rows in x's row order; each only when asked for (else an undefined tensor).
inline std::vector<Tensor> linear_grads(const Tensor& x_in, const Tensor& d, bool weight,
                                        bool bias) {
  const char* what = "rnnkit small linear backward";
  check_linear_input(x_in, what);
  const int64_t rows_x = x_in.dim() == 3 ? x_in.size(0) * x_in.size(1) : x_in.size(0);
  TORCH_CHECK(d.dim() == 2 && d.size(0) == rows_x, what, ": x (M, K) or (T, B, K) and grad "
              "(M, N) expected, got ", x_in.sizes(), " and ", d.sizes());
  TORCH_CHECK(x_in.scalar_type() == d.scalar_type() && d.device().is_cpu(), what,
              ": float32 or float64 CPU tensors of one dtype expected");
  const int64_t M = d.size(0), N = d.size(1), K = x_in.size(x_in.dim() - 1);
  Tensor dw = weight ? at::zeros({N, K}, d.options()) : Tensor();
  Tensor db = bias ? at::zeros({N}, d.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "rnnkit_small_linear_grads", [&] {
    const scalar_t* d_p = d.data_ptr<scalar_t>();
    if (weight) {
      const Tensor& x = x_in;  // the A operand: any strides
      // d W^T (K, N) = x^T (K, M) d (M, N), A(k, m) = x[m, k], B = d's rows (N values,
      // whole vectors for N = 16; the other order, d^T x, ends each row of x in a masked
      // load at K = 28), then transposed into W's layout. Slabs of up to 256 rows, their
      // products summed apart and then added (error growing with 256 + M / 256 terms).
      TORCH_CHECK(d.size(1) <= 1 || d.stride(1) == 1, what, ": grad rows must be contiguous");
      constexpr int64_t kBlock = 256;
      const scalar_t* x_p = x.data_ptr<scalar_t>();
      const int64_t ldd = row_ld(d);
      std::vector<scalar_t> part(K * N), total(K * N, scalar_t(0));
      int64_t in_part = 0;
      for (const Slab& sl : slabs(x, kBlock)) {
        const Operand<scalar_t> a{x_p + sl.offset, sl.col, sl.row};
        gemm<scalar_t>(K, N, sl.rows, a, d_p + sl.first * ldd, ldd,
                       in_part == 0 ? scalar_t(0) : scalar_t(1), part.data(), N);
        in_part += sl.rows;
        if (in_part >= kBlock || sl.first + sl.rows == M) {
          for (int64_t i = 0; i < K * N; ++i) total[i] += part[i];
          in_part = 0;
        }
      }
      scalar_t* dw_p = dw.data_ptr<scalar_t>();
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) dw_p[n * K + k] = total[k * N + n];
    }
    if (bias) {
      scalar_t* db_p = db.data_ptr<scalar_t>();
      if (d.size(1) <= 1 || d.stride(1) == 1) {
        // blocks of 64 rows summed apart (in registers, four rows at a time), then added:
        // rounding error grows with 64 + M / 64 terms, not M (torch's sum is pairwise)
        using V = Vec<scalar_t>;
        constexpr int64_t kBlock = 64;
        const int64_t ld0 = d.stride(0);
        vloop<scalar_t>(N, [&](int64_t j, int64_t c) {
          V total(scalar_t(0));
          for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
            total = total + column_sum(d_p + m0 * ld0, ld0, std::min(kBlock, M - m0), j, c);
          }
          st(total, db_p, j, c);
        });
      } else {
        db.copy_(d.sum(0));
      }
    }
  });
  return {dw, db};
}

}  // namespace small_gemm
}  // namespace rnnkit
