// Elman recurrence: h' = act(xp + W_hh h), act = tanh or relu; xp = W_ih x + b_ih + b_hh.
#include "step_loop.h"

namespace rnnkit {

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
        st(relu ? at::vec::maximum(pre, zero) : fast_tanh<scalar_t>(pre), r.next, j, c);
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
