// LSTM family on the step-loop template: plain, peepholes, coupled gates (i = 1 - f),
// projection, cell clip and layer normalisation (ln_hh on W_hh h, ln_c on the new cell
// state), exactly as rnnkit.functional.lstm_step:
//   a = xp + LN_hh(W_hh h)                         xp = LN_ih(W_ih x) + b_ih + b_hh (caller)
//   f = sig(a_f + w_cf c), i = sig(a_i + w_ci c) or 1 - f, g = tanh(a_g)
//   c' = clip(LN_c(f c + i g)),  o = sig(a_o + w_co c'),  m = o tanh(c'),  h' = W_hr m or m
// The carried state is [h (Hout) | c (H)]; with a projection, GEMM 2 is m W_hr^T.
#include "step_loop.h"

namespace rnnkit {

struct LstmFamily {
  static constexpr const char* kName = "lstm";
  static ArgNames names() {
    return {{"weight_hh", "weight_hr", "weight_ci", "weight_cf", "weight_co", "ln_hh.weight",
             "ln_hh.bias", "ln_c.weight", "ln_c.bias"},
            {"cell_clip", "eps_hh", "eps_c"},
            {"coupled_gates", "peepholes", "layer_norm"}};
  }

  struct Config {
    int64_t G, H, GH, Hout;
    bool coupled, peep, ln, clip_on, proj;
    double clip, eps_hh, eps_c;
    int64_t oi, of, og, oo;  // gate slices in a G*H row (oi unused when coupled)
    // Saved per row: gates (GH), tanh(c') (H), m (H, projection), c' before the clip (H,
    // clip), xhat_hh (GH) and rstd_hh (1), xhat_c (H) and rstd_c (1) (layer norm).
    int64_t o_tc, o_m, o_cpre, o_xhh, o_rhh, o_xc, o_rc, saved;
    // Accumulators: peepholes ci, cf, co (3H); ln_hh gamma, beta (2 GH); ln_c (2H).
    int64_t a_peep, a_hh, a_c, acc;
  };
  static Config config(const KernelArgs& a) {
    const Tensor& w = a.tensor("weight_hh");
    TORCH_CHECK(w.dim() == 2, a.kernel, ": weight_hh must be 2-D, got ", w.sizes());
    Config c;
    c.coupled = a.flag("coupled_gates");
    c.peep = a.flag("peepholes");
    c.ln = a.flag("layer_norm");
    c.G = c.coupled ? 3 : 4;
    TORCH_CHECK(w.size(0) % c.G == 0, a.kernel, ": weight_hh has ", w.size(0),
                " rows, not a multiple of ", c.G, " gates");
    c.H = w.size(0) / c.G;
    c.GH = c.G * c.H;
    c.Hout = w.size(1);
    c.proj = a.has("weight_hr");
    c.clip = a.number("cell_clip");
    c.clip_on = c.clip > 0;
    c.eps_hh = c.ln ? a.number("eps_hh") : 0.0;
    c.eps_c = c.ln ? a.number("eps_c") : 0.0;
    const int64_t H = c.H;
    if (c.coupled) {
      c.oi = -1; c.of = 0; c.og = H; c.oo = 2 * H;
    } else {
      c.oi = 0; c.of = H; c.og = 2 * H; c.oo = 3 * H;
    }
    int64_t o = c.GH;
    c.o_tc = o; o += H;
    c.o_m = o; if (c.proj) o += H;
    c.o_cpre = o; if (c.clip_on) o += H;
    c.o_xhh = o; if (c.ln) o += c.GH;
    c.o_rhh = o; if (c.ln) o += 1;
    c.o_xc = o; if (c.ln) o += H;
    c.o_rc = o; if (c.ln) o += 1;
    c.saved = o;
    int64_t q = 0;
    c.a_peep = q; if (c.peep) q += 3 * H;
    c.a_hh = q; if (c.ln) q += 2 * c.GH;
    c.a_c = q; if (c.ln) q += 2 * H;
    c.acc = q;
    return c;
  }
  static StepLayout layout(const Config& c) {
    StepLayout L;
    L.X = L.N = c.GH;
    L.K = L.out = c.Hout;
    L.SW = c.Hout + c.H;
    L.saved = c.saved;
    L.rec_grad_is_xp_grad = !c.ln;
    if (c.proj) {
      L.K2 = c.H;
      L.N2 = c.Hout;
      L.mid_off = c.o_m;
    }
    L.acc = c.acc;
    L.scratch = c.H + c.GH;
    L.work = c.GH + c.H;
    L.reuse_buffers = true;
    return L;
  }
  static void check(const Config& c, const KernelArgs& a, at::ScalarType dt, const char* k) {
    const int64_t H = c.H;
    check_arg(k, "weight_hh", a.tensor("weight_hh"), {c.GH, c.Hout}, dt);
    if (c.proj) check_arg(k, "weight_hr", a.tensor("weight_hr"), {c.Hout, H}, dt);
    if (c.peep) {
      if (!c.coupled) check_arg(k, "weight_ci", a.tensor("weight_ci"), {H}, dt);
      check_arg(k, "weight_cf", a.tensor("weight_cf"), {H}, dt);
      check_arg(k, "weight_co", a.tensor("weight_co"), {H}, dt);
    }
    if (c.ln) {
      check_arg(k, "ln_hh.weight", a.tensor("ln_hh.weight"), {c.GH}, dt);
      check_arg(k, "ln_hh.bias", a.tensor("ln_hh.bias"), {c.GH}, dt);
      check_arg(k, "ln_c.weight", a.tensor("ln_c.weight"), {H}, dt);
      check_arg(k, "ln_c.bias", a.tensor("ln_c.bias"), {H}, dt);
    }
  }
  static Tensor gemm1_weight(const Config&, const KernelArgs& a) { return a.tensor("weight_hh"); }
  static Tensor gemm2_weight(const Config& c, const KernelArgs& a) {
    return c.proj ? a.tensor("weight_hr") : Tensor();
  }

  template <typename scalar_t>
  struct Params {
    Config c;
    const scalar_t *wci, *wcf, *wco, *ghh, *bhh, *gc, *bc;
    Params(const Config& cfg, const KernelArgs& a)
        : c(cfg),
          wci(cfg.peep && !cfg.coupled ? ptr_or_null<scalar_t>(a.optional("weight_ci")) : nullptr),
          wcf(cfg.peep ? ptr_or_null<scalar_t>(a.optional("weight_cf")) : nullptr),
          wco(cfg.peep ? ptr_or_null<scalar_t>(a.optional("weight_co")) : nullptr),
          ghh(cfg.ln ? ptr_or_null<scalar_t>(a.optional("ln_hh.weight")) : nullptr),
          bhh(cfg.ln ? ptr_or_null<scalar_t>(a.optional("ln_hh.bias")) : nullptr),
          gc(cfg.ln ? ptr_or_null<scalar_t>(a.optional("ln_c.weight")) : nullptr),
          bc(cfg.ln ? ptr_or_null<scalar_t>(a.optional("ln_c.bias")) : nullptr) {}
  };

  template <typename scalar_t>
  struct Forward : Params<scalar_t> {
    using Params<scalar_t>::Params;
    void phase1(const FwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const Config& k = this->c;
      const int64_t H = k.H;
      const V one(scalar_t(1)), vclip(scalar_t(k.clip)), vnclip(scalar_t(-k.clip));
      scalar_t* sv = r.saved;
      const scalar_t* cp = r.prev + k.Hout;
      scalar_t* cn = r.next + k.Hout;
      const scalar_t* x = r.x;
      scalar_t* a = r.rec;  // recurrent part, becomes LN_hh(...) in place
      if (k.ln) sv[k.o_rhh] = ln_row_forward(a, sv + k.o_xhh, a, this->ghh, this->bhh, k.GH, k.eps_hh);
      scalar_t* gr = sv;
      const scalar_t *wci = this->wci, *wcf = this->wcf, *wco = this->wco;
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        const V cpv = ld(cp, j, c);
        V fpre = ld(x + k.of, j, c) + ld(a + k.of, j, c);
        if (wcf != nullptr) fpre = at::vec::fmadd(ld(wcf, j, c), cpv, fpre);
        const V f = vsigmoid(fpre);
        V i;
        if (k.coupled) {
          i = one - f;
        } else {
          V ipre = ld(x + k.oi, j, c) + ld(a + k.oi, j, c);
          if (wci != nullptr) ipre = at::vec::fmadd(ld(wci, j, c), cpv, ipre);
          i = vsigmoid(ipre);
          st(i, gr + k.oi, j, c);
        }
        const V g = vtanh(ld(x + k.og, j, c) + ld(a + k.og, j, c));
        st(f, gr + k.of, j, c);
        st(g, gr + k.og, j, c);
        st(at::vec::fmadd(f, cpv, i * g), cn, j, c);
      });
      if (k.ln) sv[k.o_rc] = ln_row_forward(cn, sv + k.o_xc, cn, this->gc, this->bc, H, k.eps_c);
      if (k.clip_on) {
        std::copy(cn, cn + H, sv + k.o_cpre);
        vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
          st(at::vec::clamp(ld(cn, j, c), vnclip, vclip), cn, j, c);
        });
      }
      scalar_t* dst = k.proj ? sv + k.o_m : r.next;
      scalar_t* tcr = sv + k.o_tc;
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        const V cv = ld(cn, j, c);
        V opre = ld(x + k.oo, j, c) + ld(a + k.oo, j, c);
        if (wco != nullptr) opre = at::vec::fmadd(ld(wco, j, c), cv, opre);
        const V o = vsigmoid(opre);
        const V tc = vtanh(cv);
        st(o, gr + k.oo, j, c);
        st(tc, tcr, j, c);
        st(o * tc, dst, j, c);
      });
    }
    // Projection: h' = m W_hr^T, computed by GEMM 2 into rec2.
    void phase2(const FwdRow<scalar_t>& r) const {
      std::copy(r.rec2, r.rec2 + this->c.Hout, r.next);
    }
  };

  template <typename scalar_t>
  struct Backward : Params<scalar_t> {
    using Params<scalar_t>::Params;
    // Projection: d h' (+ d output) is d rec2; nothing flows to h directly.
    void phase2(const BwdRow<scalar_t>& r) const {
      const int64_t P = this->c.Hout;
      for (int64_t j = 0; j < P; ++j) {
        r.drec2[j] = r.dstate[j] + (r.dy != nullptr ? r.dy[j] : scalar_t(0));
      }
      std::fill(r.dstate, r.dstate + P, scalar_t(0));
    }
    void phase1(const BwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const Config& k = this->c;
      const int64_t H = k.H;
      const V one(scalar_t(1)), zero(scalar_t(0)), vclip(scalar_t(k.clip));
      const scalar_t* sv = r.saved;
      const scalar_t* gr = sv;
      const scalar_t* cp = r.prev + k.Hout;
      const scalar_t* cn = r.next + k.Hout;
      const scalar_t* tc = sv + k.o_tc;
      const scalar_t* cpre = k.clip_on ? sv + k.o_cpre : nullptr;
      scalar_t* dg = r.dx;  // d gate pre-activations land at their time position
      scalar_t* dhrow = r.dstate;
      scalar_t* dcrow = r.dstate + k.Hout;
      scalar_t* dcv = r.scratch;
      scalar_t* tmp = r.scratch + H;
      scalar_t* ap = k.peep ? r.acc + k.a_peep : nullptr;
      const scalar_t *wci = this->wci, *wcf = this->wcf, *wco = this->wco;
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        V dmv;
        if (k.proj) {
          dmv = ld(r.dmid, j, c);
        } else {
          dmv = ld(dhrow, j, c);
          if (r.dy != nullptr) dmv = dmv + ld(r.dy, j, c);
        }
        const V o = ld(gr + k.oo, j, c);
        const V tcv = ld(tc, j, c);
        const V dopre = dmv * tcv * o * (one - o);
        V d = at::vec::fmadd(dmv * o, one - tcv * tcv, ld(dcrow, j, c));
        if (wco != nullptr) {
          d = at::vec::fmadd(dopre, ld(wco, j, c), d);
          st(at::vec::fmadd(dopre, ld(cn, j, c), ld(ap + 2 * H, j, c)), ap + 2 * H, j, c);
        }
        if (cpre != nullptr) {
          const V cpv = ld(cpre, j, c);
          const auto inside = (cpv <= vclip) & (cpv >= vclip.neg());
          d = V::blendv(zero, d, inside);
        }
        st(dopre, dg + k.oo, j, c);
        st(d, dcv, j, c);
      });
      if (k.ln) {
        scalar_t* ac = r.acc + k.a_c;
        ln_row_backward(dcv, sv + k.o_xc, sv[k.o_rc], this->gc, dcv, ac, ac + H, tmp, H);
      }
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        const V d = ld(dcv, j, c);
        const V cpv = ld(cp, j, c);
        const V f = ld(gr + k.of, j, c);
        const V g = ld(gr + k.og, j, c);
        const V i = k.coupled ? one - f : ld(gr + k.oi, j, c);
        const V di = d * g;
        V df = d * cpv;
        if (k.coupled) df = df - di;
        const V dfpre = df * f * (one - f);
        const V dgpre = d * i * (one - g * g);
        V dcp = d * f;
        if (wcf != nullptr) {
          dcp = at::vec::fmadd(dfpre, ld(wcf, j, c), dcp);
          st(at::vec::fmadd(dfpre, cpv, ld(ap + H, j, c)), ap + H, j, c);
        }
        if (!k.coupled) {
          const V dipre = di * i * (one - i);
          if (wci != nullptr) {
            dcp = at::vec::fmadd(dipre, ld(wci, j, c), dcp);
            st(at::vec::fmadd(dipre, cpv, ld(ap, j, c)), ap, j, c);
          }
          st(dipre, dg + k.oi, j, c);
        }
        st(dfpre, dg + k.of, j, c);
        st(dgpre, dg + k.og, j, c);
        st(dcp, dcrow, j, c);
      });
      if (k.ln) {
        scalar_t* ah = r.acc + k.a_hh;
        ln_row_backward(dg, sv + k.o_xhh, sv[k.o_rhh], this->ghh, r.drec, ah, ah + k.GH, tmp,
                        k.GH);
      } else if (r.drec != dg) {
        std::copy(dg, dg + k.GH, r.drec);
      }
      // This row's d h has been consumed; the template's GEMM adds d rec W_hh.
      if (!k.proj) std::fill(dhrow, dhrow + k.Hout, scalar_t(0));
    }
  };

  static std::map<std::string, Tensor> finish(const Config& c, const KernelArgs&,
                                              const WeightGrads& g) {
    std::map<std::string, Tensor> out;
    const int64_t H = c.H;
    out["weight_hh"] = g.dw1;
    if (c.proj) out["weight_hr"] = g.dw2;
    if (c.peep) {
      if (!c.coupled) out["weight_ci"] = g.acc.narrow(0, c.a_peep, H);
      out["weight_cf"] = g.acc.narrow(0, c.a_peep + H, H);
      out["weight_co"] = g.acc.narrow(0, c.a_peep + 2 * H, H);
    }
    if (c.ln) {
      out["ln_hh.weight"] = g.acc.narrow(0, c.a_hh, c.GH);
      out["ln_hh.bias"] = g.acc.narrow(0, c.a_hh + c.GH, c.GH);
      out["ln_c.weight"] = g.acc.narrow(0, c.a_c, H);
      out["ln_c.bias"] = g.acc.narrow(0, c.a_c + H, H);
    }
    return out;
  }
};

RNNKIT_REGISTER_FAMILY(LstmFamily);

}  // namespace rnnkit
