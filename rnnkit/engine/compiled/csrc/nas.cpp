// NAS cell (Zoph & Le 2017) on the step-loop template, exactly as rnnkit.functional.nas_step
// (TF1 contrib NASCell). Eight branches k = 0..7, each H wide: u^k = W_ih^k x (caller,
// hoisted, no bias) and v^k = W_hh^k h + b^k (GEMM 1 plus the bias here); they stay apart
// because branch 3 multiplies them:
//   l0 = sig(u0+v0)  l1 = relu(u1+v1)  l2 = sig(u2+v2)  l3 = relu(u3*v3)
//   l4 = tanh(u4+v4) l5 = sig(u5+v5)   l6 = tanh(u6+v6) l7 = sig(u7+v7)
//   t = tanh(l0*l1)  m0 = tanh(t + c)  m1 = tanh(l2+l3)  m2 = tanh(l4*l5)  m3 = sig(l6+l7)
//   c' = m0*m1,  q = tanh(m2+m3),  m = tanh(c'*q),  h' = W_hr m (proj_size, GEMM 2) or m
// The carried state is [h (Hout) | c (H)].
#include "step_loop.h"

namespace rnnkit {

struct NasFamily {
  static constexpr const char* kName = "nas";
  static ArgNames names() { return {{"weight_hh", "bias_hh", "weight_hr"}, {}, {}}; }

  // Saved per row: l0 l1 l2 u3 v3 l4 l5 l6 l7 (9H; branch 3 keeps both factors, v3 with its
  // bias), and m (H) with a projection (GEMM 2's input). The backward recomputes t, m0..m3
  // and q from these and c (the states the template keeps), with the same vector code, so
  // the recomputed values are the forward's bit for bit: saving them too (15H a row) cost
  // a 63 MB buffer per training call at B=32, H=256, T=128, written once and read once.
  enum Slot { kL0 = 0, kL1, kL2, kU3, kV3, kL4, kL5, kL6, kL7, kM };
  struct Config {
    int64_t H, Hout;
    bool proj, bias;
  };
  static Config config(const KernelArgs& a) {
    const Tensor& w = a.tensor("weight_hh");
    TORCH_CHECK(w.dim() == 2 && w.size(0) % 8 == 0, a.kernel,
                ": weight_hh must be (8H, H_out), got ", w.sizes());
    return {w.size(0) / 8, w.size(1), a.has("weight_hr"), a.has("bias_hh")};
  }
  static StepLayout layout(const Config& c) {
    StepLayout L;
    L.X = L.N = 8 * c.H;
    L.K = L.out = c.Hout;
    L.SW = c.Hout + c.H;
    L.saved = (c.proj ? kM + 1 : kM) * c.H;
    if (c.proj) {
      L.K2 = c.H;
      L.N2 = c.Hout;
      L.mid_off = kM * c.H;
    }
    L.work = 8 * c.H;
    L.reuse_buffers = true;
    return L;
  }
  static void check(const Config& c, const KernelArgs& a, at::ScalarType dt, const char* k) {
    check_arg(k, "weight_hh", a.tensor("weight_hh"), {8 * c.H, c.Hout}, dt);
    if (c.bias) check_arg(k, "bias_hh", a.tensor("bias_hh"), {8 * c.H}, dt);
    if (c.proj) check_arg(k, "weight_hr", a.tensor("weight_hr"), {c.Hout, c.H}, dt);
    TORCH_CHECK(c.proj || c.Hout == c.H, k, ": weight_hh has ", c.Hout,
                " columns, expected the hidden size ", c.H, " without a projection");
  }
  static Tensor gemm1_weight(const Config&, const KernelArgs& a) { return a.tensor("weight_hh"); }
  static Tensor gemm2_weight(const Config& c, const KernelArgs& a) {
    return c.proj ? a.tensor("weight_hr") : Tensor();
  }

  template <typename scalar_t>
  struct Params {
    Config c;
    const scalar_t* bias;
    Params(const Config& cfg, const KernelArgs& a)
        : c(cfg), bias(cfg.bias ? ptr_or_null<scalar_t>(a.optional("bias_hh")) : nullptr) {}
  };

  // The second layer of the cell from the branch values l0..l7 and c: t, m0..m3 and q. One
  // function for the forward and the backward's recomputation, so both get the same values.
  template <typename scalar_t>
  struct Mixed {
    Vec<scalar_t> tt, m0, m1, m2, m3, q;
    Mixed(const Vec<scalar_t>* l, const Vec<scalar_t>& c)
        : tt(fast_tanh(l[0] * l[1])),
          m0(fast_tanh(tt + c)),
          m1(fast_tanh(l[2] + l[3])),
          m2(fast_tanh(l[4] * l[5])),
          m3(vsigmoid(l[6] + l[7])),
          q(fast_tanh(m2 + m3)) {}
  };

  template <typename scalar_t>
  struct Forward : Params<scalar_t> {
    using Params<scalar_t>::Params;
    void phase1(const FwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const int64_t H = this->c.H;
      const V zero(scalar_t(0));
      const scalar_t* u = r.x;
      const scalar_t* v = r.rec;
      const scalar_t* bias = this->bias;
      scalar_t* sv = r.saved;
      const scalar_t* cp = r.prev + this->c.Hout;
      scalar_t* cn = r.next + this->c.Hout;
      scalar_t* m = this->c.proj ? sv + kM * H : r.next;
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        auto vk = [&](int64_t k) {
          const V raw = ld(v + k * H, j, c);
          return bias != nullptr ? raw + ld(bias + k * H, j, c) : raw;
        };
        auto uk = [&](int64_t k) { return ld(u + k * H, j, c); };
        const V l0 = vsigmoid(uk(0) + vk(0));
        const V l1 = at::vec::maximum(uk(1) + vk(1), zero);
        const V l2 = vsigmoid(uk(2) + vk(2));
        const V u3 = uk(3), v3 = vk(3);
        const V l3 = at::vec::maximum(u3 * v3, zero);
        const V l4 = fast_tanh(uk(4) + vk(4));
        const V l5 = vsigmoid(uk(5) + vk(5));
        const V l6 = fast_tanh(uk(6) + vk(6));
        const V l7 = vsigmoid(uk(7) + vk(7));
        const V l[8] = {l0, l1, l2, l3, l4, l5, l6, l7};
        const Mixed<scalar_t> mx(l, ld(cp, j, c));
        const V cv = mx.m0 * mx.m1;
        const V values[kM] = {l0, l1, l2, u3, v3, l4, l5, l6, l7};
        for (int64_t k = 0; k < kM; ++k) st(values[k], sv + k * H, j, c);
        st(cv, cn, j, c);
        st(fast_tanh(cv * mx.q), m, j, c);
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
      const V one(scalar_t(1)), zero(scalar_t(0));
      const scalar_t* sv = r.saved;
      const scalar_t* mrow = k.proj ? sv + kM * H : r.next;
      const scalar_t* cn = r.next + k.Hout;
      const scalar_t* cprev = r.prev + k.Hout;
      scalar_t* dhrow = r.dstate;
      scalar_t* dcrow = r.dstate + k.Hout;
      scalar_t* du = r.dx;
      scalar_t* dv = r.drec;
      auto s = [&](int64_t slot, int64_t j, int64_t c) { return ld(sv + slot * H, j, c); };
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        V dmv;
        if (k.proj) {
          dmv = ld(r.dmid, j, c);
        } else {
          dmv = ld(dhrow, j, c);
          if (r.dy != nullptr) dmv = dmv + ld(r.dy, j, c);
        }
        const V l0 = s(kL0, j, c), l1 = s(kL1, j, c), l2 = s(kL2, j, c);
        const V u3 = s(kU3, j, c), v3 = s(kV3, j, c), l4 = s(kL4, j, c);
        const V l5 = s(kL5, j, c), l6 = s(kL6, j, c), l7 = s(kL7, j, c);
        const V p3 = u3 * v3;
        const V l[8] = {l0, l1, l2, at::vec::maximum(p3, zero), l4, l5, l6, l7};
        const Mixed<scalar_t> mx(l, ld(cprev, j, c));  // the forward's t, m0..m3, q
        const V &m0 = mx.m0, &m1 = mx.m1, &m2 = mx.m2, &m3 = mx.m3, &q = mx.q, &tt = mx.tt;
        const V mv = ld(mrow, j, c), cv = ld(cn, j, c);
        const V dz = dmv * (one - mv * mv);          // m = tanh(c' q)
        const V dcn = at::vec::fmadd(dz, q, ld(dcrow, j, c));
        const V dr = dz * cv * (one - q * q);        // q = tanh(m2 + m3)
        const V dy0 = dcn * m1 * (one - m0 * m0);    // m0 = tanh(t + c)
        const V dp01 = dy0 * (one - tt * tt);        // t = tanh(l0 l1)
        const V dy1 = dcn * m0 * (one - m1 * m1);    // m1 = tanh(l2 + l3)
        const V dy2 = dr * (one - m2 * m2);          // m2 = tanh(l4 l5)
        const V dy3 = dr * m3 * (one - m3);          // m3 = sig(l6 + l7)
        const V da0 = dp01 * l1 * l0 * (one - l0);
        // relu: torch's threshold_backward passes the gradient where the output > 0
        const V da1 = V::blendv(zero, dp01 * l0, l1 > zero);
        const V da2 = dy1 * l2 * (one - l2);
        const V dp3 = V::blendv(zero, dy1, p3 > zero);
        const V da4 = dy2 * l5 * (one - l4 * l4);
        const V da5 = dy2 * l4 * l5 * (one - l5);
        const V da6 = dy3 * (one - l6 * l6);
        const V da7 = dy3 * l7 * (one - l7);
        const V shared[8] = {da0, da1, da2, zero, da4, da5, da6, da7};
        for (int64_t b = 0; b < 8; ++b) {
          if (b == 3) continue;
          st(shared[b], du + b * H, j, c);
          st(shared[b], dv + b * H, j, c);
        }
        st(dp3 * v3, du + 3 * H, j, c);
        st(dp3 * u3, dv + 3 * H, j, c);
        st(dy0, dcrow, j, c);  // d c_prev: m0 = tanh(t + c)
      });
      // h enters only through v (GEMM 1): the template adds d rec W_hh.
      if (!k.proj) std::fill(dhrow, dhrow + k.Hout, scalar_t(0));
    }
  };

  static std::map<std::string, Tensor> finish(const Config& c, const KernelArgs&,
                                              const WeightGrads& g) {
    std::map<std::string, Tensor> out{{"weight_hh", g.dw1}};
    if (c.bias) out["bias_hh"] = g.drec.sum(0);
    if (c.proj) out["weight_hr"] = g.dw2;
    return out;
  }
};

RNNKIT_REGISTER_FAMILY(NasFamily);

}  // namespace rnnkit
