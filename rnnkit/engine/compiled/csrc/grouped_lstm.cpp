// Grouped LSTM (GLSTM, Kuchaiev & Ginsburg 2017) on the step-loop template, exactly as
// rnnkit.functional.grouped_lstm_step: N independent LSTMs on slices of the state.
// A gate row (4H wide) is group-major, [group 0: i f g o | group 1: i f g o | ...], each
// slice Hg = H / N wide; h and c (H wide each) are [group 0 | group 1 | ...]:
//   a_k = xp_k + h_k W_hh[k]^T          xp = per-group W_ih x + b_ih + b_hh (caller)
//   c'_k = sig(f) c_k + sig(i) tanh(g),  h'_k = sig(o) tanh(c'_k)
// The recurrent product is block diagonal (the template's `groups`: one GEMM per group on
// the group's slice of h, never a dense zero-padded 4H x H one), and the groups never mix,
// so the template runs each group's whole sequence on one thread (independent_groups).
#include "step_loop.h"

namespace rnnkit {

struct GroupedLstmFamily {
  static constexpr const char* kName = "grouped_lstm";
  static ArgNames names() { return {{"weight_hh"}, {}, {}}; }

  struct Config {
    int64_t G, Hg, H;
  };
  static Config config(const KernelArgs& a) {
    const Tensor& w = a.tensor("weight_hh");
    TORCH_CHECK(w.dim() == 3 && w.size(1) == 4 * w.size(2), a.kernel,
                ": weight_hh must be (groups, 4H/groups, H/groups), got ", w.sizes());
    return {w.size(0), w.size(2), w.size(0) * w.size(2)};
  }
  // Saved per row, group-major: [i f g o (4Hg) | tanh(c') (Hg)] of each group (5H).
  static StepLayout layout(const Config& c) {
    StepLayout L;
    L.X = L.N = 4 * c.H;
    L.K = L.out = c.H;
    L.SW = 2 * c.H;
    L.saved = 5 * c.H;
    L.groups = c.G;
    L.independent_groups = true;
    L.rec_grad_is_xp_grad = true;
    L.work = 5 * c.H;
    return L;
  }
  static void check(const Config& c, const KernelArgs& a, at::ScalarType dt, const char* k) {
    check_arg(k, "weight_hh", a.tensor("weight_hh"), {c.G, 4 * c.Hg, c.Hg}, dt);
  }
  // The template's block-diagonal GEMM reads (N, K / groups) = (4H, Hg): group q is rows
  // [4Hg q, 4Hg (q+1)), exactly weight_hh[q].
  static Tensor gemm1_weight(const Config& c, const KernelArgs& a) {
    return a.tensor("weight_hh").reshape({4 * c.H, c.Hg});
  }
  static Tensor gemm2_weight(const Config&, const KernelArgs&) { return Tensor(); }

  template <typename scalar_t>
  struct Forward : NoSecondGemmForward<scalar_t> {
    int64_t H, Hg;
    Forward(const Config& c, const KernelArgs&) : H(c.H), Hg(c.Hg) {}
    void phase1(const FwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const int64_t q = r.group, Hg = this->Hg;
      const scalar_t* x = r.x + q * 4 * Hg;
      const scalar_t* a = r.rec + q * 4 * Hg;
      const scalar_t* cp = r.prev + H + q * Hg;
      scalar_t* cn = r.next + H + q * Hg;
      scalar_t* hn = r.next + q * Hg;
      scalar_t* gr = r.saved + q * 5 * Hg;
      scalar_t* tc = gr + 4 * Hg;
      vloop<scalar_t>(Hg, [&](int64_t j, int64_t c) {
        const V i = vsigmoid(ld(x, j, c) + ld(a, j, c));
        const V f = vsigmoid(ld(x + Hg, j, c) + ld(a + Hg, j, c));
        const V g = vtanh(ld(x + 2 * Hg, j, c) + ld(a + 2 * Hg, j, c));
        const V o = vsigmoid(ld(x + 3 * Hg, j, c) + ld(a + 3 * Hg, j, c));
        const V cv = at::vec::fmadd(f, ld(cp, j, c), i * g);
        const V tcv = vtanh(cv);
        st(i, gr, j, c);
        st(f, gr + Hg, j, c);
        st(g, gr + 2 * Hg, j, c);
        st(o, gr + 3 * Hg, j, c);
        st(tcv, tc, j, c);
        st(cv, cn, j, c);
        st(o * tcv, hn, j, c);
      });
    }
  };

  template <typename scalar_t>
  struct Backward : NoSecondGemmBackward<scalar_t> {
    int64_t H, Hg;
    Backward(const Config& c, const KernelArgs&) : H(c.H), Hg(c.Hg) {}
    void phase1(const BwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const int64_t q = r.group, Hg = this->Hg;
      const V one(scalar_t(1));
      const scalar_t* dy = r.dy != nullptr ? r.dy + q * Hg : nullptr;
      scalar_t* dh = r.dstate + q * Hg;
      scalar_t* dc = r.dstate + H + q * Hg;
      const scalar_t* gr = r.saved + q * 5 * Hg;
      const scalar_t* tc = gr + 4 * Hg;
      const scalar_t* cp = r.prev + H + q * Hg;
      scalar_t* dg = r.dx + q * 4 * Hg;  // d gate pre-activations at their time position
      vloop<scalar_t>(Hg, [&](int64_t j, int64_t c) {
        V dm = ld(dh, j, c);
        if (dy != nullptr) dm = dm + ld(dy, j, c);
        const V i = ld(gr, j, c), f = ld(gr + Hg, j, c);
        const V g = ld(gr + 2 * Hg, j, c), o = ld(gr + 3 * Hg, j, c);
        const V tcv = ld(tc, j, c);
        const V d = at::vec::fmadd(dm * o, one - tcv * tcv, ld(dc, j, c));
        st(dm * tcv * o * (one - o), dg + 3 * Hg, j, c);
        st(d * g * i * (one - i), dg, j, c);
        st(d * ld(cp, j, c) * f * (one - f), dg + Hg, j, c);
        st(d * i * (one - g * g), dg + 2 * Hg, j, c);
        st(d * f, dc, j, c);
      });
      if (r.drec != r.dx) std::copy(dg, dg + 4 * Hg, r.drec + q * 4 * Hg);
      // This group's d h has been consumed; the template's GEMM adds d rec W_hh[q].
      std::fill(dh, dh + Hg, scalar_t(0));
    }
  };

  static std::map<std::string, Tensor> finish(const Config& c, const KernelArgs&,
                                              const WeightGrads& g) {
    return {{"weight_hh", g.dw1.reshape({c.G, 4 * c.Hg, c.Hg})}};
  }
};

RNNKIT_REGISTER_FAMILY(GroupedLstmFamily);

}  // namespace rnnkit
