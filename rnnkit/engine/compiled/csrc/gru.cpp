// GRU in both forms on the step-loop template, exactly as rnnkit.functional.gru_step (gate
// order r, z, n):
//   reset_after:  n = tanh(xp_n + r * (N_hh(W_hn h) + b_hn))        (torch.nn.GRU)
//   reset before: n = tanh(xp_n + N_hn(W_hn (r * h)) + b_hn)        (Cho et al., CNTK, TF1)
//   h' = n + z * (h - n),   xp = N_ih(W_ih x) + b_ih (caller); r/z get N_hh(W_h[rz] h) + b_h[rz]
// N_* is the identity, or with layer_norm a LayerNorm: over all 3H recurrent products
// (reset_after) or over the 2H r/z products plus a separate one over W_hn (r * h).
// reset_after: one GEMM per step (W_hh, 3H columns). Reset before: GEMM 1 is W_h[rz] h (2H),
// GEMM 2 is W_hn (r * h) (H), between the two pointwise phases.
#include "step_loop.h"

namespace rnnkit {

// LayerNorm of a GEMM output row in place, then + bias: the post-norm value.
template <typename scalar_t>
inline void norm_and_bias(scalar_t* row, scalar_t* xhat, scalar_t* rstd, const scalar_t* gamma,
                          const scalar_t* beta, const scalar_t* bias, int64_t n, double eps,
                          bool ln) {
  if (ln) *rstd = ln_row_forward(row, xhat, row, gamma, beta, n, eps);
  if (bias != nullptr) {
    vloop<scalar_t>(n, [&](int64_t j, int64_t c) { st(ld(row, j, c) + ld(bias, j, c), row, j, c); });
  }
}

template <typename scalar_t>
inline void add_row(scalar_t* acc, const scalar_t* v, int64_t n) {
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) { st(ld(acc, j, c) + ld(v, j, c), acc, j, c); });
}

struct GruFamily {
  static constexpr const char* kName = "gru";
  static ArgNames names() {
    return {{"weight_hh", "bias_hh", "ln_hh.weight", "ln_hh.bias", "ln_hn.weight", "ln_hn.bias"},
            {"eps_hh", "eps_hn"},
            {"reset_after", "layer_norm"}};
  }

  struct Config {
    int64_t H, NH;  // NH: width of the first product (3H reset_after, 2H before)
    bool reset_after, ln, bias;
    double eps_hh, eps_hn;
    // Saved per row: r z n aux (4H; aux = post-norm W_hn h + b_hn, or r * h), then with
    // layer norm xhat_hh (NH), rstd_hh (1), xhat_hn (H), rstd_hn (1) (reset before only).
    int64_t o_aux, o_xhh, o_rhh, o_xhn, o_rhn, saved;
    // Accumulators: db_hh (3H, layer norm with bias), ln_hh gamma/beta (NH each), ln_hn (H each)
    int64_t a_db, a_hh, a_hn, acc;
  };
  static Config config(const KernelArgs& a) {
    const Tensor& w = a.tensor("weight_hh");
    TORCH_CHECK(w.dim() == 2, a.kernel, ": weight_hh must be 2-D, got ", w.sizes());
    Config c;
    c.H = w.size(1);
    c.reset_after = a.flag("reset_after");
    c.ln = a.flag("layer_norm");
    c.bias = a.has("bias_hh");
    c.NH = c.reset_after ? 3 * c.H : 2 * c.H;
    c.eps_hh = c.ln ? a.number("eps_hh") : 0.0;
    c.eps_hn = c.ln && !c.reset_after ? a.number("eps_hn") : 0.0;
    const int64_t H = c.H;
    c.o_aux = 3 * H;
    int64_t o = 4 * H;
    c.o_xhh = o;
    if (c.ln) o += c.NH;
    c.o_rhh = o;
    if (c.ln) o += 1;
    c.o_xhn = o;
    if (c.ln && !c.reset_after) o += H;
    c.o_rhn = o;
    if (c.ln && !c.reset_after) o += 1;
    c.saved = o;
    int64_t q = 0;
    c.a_db = q;
    if (c.ln && c.bias) q += 3 * H;
    c.a_hh = q;
    if (c.ln) q += 2 * c.NH;
    c.a_hn = q;
    if (c.ln && !c.reset_after) q += 2 * H;
    c.acc = q;
    return c;
  }
  static StepLayout layout(const Config& c) {
    StepLayout L;
    L.X = 3 * c.H;
    L.SW = L.out = L.K = c.H;
    L.N = c.NH;
    L.saved = c.saved;
    if (!c.reset_after) {
      L.K2 = L.N2 = c.H;
      L.mid_off = c.o_aux;  // r * h
    }
    L.acc = c.acc;
    L.scratch = c.ln ? 3 * c.H : 0;
    L.work = 3 * c.H;
    L.reuse_buffers = true;
    return L;
  }
  static void check(const Config& c, const KernelArgs& a, at::ScalarType dt, const char* k) {
    const int64_t H = c.H;
    check_arg(k, "weight_hh", a.tensor("weight_hh"), {3 * H, H}, dt);
    if (c.bias) check_arg(k, "bias_hh", a.tensor("bias_hh"), {3 * H}, dt);
    if (c.ln) {
      check_arg(k, "ln_hh.weight", a.tensor("ln_hh.weight"), {c.NH}, dt);
      if (a.has("ln_hh.bias")) check_arg(k, "ln_hh.bias", a.tensor("ln_hh.bias"), {c.NH}, dt);
      if (!c.reset_after) {
        check_arg(k, "ln_hn.weight", a.tensor("ln_hn.weight"), {H}, dt);
        if (a.has("ln_hn.bias")) check_arg(k, "ln_hn.bias", a.tensor("ln_hn.bias"), {H}, dt);
      }
    }
  }
  static Tensor gemm1_weight(const Config& c, const KernelArgs& a) {
    const Tensor& w = a.tensor("weight_hh");
    return c.reset_after ? w : w.narrow(0, 0, 2 * c.H);
  }
  static Tensor gemm2_weight(const Config& c, const KernelArgs& a) {
    return c.reset_after ? Tensor() : a.tensor("weight_hh").narrow(0, 2 * c.H, c.H);
  }

  template <typename scalar_t>
  struct Params {
    Config c;
    const scalar_t *bias, *bias_n, *g_hh, *be_hh, *g_hn, *be_hn;
    Params(const Config& cfg, const KernelArgs& a)
        : c(cfg),
          bias(ptr_or_null<scalar_t>(a.optional("bias_hh"))),
          bias_n(bias != nullptr ? bias + 2 * cfg.H : nullptr),
          g_hh(ptr_or_null<scalar_t>(a.optional("ln_hh.weight"))),
          be_hh(ptr_or_null<scalar_t>(a.optional("ln_hh.bias"))),
          g_hn(ptr_or_null<scalar_t>(a.optional("ln_hn.weight"))),
          be_hn(ptr_or_null<scalar_t>(a.optional("ln_hn.bias"))) {}
  };

  template <typename scalar_t>
  struct Forward : Params<scalar_t> {
    using Params<scalar_t>::Params;
    // reset_after: everything. Reset before: r, z and r * h (GEMM 2 needs r * h).
    void phase1(const FwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const Config& c = this->c;
      const int64_t H = c.H;
      scalar_t* sv = r.saved;
      norm_and_bias(r.rec, c.ln ? sv + c.o_xhh : nullptr, c.ln ? sv + c.o_rhh : nullptr,
                    this->g_hh, this->be_hh, this->bias, c.NH, c.eps_hh, c.ln);
      const scalar_t* x = r.x;
      const scalar_t* a = r.rec;
      if (c.reset_after) {
        vloop<scalar_t>(H, [&](int64_t j, int64_t k) {
          const V rg = vsigmoid(ld(x, j, k) + ld(a, j, k));
          const V z = vsigmoid(ld(x + H, j, k) + ld(a + H, j, k));
          const V hn = ld(a + 2 * H, j, k);
          const V n = vtanh(at::vec::fmadd(rg, hn, ld(x + 2 * H, j, k)));
          st(rg, sv, j, k);
          st(z, sv + H, j, k);
          st(n, sv + 2 * H, j, k);
          st(hn, sv + c.o_aux, j, k);
          st(at::vec::fmadd(z, ld(r.prev, j, k) - n, n), r.next, j, k);
        });
      } else {
        vloop<scalar_t>(H, [&](int64_t j, int64_t k) {
          const V rg = vsigmoid(ld(x, j, k) + ld(a, j, k));
          const V z = vsigmoid(ld(x + H, j, k) + ld(a + H, j, k));
          st(rg, sv, j, k);
          st(z, sv + H, j, k);
          st(rg * ld(r.prev, j, k), sv + c.o_aux, j, k);
        });
      }
    }
    // Reset before: n and h' from W_hn (r * h).
    void phase2(const FwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const Config& c = this->c;
      const int64_t H = c.H;
      scalar_t* sv = r.saved;
      norm_and_bias(r.rec2, c.ln ? sv + c.o_xhn : nullptr, c.ln ? sv + c.o_rhn : nullptr,
                    this->g_hn, this->be_hn, this->bias_n, H, c.eps_hn, c.ln);
      vloop<scalar_t>(H, [&](int64_t j, int64_t k) {
        const V z = ld(sv + H, j, k);
        const V n = vtanh(ld(r.x + 2 * H, j, k) + ld(r.rec2, j, k));
        st(n, sv + 2 * H, j, k);
        st(at::vec::fmadd(z, ld(r.prev, j, k) - n, n), r.next, j, k);
      });
    }
  };

  template <typename scalar_t>
  struct Backward : Params<scalar_t> {
    using Params<scalar_t>::Params;
    // z and n (both forms): d xp for z and n, the direct d h = d z; reset before also
    // d rec2 (through ln_hn's backward).
    void phase2(const BwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const Config& c = this->c;
      const int64_t H = c.H;
      const V one(scalar_t(1));
      const scalar_t* sv = r.saved;
      vloop<scalar_t>(H, [&](int64_t j, int64_t k) {
        V d = ld(r.dstate, j, k);
        if (r.dy != nullptr) d = d + ld(r.dy, j, k);
        const V z = ld(sv + H, j, k), n = ld(sv + 2 * H, j, k);
        const V dnpre = d * (one - z) * (one - n * n);
        const V dzpre = d * (ld(r.prev, j, k) - n) * z * (one - z);
        st(d * z, r.dstate, j, k);
        st(dnpre, r.dx + 2 * H, j, k);
        st(dzpre, r.dx + H, j, k);
        if (r.drec2 != nullptr) st(dnpre, r.drec2, j, k);
      });
      if (c.reset_after || !c.ln) return;
      if (this->bias != nullptr) add_row(r.acc + c.a_db + 2 * H, r.drec2, H);
      scalar_t* ahn = r.acc + c.a_hn;
      ln_row_backward(r.drec2, sv + c.o_xhn, sv[c.o_rhn], this->g_hn, r.drec2, ahn, ahn + H,
                      r.scratch, H);
    }
    // r (both forms) and the gradients of GEMM 1's output.
    void phase1(const BwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const Config& c = this->c;
      const int64_t H = c.H;
      const V one(scalar_t(1));
      const scalar_t* sv = r.saved;
      if (c.reset_after) phase2(r);  // z, n: one GEMM, so phase 2 never ran
      vloop<scalar_t>(H, [&](int64_t j, int64_t k) {
        const V rg = ld(sv, j, k);
        const V dzpre = ld(r.dx + H, j, k);
        if (c.reset_after) {
          const V dnpre = ld(r.dx + 2 * H, j, k);
          const V drpre = dnpre * ld(sv + c.o_aux, j, k) * rg * (one - rg);
          st(drpre, r.dx, j, k);
          st(drpre, r.drec, j, k);
          st(dzpre, r.drec + H, j, k);
          st(dnpre * rg, r.drec + 2 * H, j, k);
        } else {
          const V drh = ld(r.dmid, j, k);  // d (r * h) = d rec2 W_hn
          const V drpre = drh * ld(r.prev, j, k) * rg * (one - rg);
          st(at::vec::fmadd(drh, rg, ld(r.dstate, j, k)), r.dstate, j, k);
          st(drpre, r.dx, j, k);
          st(drpre, r.drec, j, k);
          st(dzpre, r.drec + H, j, k);
        }
      });
      if (!c.ln) return;
      if (this->bias != nullptr) add_row(r.acc + c.a_db, r.drec, c.NH);
      scalar_t* ahh = r.acc + c.a_hh;
      ln_row_backward(r.drec, sv + c.o_xhh, sv[c.o_rhh], this->g_hh, r.drec, ahh, ahh + c.NH,
                      r.scratch, c.NH);
    }
  };

  static std::map<std::string, Tensor> finish(const Config& c, const KernelArgs& a,
                                              const WeightGrads& g) {
    std::map<std::string, Tensor> out;
    const int64_t H = c.H;
    out["weight_hh"] = c.reset_after ? g.dw1 : at::cat({g.dw1, g.dw2}, 0);
    if (c.bias) {
      if (c.ln) {
        out["bias_hh"] = g.acc.narrow(0, c.a_db, 3 * H);
      } else {
        out["bias_hh"] = c.reset_after ? g.drec.sum(0)
                                       : at::cat({g.drec.sum(0), g.drec2.sum(0)}, 0);
      }
    }
    if (c.ln) {
      out["ln_hh.weight"] = g.acc.narrow(0, c.a_hh, c.NH);
      if (a.has("ln_hh.bias")) out["ln_hh.bias"] = g.acc.narrow(0, c.a_hh + c.NH, c.NH);
      if (!c.reset_after) {
        out["ln_hn.weight"] = g.acc.narrow(0, c.a_hn, H);
        if (a.has("ln_hn.bias")) out["ln_hn.bias"] = g.acc.narrow(0, c.a_hn + H, H);
      }
    }
    return out;
  }
};

RNNKIT_REGISTER_FAMILY(GruFamily);

}  // namespace rnnkit
