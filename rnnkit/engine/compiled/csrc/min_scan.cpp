// minGRU / minLSTM recurrence (Feng et al. 2024, "Were RNNs all we needed?"), the "scan" path
// of rnnkit/engine/parallel.py, exactly as rnnkit.functional.min_gru_step / min_lstm_step:
//   minGRU:  z = sig(z_pre),                 h_t = (1 - z) h_{t-1} + z g
//   minLSTM: f = sig(f_pre), i = sig(i_pre), h_t = f/(f+i) h_{t-1} + i/(f+i) g
//   g = h_pre + 1/2 where h_pre >= 0, sig(h_pre) below (written max(h_pre + 1/2, sig(h_pre)))
// from the pre-activations pre (G, T, B, H), G = 2 (z, h) or 3 (f, i, h), which the caller
// computes for all steps in one GEMM.
//
// Every gate sees only the input, so the recurrence is linear in the state and every unit of
// every sequence is its own scalar recurrence: no GEMM inside. Time runs outside, and inside
// each step one pass over a contiguous slice of the B*H units per thread (one parallel region
// per call, no per-step barrier): the gates, the coefficients and the state update in
// registers, one read of each gate's pre-activation and one write of h per element. The
// backward recomputes the gates from `pre` (a few exps per element, cheaper than writing and
// reading four saved (T, B, H) tensors) and runs the adjoint recurrence
//   G_t = dh_t + a_{t+1} G_{t+1}
// the other way through time, writing d pre in the same pass.
#include "common.h"

namespace rnnkit {

namespace {

// Threads split the units in blocks of 16 (whole cache lines of float32, whole vectors); a
// chunk gets ~64k element-steps of work at least, so small problems stay on one thread.
constexpr int64_t kMinScanBlock = 16;
inline int64_t min_scan_grain(int64_t steps) {
  return std::max<int64_t>(1, 65536 / (kMinScanBlock * std::max<int64_t>(1, steps)));
}
template <typename F>
inline void for_unit_chunks(int64_t N, int64_t steps, const F& f) {
  const int64_t blocks = (N + kMinScanBlock - 1) / kMinScanBlock;
  at::parallel_for(0, blocks, min_scan_grain(steps), [&](int64_t b0, int64_t b1) {
    f(b0 * kMinScanBlock, std::min(N, b1 * kMinScanBlock));
  });
}

// The coefficients of h_t = a h_{t-1} + b g and what the backward needs of the gates.
template <typename scalar_t>
struct MinGates {
  Vec<scalar_t> a, b, g, s_h;  // s_h = sig(h_pre)
  Vec<scalar_t> f, i;          // minLSTM's gates (minGRU: f unused, i = z)
};

template <typename scalar_t>
inline MinGates<scalar_t> min_gates(bool gru, const scalar_t* pre, int64_t plane, int64_t at,
                                    int64_t j, int64_t c) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1)), half(scalar_t(0.5));
  MinGates<scalar_t> r;
  const V hp = ld(pre + (gru ? 1 : 2) * plane + at, j, c);
  r.s_h = vsigmoid(hp);
  r.g = at::vec::maximum(hp + half, r.s_h);
  if (gru) {
    r.i = vsigmoid(ld(pre + at, j, c));  // z
    r.b = r.i;
    r.a = one - r.i;
  } else {
    r.f = vsigmoid(ld(pre + at, j, c));
    r.i = vsigmoid(ld(pre + plane + at, j, c));
    const V total = r.f + r.i;
    r.a = r.f / total;
    r.b = r.i / total;
  }
  return r;
}

inline void check_min_scan_args(const char* k, const Tensor& pre, const Tensor& h0, bool gru) {
  TORCH_CHECK(pre.dim() == 4 && pre.size(0) == (gru ? 2 : 3), k, ": pre must be (",
              gru ? 2 : 3, ", T, B, H), got ", pre.sizes());
  check_arg(k, "pre", pre, {pre.size(0), pre.size(1), pre.size(2), pre.size(3)},
            pre.scalar_type());
  check_arg(k, "h0", h0, {pre.size(2), pre.size(3)}, pre.scalar_type(), false);
}

}  // namespace

// hs (T, B, H): the state after every step (reverse: step t reads h_{t+1}, h0 at t = T-1).
Tensor min_scan_forward(const Tensor& pre_in, const Tensor& h0_in, bool gru, bool reverse) {
  constexpr const char* kName = "rnnkit min_scan_forward";
  const Tensor pre = pre_in.contiguous();
  const Tensor h0 = h0_in.contiguous();
  check_min_scan_args(kName, pre, h0, gru);
  const int64_t T = pre.size(1), N = pre.size(2) * pre.size(3), plane = T * N;
  Tensor hs = at::empty({T, pre.size(2), pre.size(3)}, pre.options());
  if (T == 0 || N == 0) return hs;
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnkit_min_scan_forward", [&] {
    const scalar_t* pre_p = pre.data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.data_ptr<scalar_t>();
    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    for_unit_chunks(N, T, [&](int64_t n0, int64_t n1) {
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        const scalar_t* prev = s == 0 ? h0_p : hs_p + (reverse ? t + 1 : t - 1) * N;
        scalar_t* out = hs_p + t * N;
        vloop<scalar_t>(n1 - n0, [&](int64_t j0, int64_t c) {
          const int64_t j = n0 + j0;
          const auto q = min_gates<scalar_t>(gru, pre_p, plane, t * N, j, c);
          st(at::vec::fmadd(q.a, ld(prev, j, c), q.b * q.g), out, j, c);
        });
      }
    });
  });
  return hs;
}

// Returns {d pre (G, T, B, H), d h0 (B, H)}; either is undefined when not wanted.
std::vector<Tensor> min_scan_backward(const Tensor& grad_in, const Tensor& pre_in,
                                      const Tensor& h0_in, const Tensor& hs_in, bool gru,
                                      bool reverse, bool want_pre, bool want_h0) {
  constexpr const char* kName = "rnnkit min_scan_backward";
  const Tensor pre = pre_in.contiguous();
  const Tensor h0 = h0_in.contiguous();
  check_min_scan_args(kName, pre, h0, gru);
  const int64_t T = pre.size(1), B = pre.size(2), H = pre.size(3), N = B * H, plane = T * N;
  const auto dt = pre.scalar_type();
  check_arg(kName, "hs", hs_in, {T, B, H}, dt, false);
  check_arg(kName, "grad", grad_in, {T, B, H}, dt, false);
  const Tensor hs = hs_in.contiguous();
  const Tensor grad = grad_in.contiguous();
  Tensor dpre = want_pre ? at::empty_like(pre) : Tensor();
  // The adjoint G and the coefficient a of the step processed last, per unit: after the loop
  // they belong to the first step (the one that read h0), so d h0 = a G there.
  Tensor adj = at::empty({2, N}, pre.options());
  if (T == 0 || N == 0) {
    return {dpre, want_h0 ? at::zeros_like(h0) : Tensor()};
  }
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_min_scan_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* pre_p = pre.data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.data_ptr<scalar_t>();
    const scalar_t* hs_p = hs.data_ptr<scalar_t>();
    const scalar_t* g_p = grad.data_ptr<scalar_t>();
    scalar_t* d_p = want_pre ? dpre.data_ptr<scalar_t>() : nullptr;
    scalar_t* G_p = adj.data_ptr<scalar_t>();
    scalar_t* a_p = G_p + N;
    const V one(scalar_t(1)), zero(scalar_t(0));
    for_unit_chunks(N, T, [&](int64_t n0, int64_t n1) {
      for (int64_t s = T - 1; s >= 0; --s) {  // the forward's steps, last first
        const int64_t t = reverse ? T - 1 - s : s;
        const scalar_t* carry = s == 0 ? h0_p : hs_p + (reverse ? t + 1 : t - 1) * N;
        vloop<scalar_t>(n1 - n0, [&](int64_t j0, int64_t c) {
          const int64_t j = n0 + j0;
          const auto q = min_gates<scalar_t>(gru, pre_p, plane, t * N, j, c);
          V G = ld(g_p + t * N, j, c);
          if (s < T - 1) G = at::vec::fmadd(ld(a_p, j, c), ld(G_p, j, c), G);
          st(G, G_p, j, c);
          st(q.a, a_p, j, c);
          if (d_p == nullptr) return;
          const V gb = G * q.b;
          // d h_pre = G b g'(h_pre): g' = 1 where h_pre >= 0, sig'(h_pre) below
          const V hp = ld(pre_p + (gru ? 1 : 2) * plane + t * N, j, c);
          const V dg = V::blendv(gb * q.s_h * (one - q.s_h), gb, hp >= zero);
          st(dg, d_p + (gru ? 1 : 2) * plane + t * N, j, c);
          const V delta = G * (q.g - ld(carry, j, c)) * q.a * q.b;
          if (gru) {
            st(delta, d_p + t * N, j, c);  // d z_pre = G (g - carry) z (1 - z)
          } else {
            st(delta * (q.f - one), d_p + t * N, j, c);         // d f_pre = -delta (1 - f)
            st(delta * (one - q.i), d_p + plane + t * N, j, c);  // d i_pre = delta (1 - i)
          }
        });
      }
    });
  });
  Tensor dh0;
  if (want_h0) dh0 = (adj[0] * adj[1]).view({B, H});
  return {dpre, dh0};
}

}  // namespace rnnkit
