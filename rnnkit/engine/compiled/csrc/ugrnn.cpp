// UGRNN (Collins et al. 2017, TF1 tf.contrib.rnn.UGRNNCell), as rnnkit.functional.ugrnn_step:
//   [a_g; a_c] = xp + W_hh h        xp = W_ih x + b (caller)
//   g = sig(a_g + forget_bias),  c = tanh(a_c),  h' = g h + (1 - g) c
#include "step_loop.h"

namespace rnnkit {

struct UgrnnFamily {
  static constexpr const char* kName = "ugrnn";
  static ArgNames names() { return {{"weight_hh"}, {"forget_bias"}, {}}; }

  struct Config {
    int64_t H;
    double forget_bias;
  };
  static Config config(const KernelArgs& a) {
    const Tensor& w = a.tensor("weight_hh");
    TORCH_CHECK(w.dim() == 2, a.kernel, ": weight_hh must be 2-D, got ", w.sizes());
    return {w.size(1), a.number("forget_bias")};
  }
  // Saved per row: g then c (2H).
  static StepLayout layout(const Config& c) {
    StepLayout L;
    L.X = L.N = 2 * c.H;
    L.SW = L.out = L.K = c.H;
    L.saved = 2 * c.H;
    L.rec_grad_is_xp_grad = true;
    L.work = 2 * c.H;
    return L;
  }
  static void check(const Config& c, const KernelArgs& a, at::ScalarType dt, const char* k) {
    check_arg(k, "weight_hh", a.tensor("weight_hh"), {2 * c.H, c.H}, dt);
  }
  static Tensor gemm1_weight(const Config&, const KernelArgs& a) { return a.tensor("weight_hh"); }
  static Tensor gemm2_weight(const Config&, const KernelArgs&) { return Tensor(); }

  template <typename scalar_t>
  struct Forward : NoSecondGemmForward<scalar_t> {
    int64_t H;
    scalar_t fb;
    Forward(const Config& c, const KernelArgs&) : H(c.H), fb(scalar_t(c.forget_bias)) {}
    void phase1(const FwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const V one(scalar_t(1)), vfb(fb);
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        const V g = vsigmoid((ld(r.x, j, c) + ld(r.rec, j, c)) + vfb);
        const V cand = vtanh(ld(r.x + H, j, c) + ld(r.rec + H, j, c));
        const V h = ld(r.prev, j, c);
        st(g * h + (one - g) * cand, r.next, j, c);
        st(g, r.saved, j, c);
        st(cand, r.saved + H, j, c);
      });
    }
  };

  template <typename scalar_t>
  struct Backward : NoSecondGemmBackward<scalar_t> {
    int64_t H;
    Backward(const Config& c, const KernelArgs&) : H(c.H) {}
    void phase1(const BwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const V one(scalar_t(1));
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        V d = ld(r.dstate, j, c);
        if (r.dy != nullptr) d = d + ld(r.dy, j, c);
        const V g = ld(r.saved, j, c), cand = ld(r.saved + H, j, c), h = ld(r.prev, j, c);
        const V dg = d * (h - cand) * g * (one - g);
        const V dc = d * (one - g) * (one - cand * cand);
        st(dg, r.drec, j, c);
        st(dc, r.drec + H, j, c);
        if (r.dx != r.drec) {
          st(dg, r.dx, j, c);
          st(dc, r.dx + H, j, c);
        }
        st(d * g, r.dstate, j, c);  // direct path h -> h'; the template adds d rec W_hh
      });
    }
  };

  static std::map<std::string, Tensor> finish(const Config&, const KernelArgs&,
                                              const WeightGrads& g) {
    return {{"weight_hh", g.dw1}};
  }
};

RNNKIT_REGISTER_FAMILY(UgrnnFamily);

}  // namespace rnnkit
