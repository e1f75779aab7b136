// minGRU / minLSTM recurrence (Feng et al. 2024, "Were RNNs all we needed?"), the "scan" path
// of rnnkit/engine/parallel.py, exactly as rnnkit.functional.min_gru_step / min_lstm_step:
//   minGRU:  z = sig(z_pre),                 h_t = (1 - z) h_{t-1} + z g
//   minLSTM: f = sig(f_pre), i = sig(i_pre), h_t = f/(f+i) h_{t-1} + i/(f+i) g
//   g = h_pre + 1/2 where h_pre >= 0, sig(h_pre) below (written max(h_pre + 1/2, sig(h_pre)))
// from the pre-activations pre (T, B, G*H), G = 2 (z, h) or 3 (f, i, h) side by side in each
// row, which the caller computes for all steps in one GEMM (x W_ih^T + b).
//
// Every gate sees only the input, so the recurrence is linear in the state and every unit of
// every sequence is its own scalar recurrence: no GEMM inside. Each thread owns a set of
// (row, 16-unit block) pairs for the whole call (one parallel region, no per-step barrier);
// time runs outside and its blocks inside: the gates, the coefficients and the state update
// in registers, one read of each gate's pre-activation and one write of h per element. The
// backward recomputes the gates from `pre` (a few exps per element, cheaper than writing and
// reading four saved (T, B, H) tensors) and runs the adjoint recurrence
//   G_t = dh_t + a_{t+1} G_{t+1}
// the other way through time, writing d pre in the same pass.
#include "common.h"

namespace rnnkit {

namespace {

// Threads split the (row, 16-unit block) pairs (16 float32 = a cache line, two vectors); a
// chunk gets ~64k element-steps of work at least, so small problems stay on one thread.
constexpr int64_t kMinScanBlock = 16;

template <typename F>
inline void for_unit_blocks(int64_t B, int64_t H, int64_t steps, const F& f) {
  const int64_t per_row = (H + kMinScanBlock - 1) / kMinScanBlock;
  const int64_t grain =
      std::max<int64_t>(1, 65536 / (kMinScanBlock * std::max<int64_t>(1, steps)));
  at::parallel_for(0, B * per_row, grain, [&](int64_t k0, int64_t k1) { f(k0, k1, per_row); });
}

// The coefficients of h_t = a h_{t-1} + b g and what the backward needs of the gates, from
// one (t, b) row of pre: gate k's pre-activations at row + k H.
template <typename scalar_t>
struct MinGates {
  Vec<scalar_t> a, b, g, s_h, hp;  // s_h = sig(h_pre)
  Vec<scalar_t> f, i;              // minLSTM's gates (minGRU: f unused, i = z)
};

template <typename scalar_t>
inline MinGates<scalar_t> min_gates(bool gru, const scalar_t* row, int64_t H, int64_t j,
                                    int64_t c) {
  using V = Vec<scalar_t>;
  const V one(scalar_t(1)), half(scalar_t(0.5));
  MinGates<scalar_t> r;
  r.hp = ld(row + (gru ? 1 : 2) * H, j, c);
  r.s_h = vsigmoid(r.hp);
  r.g = at::vec::maximum(r.hp + half, r.s_h);
  if (gru) {
    r.i = vsigmoid(ld(row, j, c));  // z
    r.b = r.i;
    r.a = one - r.i;
  } else {
    r.f = vsigmoid(ld(row, j, c));
    r.i = vsigmoid(ld(row + H, j, c));
    const V total = r.f + r.i;
    r.a = r.f / total;
    r.b = r.i / total;
  }
  return r;
}

inline void check_min_scan_args(const char* k, const Tensor& pre, const Tensor& h0, bool gru) {
  const int64_t G = gru ? 2 : 3;
  TORCH_CHECK(h0.dim() == 2, k, ": h0 must be (B, H), got ", h0.sizes());
  TORCH_CHECK(pre.dim() == 3 && pre.size(1) == h0.size(0) && pre.size(2) == G * h0.size(1), k,
              ": pre must be (T, B, ", G, "H) = (T, ", h0.size(0), ", ", G * h0.size(1),
              ") for h0 ", h0.sizes(), ", got ", pre.sizes());
  check_arg(k, "pre", pre, {pre.size(0), pre.size(1), pre.size(2)}, pre.scalar_type());
  check_arg(k, "h0", h0, {h0.size(0), h0.size(1)}, pre.scalar_type(), false);
}

}  // namespace

// hs (T, B, H): the state after every step (reverse: step t reads h_{t+1}, h0 at t = T-1),
// from pre (T, B, G*H), the gates side by side in each row as the input projection writes them.
Tensor min_scan_forward(const Tensor& pre_in, const Tensor& h0_in, bool gru, bool reverse) {
  constexpr const char* kName = "rnnkit min_scan_forward";
  const Tensor pre = pre_in.contiguous();
  const Tensor h0 = h0_in.contiguous();
  check_min_scan_args(kName, pre, h0, gru);
  const int64_t T = pre.size(0), B = h0.size(0), H = h0.size(1), GH = pre.size(2);
  Tensor hs = at::empty({T, B, H}, pre.options());
  if (T == 0 || B == 0 || H == 0) return hs;
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnkit_min_scan_forward", [&] {
    const scalar_t* pre_p = pre.data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.data_ptr<scalar_t>();
    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    for_unit_blocks(B, H, T, [&](int64_t k0, int64_t k1, int64_t per_row) {
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        const scalar_t* prev = s == 0 ? h0_p : hs_p + (reverse ? t + 1 : t - 1) * B * H;
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t b = k / per_row, j0 = (k % per_row) * kMinScanBlock;
          const scalar_t* row = pre_p + (t * B + b) * GH;
          const scalar_t* hprev = prev + b * H;
          scalar_t* out = hs_p + (t * B + b) * H;
          vloop<scalar_t>(std::min(H - j0, kMinScanBlock), [&](int64_t jj, int64_t c) {
            const int64_t j = j0 + jj;
            const auto q = min_gates<scalar_t>(gru, row, H, j, c);
            st(at::vec::fmadd(q.a, ld(hprev, j, c), q.b * q.g), out, j, c);
          });
        }
      }
    });
  });
  return hs;
}

// Returns {d pre (T, B, G*H), d h0 (B, H)}; either is undefined when not wanted.
std::vector<Tensor> min_scan_backward(const Tensor& grad_in, const Tensor& pre_in,
                                      const Tensor& h0_in, const Tensor& hs_in, bool gru,
                                      bool reverse, bool want_pre, bool want_h0) {
  constexpr const char* kName = "rnnkit min_scan_backward";
  const Tensor pre = pre_in.contiguous();
  const Tensor h0 = h0_in.contiguous();
  check_min_scan_args(kName, pre, h0, gru);
  const int64_t T = pre.size(0), B = h0.size(0), H = h0.size(1), GH = pre.size(2);
  const auto dt = pre.scalar_type();
  check_arg(kName, "hs", hs_in, {T, B, H}, dt, false);
  check_arg(kName, "grad", grad_in, {T, B, H}, dt, false);
  const Tensor hs = hs_in.contiguous();
  const Tensor grad = grad_in.contiguous();
  Tensor dpre = want_pre ? at::empty_like(pre) : Tensor();
  // The adjoint G and the coefficient a of the step processed last, per unit: after the loop
  // they belong to the first step (the one that read h0), so d h0 = a G there.
  Tensor adj = at::empty({2, B * H}, pre.options());
  if (T == 0 || B == 0 || H == 0) {
    return {dpre, want_h0 ? at::zeros_like(h0) : Tensor()};
  }
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_min_scan_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* pre_p = pre.data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.data_ptr<scalar_t>();
    const scalar_t* hs_p = hs.data_ptr<scalar_t>();
    const scalar_t* g_p = grad.data_ptr<scalar_t>();
    scalar_t* d_p = want_pre ? dpre.data_ptr<scalar_t>() : nullptr;
    scalar_t* G_all = adj.data_ptr<scalar_t>();
    scalar_t* a_all = G_all + B * H;
    const V one(scalar_t(1)), zero(scalar_t(0));
    const int64_t hk = gru ? 1 : 2;  // the candidate's gate
    for_unit_blocks(B, H, T, [&](int64_t k0, int64_t k1, int64_t per_row) {
      for (int64_t s = T - 1; s >= 0; --s) {  // the forward's steps, last first
        const int64_t t = reverse ? T - 1 - s : s;
        const scalar_t* carry_all = s == 0 ? h0_p : hs_p + (reverse ? t + 1 : t - 1) * B * H;
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t b = k / per_row, j0 = (k % per_row) * kMinScanBlock;
          const scalar_t* row = pre_p + (t * B + b) * GH;
          scalar_t* drow = d_p != nullptr ? d_p + (t * B + b) * GH : nullptr;
          const scalar_t* carry = carry_all + b * H;
          const scalar_t* dh = g_p + (t * B + b) * H;
          scalar_t* Gp = G_all + b * H;
          scalar_t* ap = a_all + b * H;
          vloop<scalar_t>(std::min(H - j0, kMinScanBlock), [&](int64_t jj, int64_t c) {
            const int64_t j = j0 + jj;
            const auto q = min_gates<scalar_t>(gru, row, H, j, c);
            V G = ld(dh, j, c);
            if (s < T - 1) G = at::vec::fmadd(ld(ap, j, c), ld(Gp, j, c), G);
            st(G, Gp, j, c);
            st(q.a, ap, j, c);
            if (drow == nullptr) return;
            const V gb = G * q.b;
            // d h_pre = G b g'(h_pre): g' = 1 where h_pre >= 0, sig'(h_pre) below
            st(V::blendv(gb * q.s_h * (one - q.s_h), gb, q.hp >= zero), drow + hk * H, j, c);
            const V delta = G * (q.g - ld(carry, j, c)) * q.a * q.b;
            if (gru) {
              st(delta, drow, j, c);  // d z_pre = G (g - carry) z (1 - z)
            } else {
              st(delta * (q.f - one), drow, j, c);      // d f_pre = -delta (1 - f)
              st(delta * (one - q.i), drow + H, j, c);  // d i_pre = delta (1 - i)
            }
          });
        }
      }
    });
  });
  Tensor dh0;
  if (want_h0) dh0 = (adj[0] * adj[1]).view({B, H});
  return {dpre, dh0};
}

}  // namespace rnnkit
