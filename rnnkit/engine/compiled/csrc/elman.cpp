// Elman recurrence: h' = act(xp + W_hh h), act = tanh or relu; xp = W_ih x + b_ih + b_hh.
#include "step_loop.h"

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

struct ElmanFamily {
  static constexpr const char* kName = "elman";
  static ArgNames names() { return {{"weight_hh"}, {}, {"relu"}}; }

  struct Config {
    int64_t H;
    bool relu;
  };
  static Config config(const KernelArgs& a) {
    const Tensor& w = a.tensor("weight_hh");
    TORCH_CHECK(w.dim() == 2, a.kernel, ": weight_hh must be 2-D, got ", w.sizes());
    return {w.size(0), a.flag("relu")};
  }
  static StepLayout layout(const Config& c) {
    StepLayout L;
    L.X = L.SW = L.out = L.K = L.N = c.H;
    // The GEMM writes straight into the new state, which phase 1 finishes in place (no
    // (B, H) scratch), and d pre-activation is both d xp and d rec.
    L.rec_in_state = true;
    L.rec_grad_is_xp_grad = true;
    L.work = c.H;
    return L;
  }
  static void check(const Config& c, const KernelArgs& a, at::ScalarType dt, const char* k) {
    check_arg(k, "weight_hh", a.tensor("weight_hh"), {c.H, c.H}, dt);
  }
  static Tensor gemm1_weight(const Config&, const KernelArgs& a) { return a.tensor("weight_hh"); }
  static Tensor gemm2_weight(const Config&, const KernelArgs&) { return Tensor(); }

  template <typename scalar_t>
  struct Forward : NoSecondGemmForward<scalar_t> {
    int64_t H;
    bool relu;
    Forward(const Config& c, const KernelArgs&) : H(c.H), relu(c.relu) {}
    void phase1(const FwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const V zero(scalar_t(0));
      // r.rec is r.next (rec_in_state): h' = act(xp + W_hh h) in place.
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        const V pre = ld(r.x, j, c) + ld(r.rec, j, c);
        st(relu ? at::vec::maximum(pre, zero) : elman_tanh<scalar_t>(pre), r.next, j, c);
      });
    }
  };

  template <typename scalar_t>
  struct Backward : NoSecondGemmBackward<scalar_t> {
    int64_t H;
    bool relu;
    Backward(const Config& c, const KernelArgs&) : H(c.H), relu(c.relu) {}
    void phase1(const BwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const V one(scalar_t(1)), zero(scalar_t(0));
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        V d = ld(r.dstate, j, c);
        if (r.dy != nullptr) d = d + ld(r.dy, j, c);
        const V h = ld(r.next, j, c);
        // relu: torch's threshold_backward passes the gradient where the output > 0.
        const V g = relu ? V::blendv(zero, d, h > zero) : d * (one - h * h);
        st(g, r.drec, j, c);
        if (r.dx != r.drec) st(g, r.dx, j, c);
        st(zero, r.dstate, j, c);  // no direct path from h to h_prev: all of it is d rec W
      });
    }
  };

  static std::map<std::string, Tensor> finish(const Config&, const KernelArgs&,
                                              const WeightGrads& g) {
    return {{"weight_hh", g.dw1}};
  }
};

RNNKIT_REGISTER_FAMILY(ElmanFamily);

}  // namespace rnnkit
