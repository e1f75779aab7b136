// Shared helpers for rnnkit's compiled recurrences.
//
// Every kernel follows the same plan (docs/engine-compiled.md):
//   * the input projection xp = W_ih x + b (T, B, G*H) is computed by the caller over all
//     time steps at once (one GEMM, autograd handles its backward);
//   * the C++ loop runs step s = 0 .. S-1 (S = longest sequence). Row b is active at step s
//     when s < len[b]; it then reads time position t = s (or len[b]-1-s when reverse).
//     Inactive rows keep their state and produce no output (outputs stay zero there);
//   * everything saved for backward is stored in *step* order (S, B, .) with zero rows for
//     inactive (s, b), so the weight gradients are one GEMM each over all S*B rows.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace rnnkit {

using at::Tensor;

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// Load/store `cnt` lanes at p + j (cnt < Vec::size() only in a row's tail).
template <typename scalar_t>
inline Vec<scalar_t> ld(const scalar_t* p, int64_t j, int64_t cnt) {
  return cnt == Vec<scalar_t>::size() ? Vec<scalar_t>::loadu(p + j)
                                      : Vec<scalar_t>::loadu(p + j, cnt);
}
template <typename scalar_t>
inline void st(const Vec<scalar_t>& v, scalar_t* p, int64_t j, int64_t cnt) {
  if (cnt == Vec<scalar_t>::size()) {
    v.store(p + j);
  } else {
    v.store(p + j, cnt);
  }
}

// Call f(j, cnt) over [0, n) in vector-sized chunks.
template <typename scalar_t, typename F>
inline void vloop(int64_t n, const F& f) {
  constexpr int64_t W = Vec<scalar_t>::size();
  int64_t j = 0;
  for (; j + W <= n; j += W) f(j, W);
  if (j < n) f(j, n - j);
}

template <typename scalar_t>
inline Vec<scalar_t> vsigmoid(const Vec<scalar_t>& x) {
  const Vec<scalar_t> one(scalar_t(1));
  return one / (one + x.neg().exp());
}

template <typename scalar_t>
inline Vec<scalar_t> vtanh(const Vec<scalar_t>& x) {
  return x.tanh();
}

// Sum of a row, vectorised over full vectors, accumulated in scalar_t lanes.
template <typename scalar_t>
inline scalar_t row_sum(const scalar_t* p, int64_t n) {
  constexpr int64_t W = Vec<scalar_t>::size();
  Vec<scalar_t> acc(scalar_t(0));
  int64_t j = 0;
  for (; j + W <= n; j += W) acc = acc + Vec<scalar_t>::loadu(p + j);
  scalar_t buf[W];
  acc.store(buf);
  scalar_t s = 0;
  for (int64_t k = 0; k < W; ++k) s += buf[k];
  for (; j < n; ++j) s += p[j];
  return s;
}

// Sum of p[j] * q[j].
template <typename scalar_t>
inline scalar_t row_dot(const scalar_t* p, const scalar_t* q, int64_t n) {
  constexpr int64_t W = Vec<scalar_t>::size();
  Vec<scalar_t> acc(scalar_t(0));
  int64_t j = 0;
  for (; j + W <= n; j += W) acc = at::vec::fmadd(Vec<scalar_t>::loadu(p + j), Vec<scalar_t>::loadu(q + j), acc);
  scalar_t buf[W];
  acc.store(buf);
  scalar_t s = 0;
  for (int64_t k = 0; k < W; ++k) s += buf[k];
  for (; j < n; ++j) s += p[j] * q[j];
  return s;
}

// Layer normalisation of one row x (n), as torch.nn.LayerNorm (biased variance):
//   xhat = (x - mean) * rstd,  y = xhat * gamma + beta   (gamma/beta may be null)
// Writes xhat (may alias x) and y, returns rstd.
template <typename scalar_t>
inline scalar_t ln_row_forward(const scalar_t* x, scalar_t* xhat, scalar_t* y, const scalar_t* gamma,
                               const scalar_t* beta, int64_t n, double eps) {
  const scalar_t mean = row_sum(x, n) / scalar_t(n);
  // Two passes for the variance: cheap next to the GEMM and as stable as torch's.
  const Vec<scalar_t> vmean(mean);
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) { st(ld(x, j, c) - vmean, xhat, j, c); });
  const scalar_t var = row_dot(xhat, xhat, n) / scalar_t(n);
  const scalar_t rstd = scalar_t(1) / std::sqrt(var + scalar_t(eps));
  const Vec<scalar_t> vr(rstd);
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) {
    Vec<scalar_t> xh = ld(xhat, j, c) * vr;
    st(xh, xhat, j, c);
    if (gamma != nullptr) xh = xh * ld(gamma, j, c);
    if (beta != nullptr) xh = xh + ld(beta, j, c);
    st(xh, y, j, c);
  });
  return rstd;
}

// Backward of ln_row_forward: dy -> dx (may alias dy); accumulates dgamma += dy*xhat and
// dbeta += dy when those are non-null. `tmp` is scratch of n elements.
template <typename scalar_t>
inline void ln_row_backward(const scalar_t* dy, const scalar_t* xhat, scalar_t rstd,
                            const scalar_t* gamma, scalar_t* dx, scalar_t* dgamma,
                            scalar_t* dbeta, scalar_t* tmp, int64_t n) {
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) {
    const Vec<scalar_t> g = ld(dy, j, c);
    if (dgamma != nullptr) st(at::vec::fmadd(g, ld(xhat, j, c), ld(dgamma, j, c)), dgamma, j, c);
    if (dbeta != nullptr) st(ld(dbeta, j, c) + g, dbeta, j, c);
    st(gamma != nullptr ? g * ld(gamma, j, c) : g, tmp, j, c);
  });
  const scalar_t mean_g = row_sum(tmp, n) / scalar_t(n);
  const scalar_t mean_gx = row_dot(tmp, xhat, n) / scalar_t(n);
  const Vec<scalar_t> vmg(mean_g), vmgx(mean_gx), vr(rstd);
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) {
    st((ld(tmp, j, c) - vmg - ld(xhat, j, c) * vmgx) * vr, dx, j, c);
  });
}

// Per-step row schedule: active flag and time index of every row.
struct Schedule {
  int64_t T, B, S;
  bool reverse;
  std::vector<int64_t> len;  // (B)

  Schedule(const Tensor& lengths, int64_t T_, int64_t B_, bool reverse_)
      : T(T_), B(B_), S(0), reverse(reverse_), len(B_, T_) {
    if (lengths.defined() && lengths.numel() > 0) {
      auto l = lengths.contiguous();
      const int64_t* p = l.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b) len[b] = p[b];
    }
    for (int64_t b = 0; b < B; ++b) S = std::max(S, len[b]);
  }
  inline bool active(int64_t s, int64_t b) const { return s < len[b]; }
  inline int64_t time(int64_t s, int64_t b) const { return reverse ? len[b] - 1 - s : s; }
  // True when every row reads time s at step s: saved buffers can alias time-major ones.
  bool identity() const {
    if (reverse) return false;
    for (int64_t b = 0; b < B; ++b)
      if (len[b] != T) return false;
    return true;
  }
};

// Rows per parallel chunk so that each chunk has at least ~4k elements of gate math
// (below that, waking a second thread costs more than it saves).
inline int64_t row_grain(int64_t row_elems) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, row_elems));
}

// Optional tensors arrive from Python as empty (numel 0) tensors.
inline bool present(const Tensor& t) { return t.defined() && t.numel() > 0; }

template <typename scalar_t>
inline const scalar_t* ptr_or_null(const Tensor& t) {
  return present(t) ? t.data_ptr<scalar_t>() : nullptr;
}

}  // namespace rnnkit
