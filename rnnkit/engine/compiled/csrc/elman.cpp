// Elman recurrence: h' = act(xp + W_hh h), act = tanh or relu; xp = W_ih x + b_ih + b_hh.
#include "common.h"

namespace rnnkit {

// tanh for the Elman step. float: Eigen's rational approximation (odd degree-13 numerator,
// degree-6 denominator in x^2, input clamped to +-7.905; max error 3.4e-7 absolute, <= 6 ulp,
// checked against float64 tanh on a dense grid over [-12, 12]). Sleef's 1-ulp tanhf cost
// ~3.7 ns per element here, a large part of a ~19 us step at B=16, H=128. double: Sleef.
// NaN propagates (minimum/maximum propagate it, and the tiny-input select is false for it).
template <typename scalar_t>
inline Vec<scalar_t> elman_tanh(const Vec<scalar_t>& a) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    using V = Vec<float>;
    const V clamp(7.90531110763549805f), tiny(0.0004f);
    const V x = at::vec::maximum(at::vec::minimum(a, clamp), V(-7.90531110763549805f));
    const V x2 = x * x;
    V p = at::vec::fmadd(x2, V(-2.76076847742355e-16f), V(2.00018790482477e-13f));
    p = at::vec::fmadd(x2, p, V(-8.60467152213735e-11f));
    p = at::vec::fmadd(x2, p, V(5.12229709037114e-08f));
    p = at::vec::fmadd(x2, p, V(1.48572235717979e-05f));
    p = at::vec::fmadd(x2, p, V(6.37261928875436e-04f));
    p = at::vec::fmadd(x2, p, V(4.89352455891786e-03f));
    p = p * x;
    V q = at::vec::fmadd(x2, V(1.19825839466702e-06f), V(1.18534705686654e-04f));
    q = at::vec::fmadd(x2, q, V(2.26843463243900e-03f));
    q = at::vec::fmadd(x2, q, V(4.89352518554385e-03f));
    return V::blendv(p / q, a, a.abs() < tiny);
  } else {
    return vtanh(a);
  }
}

// Saved (training): hs (S+1, B, H), hs[0] = h0, hs[s+1] = state after step s.
std::vector<Tensor> elman_forward(const Tensor& xp_in, const Tensor& h0, const Tensor& w_hh,
                                  const Tensor& lengths, bool relu, bool reverse,
                                  bool training) {
  constexpr const char* kName = "rnnkit elman_forward";
  TORCH_CHECK(xp_in.dim() == 3 && h0.dim() == 2, kName, ": xp must be 3-D and h0 2-D");
  const Tensor xp = xp_in.contiguous();
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(1);
  const auto dt = xp.scalar_type();
  check_arg(kName, "xp", xp, {T, B, H}, dt);
  check_arg(kName, "h0", h0, {B, H}, dt, false);
  check_arg(kName, "weight_hh", w_hh, {H, H}, dt);
  check_lengths_arg(kName, lengths, B);
  const Schedule sch(lengths, T, B, reverse);
  const int64_t S = sch.S;
  const auto opts = xp.options();
  Tensor out = sch.identity() ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  Tensor hs = at::empty({training ? S + 1 : 2, B, H}, opts);
  const Tensor w_t = w_hh.t().contiguous();  // once per sequence: NN layout per step
  hs[0].copy_(sch.to_positions(h0));
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_elman_forward", [&] {
    using V = Vec<scalar_t>;
    // Raw pointers into the contiguous buffers: at T=1024, B=16, H=128 a step is ~20 us,
    // and the per-step Tensor indexing (hs[s], select) alone cost ~2 us of it.
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    const V zero(scalar_t(0));
    const RecurrentGemm<scalar_t> gemm_hh(B, w_t);  // h W_hh^T, weights packed once
    for (int64_t s = 0; s < S; ++s) {
      const int64_t cur = training ? s : (s & 1);
      const int64_t nxt = training ? s + 1 : 1 - cur;
      const scalar_t* hp = hs_p + cur * B * H;
      scalar_t* hn = hs_p + nxt * B * H;
      const int64_t rows = sch.active_rows[s];
      // The active rows are the first ones (positions sorted by length): the product goes
      // straight into the new state, which the pass below finishes in place.
      gemm_hh(hp, H, scalar_t(0), hn, H, rows);
      auto rows_fn = [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* hnew = hn + b * H;
          if (b >= rows) {
            std::copy(hp + b * H, hp + (b + 1) * H, hnew);
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* x = xp_p + (t * B + sch.row(b)) * H;
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
            const V pre = ld(x, j, c) + ld(hnew, j, c);
            st(relu ? at::vec::maximum(pre, zero) : elman_tanh<scalar_t>(pre), hnew, j, c);
          });
          std::copy(hnew, hnew + H, out_p + (t * B + sch.row(b)) * H);
        }
      };
      const int64_t grain = row_grain(H);
      if (B <= grain) {
        rows_fn(0, B);  // one chunk: skip parallel_for's dispatch
      } else {
        at::parallel_for(0, B, grain, rows_fn);
      }
    }
  });
  const int64_t last = training ? S : (S & 1);
  std::vector<Tensor> result{out, sch.to_rows(hs[last])};
  if (training) result.push_back(hs);
  return result;
}

// Returns dxp (T, B, H), dh0, dw_hh.
std::vector<Tensor> elman_backward(const Tensor& dout_in, const Tensor& dhT, const Tensor& hs,
                                   const Tensor& w_hh, const Tensor& lengths, int64_t T,
                                   bool relu, bool reverse) {
  constexpr const char* kName = "rnnkit elman_backward";
  TORCH_CHECK(hs.dim() == 3 && hs.size(0) >= 1, kName, ": saved states have the wrong shape");
  const int64_t S = hs.size(0) - 1, B = hs.size(1), H = hs.size(2);
  const auto dt = hs.scalar_type();
  check_arg(kName, "hs", hs, {S + 1, B, H}, dt);
  check_arg(kName, "weight_hh", w_hh, {H, H}, dt);
  if (present(dout_in)) check_arg(kName, "grad of outputs", dout_in, {T, B, H}, dt, false);
  if (present(dhT)) check_arg(kName, "grad of h_n", dhT, {B, H}, dt, false);
  check_lengths_arg(kName, lengths, B);
  const Schedule sch(lengths, T, B, reverse);
  TORCH_CHECK(sch.S == S, "rnnkit elman backward: saved steps do not match lengths");
  const auto opts = hs.options();
  const Tensor dout = present(dout_in) ? dout_in.contiguous() : Tensor();
  Tensor dh = present(dhT) ? sch.to_positions(dhT).contiguous() : at::zeros({B, H}, opts);
  const Tensor w_c = w_hh.contiguous();
  const bool alias = sch.identity();
  Tensor dxp = alias ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  Tensor dpre = alias ? dxp : at::empty({S, B, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnnkit_elman_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* dout_p = present(dout) ? dout.data_ptr<scalar_t>() : nullptr;
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    const V one(scalar_t(1)), zero(scalar_t(0));
    const RecurrentGemm<scalar_t> gemm_dh(B, w_c);  // dpre W_hh
    scalar_t* dh_p = dh.data_ptr<scalar_t>();
    const Tensor hs_c = hs.contiguous();  // pointer arithmetic below
    const scalar_t* hs_p = hs_c.data_ptr<scalar_t>();
    scalar_t* dpre_p = dpre.data_ptr<scalar_t>();
    for (int64_t s = S - 1; s >= 0; --s) {
      const scalar_t* hn = hs_p + (s + 1) * B * H;
      scalar_t* dp_s = dpre_p + s * B * H;
      const int64_t rows = sch.active_rows[s];
      auto rows_fn = [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* dp = dp_s + b * H;
          scalar_t* dhrow = dh_p + b * H;
          if (b >= rows) {
            std::fill(dp, dp + H, scalar_t(0));
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* dorow = dout_p ? dout_p + (t * B + sch.row(b)) * H : nullptr;
          const scalar_t* h = hn + b * H;
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
            V d = ld(dhrow, j, c);
            if (dorow) d = d + ld(dorow, j, c);
            const V hv = ld(h, j, c);
            // relu: torch's threshold_backward passes the gradient where the output > 0.
            const V g = relu ? V::blendv(zero, d, hv > zero) : d * (one - hv * hv);
            st(g, dp, j, c);
          });
          if (!alias) std::copy(dp, dp + H, dxp_p + (t * B + sch.row(b)) * H);
        }
      };
      const int64_t grain = row_grain(H);
      if (B <= grain) {
        rows_fn(0, B);  // one chunk: skip parallel_for's dispatch
      } else {
        at::parallel_for(0, B, grain, rows_fn);
      }
      // dh = dpre W_hh for the active rows (beta 0 replaces zeroing them first); the
      // inactive rows keep dh.
      gemm_dh(dp_s, H, scalar_t(0), dh_p, H, rows);
    }
  });
  Tensor dw_hh = S > 0 ? at::mm(dpre.narrow(0, 0, S).reshape({S * B, H}).t(),
                                hs.narrow(0, 0, S).reshape({S * B, H}))
                       : at::zeros_like(w_hh);
  return {dxp, sch.to_rows(dh), dw_hh};
}

}  // namespace rnnkit
