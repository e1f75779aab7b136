// NAS cell (Zoph & Le 2017), exactly as rnnkit.functional.nas_step (TF1 contrib NASCell).
// Eight branches k = 0..7, each H wide: u^k = W_ih^k x (caller, hoisted, no bias) and
// v^k = W_hh^k h + b^k (here, one GEMM per step); they stay apart because branch 3
// multiplies them:
//   l0 = sig(u0+v0)  l1 = relu(u1+v1)  l2 = sig(u2+v2)  l3 = relu(u3*v3)
//   l4 = tanh(u4+v4) l5 = sig(u5+v5)   l6 = tanh(u6+v6) l7 = sig(u7+v7)
//   t = tanh(l0*l1)  m0 = tanh(t + c)  m1 = tanh(l2+l3)  m2 = tanh(l4*l5)  m3 = sig(l6+l7)
//   c' = m0*m1,  q = tanh(m2+m3),  m = tanh(c'*q),  h' = W_hr m (proj_size) or m
#include "common.h"

namespace rnnkit {

namespace {

// Saved activations: act (S, B, 8H) = l0 l1 l2 v3 l4 l5 l6 l7 (branch 3 keeps v3, with its
// bias: u3 comes from xp), mid (S, B, 6H) = t m0 m1 m2 m3 q.
enum Mid { kT = 0, kM0, kM1, kM2, kM3, kQ, kMid };

struct NasShape {
  int64_t T, B, H, Hout, P;
  bool proj, bias;
};

NasShape nas_shape(const char* name, const Tensor& xp, const Tensor& c0, const Tensor& w_hh,
                   const Tensor& b_hh, const Tensor& w_hr) {
  TORCH_CHECK(xp.dim() == 3 && c0.dim() == 2 && w_hh.dim() == 2, name,
              ": xp must be 3-D, c0 and weight_hh 2-D");
  NasShape k;
  k.T = xp.size(0);
  k.B = xp.size(1);
  k.H = c0.size(1);
  k.proj = present(w_hr);
  k.bias = present(b_hh);
  TORCH_CHECK(!k.proj || w_hr.dim() == 2, name, ": weight_hr must be 2-D");
  k.P = k.proj ? w_hr.size(0) : 0;
  k.Hout = k.proj ? k.P : k.H;
  return k;
}

void check_nas_params(const char* name, const NasShape& k, at::ScalarType dt, const Tensor& c0,
                      const Tensor& w_hh, const Tensor& b_hh, const Tensor& w_hr,
                      const Tensor& lengths) {
  check_arg(name, "c0", c0, {k.B, k.H}, dt, false);
  check_arg(name, "weight_hh", w_hh, {8 * k.H, k.Hout}, dt);
  if (k.bias) check_arg(name, "bias_hh", b_hh, {8 * k.H}, dt);
  if (k.proj) check_arg(name, "weight_hr", w_hr, {k.P, k.H}, dt);
  check_lengths_arg(name, lengths, k.B);
}

template <typename F>
inline void run_rows(int64_t B, int64_t grain, const F& fn) {
  if (B <= grain) {
    fn(0, B);  // one chunk: skip parallel_for's dispatch
  } else {
    at::parallel_for(0, B, grain, fn);
  }
}

}  // namespace

// Returns out (T, B, Hout), h_n, c_n and, when training: act (S, B, 8H), mid (S, B, 6H),
// mo (S, B, H) (tanh(c' q), the projection's input), hs (S+1, B, Hout), cs (S+1, B, H),
// all in step order by position.
std::vector<Tensor> nas_forward(const Tensor& xp_in, const Tensor& h0, const Tensor& c0,
                                const Tensor& w_hh, const Tensor& b_hh, const Tensor& w_hr,
                                const Tensor& lengths, bool reverse, bool training) {
  constexpr const char* kName = "rnnkit nas_forward";
  const Tensor xp = xp_in.contiguous();
  const NasShape k = nas_shape(kName, xp, c0, w_hh, b_hh, w_hr);
  const int64_t T = k.T, B = k.B, H = k.H, Hout = k.Hout, GH = 8 * H;
  const auto dt = xp.scalar_type();
  check_arg(kName, "xp", xp, {T, B, GH}, dt);
  check_arg(kName, "h0", h0, {B, Hout}, dt, false);
  check_nas_params(kName, k, dt, c0, w_hh, b_hh, w_hr, lengths);
  const Schedule sch(lengths, T, B, reverse);
  const int64_t S = sch.S;
  const auto opts = xp.options();
  Tensor out = sch.identity() ? at::empty({T, B, Hout}, opts) : at::zeros({T, B, Hout}, opts);
  const Tensor w_hh_t = w_hh.t().contiguous();  // (Hout, 8H)
  const Tensor w_hr_t = k.proj ? w_hr.t().contiguous() : Tensor();  // (H, P)
  const int64_t SS = training ? S : 1;
  Tensor act = at::empty({SS, B, GH}, opts);
  Tensor mid = at::empty({SS, B, kMid * H}, opts);
  Tensor mo = at::empty({SS, B, H}, opts);
  Tensor hs = at::empty({training ? S + 1 : 2, B, Hout}, opts);
  Tensor cs = at::empty({training ? S + 1 : 2, B, H}, opts);
  Tensor vv = at::empty({B, GH}, opts);
  hs[0].copy_(sch.to_positions(h0));
  cs[0].copy_(sch.to_positions(c0));
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_nas_forward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    const scalar_t* bias_p = k.bias ? b_hh.data_ptr<scalar_t>() : nullptr;
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    scalar_t* cs_p = cs.data_ptr<scalar_t>();
    scalar_t* vv_p = vv.data_ptr<scalar_t>();
    const V zero(scalar_t(0));
    const RecurrentGemm<scalar_t> gemm_hh(B, w_hh_t);
    const std::optional<RecurrentGemm<scalar_t>> gemm_hr =
        k.proj ? std::optional<RecurrentGemm<scalar_t>>(std::in_place, B, w_hr_t) : std::nullopt;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t cur = training ? s : (s & 1);
      const int64_t nxt = training ? s + 1 : 1 - cur;
      const int64_t sv = training ? s : 0;
      const scalar_t* hp = hs_p + cur * B * Hout;
      scalar_t* hn = hs_p + nxt * B * Hout;
      const scalar_t* cp_all = cs_p + cur * B * H;
      scalar_t* cn_all = cs_p + nxt * B * H;
      scalar_t* act_s = act.data_ptr<scalar_t>() + sv * B * GH;
      scalar_t* mid_s = mid.data_ptr<scalar_t>() + sv * B * kMid * H;
      scalar_t* mo_s = mo.data_ptr<scalar_t>() + sv * B * H;
      const int64_t rows = sch.active_rows[s];
      gemm_hh(hp, Hout, scalar_t(0), vv_p, GH, rows);  // v = h W_hh^T (bias below)
      run_rows(B, row_grain(GH), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* cp = cp_all + b * H;
          scalar_t* cn = cn_all + b * H;
          scalar_t* mrow = mo_s + b * H;
          if (b >= rows) {  // finished sequence: carry the state, no output
            std::copy(cp, cp + H, cn);
            std::copy(hp + b * Hout, hp + (b + 1) * Hout, hn + b * Hout);
            std::fill(mrow, mrow + H, scalar_t(0));  // zero rows for the dW_hr GEMM
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* u = xp_p + (t * B + sch.row(b)) * GH;
          const scalar_t* v = vv_p + b * GH;
          scalar_t* a = act_s + b * GH;
          scalar_t* md = mid_s + b * kMid * H;
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
            auto vk = [&](int64_t br) {
              const V raw = ld(v + br * H, j, c);
              return bias_p ? raw + ld(bias_p + br * H, j, c) : raw;
            };
            auto uk = [&](int64_t br) { return ld(u + br * H, j, c); };
            const V l0 = vsigmoid(uk(0) + vk(0));
            const V l1 = at::vec::maximum(uk(1) + vk(1), zero);
            const V l2 = vsigmoid(uk(2) + vk(2));
            const V v3 = vk(3);
            const V l3 = at::vec::maximum(uk(3) * v3, zero);
            const V l4 = vtanh(uk(4) + vk(4));
            const V l5 = vsigmoid(uk(5) + vk(5));
            const V l6 = vtanh(uk(6) + vk(6));
            const V l7 = vsigmoid(uk(7) + vk(7));
            const V tt = vtanh(l0 * l1);
            const V m0 = vtanh(tt + ld(cp, j, c));
            const V m1 = vtanh(l2 + l3);
            const V m2 = vtanh(l4 * l5);
            const V m3 = vsigmoid(l6 + l7);
            const V cv = m0 * m1;
            const V q = vtanh(m2 + m3);
            const V mv = vtanh(cv * q);
            st(l0, a, j, c);
            st(l1, a + H, j, c);
            st(l2, a + 2 * H, j, c);
            st(v3, a + 3 * H, j, c);
            st(l4, a + 4 * H, j, c);
            st(l5, a + 5 * H, j, c);
            st(l6, a + 6 * H, j, c);
            st(l7, a + 7 * H, j, c);
            st(tt, md + kT * H, j, c);
            st(m0, md + kM0 * H, j, c);
            st(m1, md + kM1 * H, j, c);
            st(m2, md + kM2 * H, j, c);
            st(m3, md + kM3 * H, j, c);
            st(q, md + kQ * H, j, c);
            st(cv, cn, j, c);
            st(mv, mrow, j, c);
          });
          if (!k.proj) {
            std::copy(mrow, mrow + H, hn + b * Hout);
            std::copy(mrow, mrow + H, out_p + (t * B + sch.row(b)) * Hout);
          }
        }
      });
      if (k.proj) {
        (*gemm_hr)(mo_s, H, scalar_t(0), hn, Hout, rows);  // h' = m W_hr^T, active rows
        for (int64_t b = 0; b < B; ++b) {
          if (b < rows) {
            std::copy(hn + b * Hout, hn + (b + 1) * Hout,
                      out_p + (sch.time(s, b) * B + sch.row(b)) * Hout);
          }
        }
      }
    }
  });
  const int64_t last = training ? S : (S & 1);
  std::vector<Tensor> result{out, sch.to_rows(hs[last]), sch.to_rows(cs[last])};
  if (training) {
    result.push_back(act);
    result.push_back(mid);
    result.push_back(mo);
    result.push_back(hs);
    result.push_back(cs);
  }
  return result;
}

// Returns dxp (T, B, 8H), dh0, dc0, dw_hh (8H, Hout), db_hh (8H) or undefined, dw_hr (P, H)
// or undefined.
std::vector<Tensor> nas_backward(const Tensor& dout_in, const Tensor& dhT, const Tensor& dcT,
                                 const Tensor& xp_in, const Tensor& act, const Tensor& mid,
                                 const Tensor& mo, const Tensor& hs, const Tensor& cs,
                                 const Tensor& w_hh, const Tensor& b_hh, const Tensor& w_hr,
                                 const Tensor& lengths, bool reverse) {
  constexpr const char* kName = "rnnkit nas_backward";
  const Tensor xp = xp_in.contiguous();
  TORCH_CHECK(act.dim() == 3 && cs.dim() == 3, kName, ": saved tensors have the wrong rank");
  const NasShape k = nas_shape(kName, xp, cs[0], w_hh, b_hh, w_hr);
  const int64_t T = k.T, B = k.B, H = k.H, Hout = k.Hout, P = k.P, GH = 8 * H;
  const int64_t S = act.size(0);
  const auto dt = act.scalar_type();
  check_arg(kName, "xp", xp, {T, B, GH}, dt);
  check_arg(kName, "act", act, {S, B, GH}, dt);
  check_arg(kName, "mid", mid, {S, B, kMid * H}, dt);
  check_arg(kName, "m", mo, {S, B, H}, dt);
  check_arg(kName, "hs", hs, {S + 1, B, Hout}, dt);
  check_arg(kName, "cs", cs, {S + 1, B, H}, dt);
  check_nas_params(kName, k, dt, cs[0], w_hh, b_hh, w_hr, lengths);
  if (present(dout_in)) check_arg(kName, "grad of outputs", dout_in, {T, B, Hout}, dt, false);
  if (present(dhT)) check_arg(kName, "grad of h_n", dhT, {B, Hout}, dt, false);
  if (present(dcT)) check_arg(kName, "grad of c_n", dcT, {B, H}, dt, false);
  const Schedule sch(lengths, T, B, reverse);
  TORCH_CHECK(sch.S == S, kName, ": saved steps do not match lengths");
  const auto opts = act.options();
  const Tensor dout = present(dout_in) ? dout_in.contiguous() : Tensor();
  Tensor dh = present(dhT) ? sch.to_positions(dhT) : at::zeros({B, Hout}, opts);
  Tensor dc = present(dcT) ? sch.to_positions(dcT) : at::zeros({B, H}, opts);
  const Tensor w_hh_c = w_hh.contiguous();  // (8H, Hout): dh = dv W_hh
  const Tensor w_hr_c = k.proj ? w_hr.contiguous() : Tensor();  // (P, H): dm = dh W_hr
  Tensor dxp = sch.identity() ? at::empty({T, B, GH}, opts) : at::zeros({T, B, GH}, opts);
  Tensor dv = at::empty({S, B, GH}, opts);  // gradient of v (step order): differs from du at 3
  Tensor dhtot = k.proj ? at::empty({S, B, P}, opts) : Tensor();
  Tensor dm = at::empty({B, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_nas_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* dout_p = present(dout) ? dout.data_ptr<scalar_t>() : nullptr;
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    const Tensor act_c = act.contiguous(), mid_c = mid.contiguous(), mo_c = mo.contiguous();
    const Tensor cs_c = cs.contiguous();
    const scalar_t* act_p = act_c.data_ptr<scalar_t>();
    const scalar_t* mid_p = mid_c.data_ptr<scalar_t>();
    const scalar_t* mo_p = mo_c.data_ptr<scalar_t>();
    const scalar_t* cs_p = cs_c.data_ptr<scalar_t>();
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    scalar_t* dv_p = dv.data_ptr<scalar_t>();
    scalar_t* dh_p = dh.data_ptr<scalar_t>();
    scalar_t* dc_p = dc.data_ptr<scalar_t>();
    scalar_t* dm_p = dm.data_ptr<scalar_t>();
    const V one(scalar_t(1)), zero(scalar_t(0));
    const RecurrentGemm<scalar_t> gemm_dh(B, w_hh_c);
    const std::optional<RecurrentGemm<scalar_t>> gemm_dm =
        k.proj ? std::optional<RecurrentGemm<scalar_t>>(std::in_place, B, w_hr_c) : std::nullopt;
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t rows = sch.active_rows[s];
      if (k.proj) {  // dh_tot = dh + dout on the active rows; dm = dh_tot W_hr
        scalar_t* dt_s = dhtot.data_ptr<scalar_t>() + s * B * P;
        for (int64_t b = 0; b < B; ++b) {
          scalar_t* row = dt_s + b * P;
          if (b >= rows) {
            std::fill(row, row + P, scalar_t(0));
            continue;
          }
          const scalar_t* d1 = dh_p + b * P;
          const scalar_t* d2 = dout_p ? dout_p + (sch.time(s, b) * B + sch.row(b)) * P : nullptr;
          for (int64_t j = 0; j < P; ++j) row[j] = d1[j] + (d2 ? d2[j] : scalar_t(0));
        }
        (*gemm_dm)(dt_s, P, scalar_t(0), dm_p, H, rows);  // (rows, H)
      }
      scalar_t* dv_s = dv_p + s * B * GH;
      run_rows(B, row_grain(GH), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* dvrow = dv_s + b * GH;
          if (b >= rows) {  // dh and dc pass through; nothing for the weight GEMMs
            std::fill(dvrow, dvrow + GH, scalar_t(0));
            continue;
          }
          const int64_t t = sch.time(s, b);
          const int64_t at = t * B + sch.row(b);
          const scalar_t* u = xp_p + at * GH;
          scalar_t* du = dxp_p + at * GH;
          const scalar_t* a = act_p + (s * B + b) * GH;
          const scalar_t* md = mid_p + (s * B + b) * kMid * H;
          const scalar_t* mrow = mo_p + (s * B + b) * H;
          const scalar_t* cn = cs_p + ((s + 1) * B + b) * H;
          const scalar_t* dorow = (!k.proj && dout_p) ? dout_p + at * Hout : nullptr;
          scalar_t* dhrow = dh_p + b * Hout;
          scalar_t* dcrow = dc_p + b * H;
          const scalar_t* dmrow = k.proj ? dm_p + b * H : nullptr;
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
            V dmv;
            if (dmrow) {
              dmv = ld(dmrow, j, c);
            } else {
              dmv = ld(dhrow, j, c);
              if (dorow) dmv = dmv + ld(dorow, j, c);
            }
            const V mv = ld(mrow, j, c), q = ld(md + kQ * H, j, c), cv = ld(cn, j, c);
            const V dz = dmv * (one - mv * mv);         // m = tanh(c' q)
            const V dcn = at::vec::fmadd(dz, q, ld(dcrow, j, c));
            const V dr = dz * cv * (one - q * q);       // q = tanh(m2 + m3)
            const V m0 = ld(md + kM0 * H, j, c), m1 = ld(md + kM1 * H, j, c);
            const V m2 = ld(md + kM2 * H, j, c), m3 = ld(md + kM3 * H, j, c);
            const V tt = ld(md + kT * H, j, c);
            const V dy0 = dcn * m1 * (one - m0 * m0);   // m0 = tanh(t + c)
            const V dp01 = dy0 * (one - tt * tt);       // t = tanh(l0 l1)
            const V dy1 = dcn * m0 * (one - m1 * m1);   // m1 = tanh(l2 + l3)
            const V dy2 = dr * (one - m2 * m2);         // m2 = tanh(l4 l5)
            const V dy3 = dr * m3 * (one - m3);         // m3 = sig(l6 + l7)
            const V l0 = ld(a, j, c), l1 = ld(a + H, j, c), l2 = ld(a + 2 * H, j, c);
            const V v3 = ld(a + 3 * H, j, c), l4 = ld(a + 4 * H, j, c);
            const V l5 = ld(a + 5 * H, j, c), l6 = ld(a + 6 * H, j, c), l7 = ld(a + 7 * H, j, c);
            const V u3 = ld(u + 3 * H, j, c);
            const V da0 = dp01 * l1 * l0 * (one - l0);
            // relu: torch's threshold_backward passes the gradient where the output > 0
            const V da1 = V::blendv(zero, dp01 * l0, l1 > zero);
            const V da2 = dy1 * l2 * (one - l2);
            const V dp3 = V::blendv(zero, dy1, (u3 * v3) > zero);
            const V da4 = dy2 * l5 * (one - l4 * l4);
            const V da5 = dy2 * l4 * l5 * (one - l5);
            const V da6 = dy3 * (one - l6 * l6);
            const V da7 = dy3 * l7 * (one - l7);
            const V du3 = dp3 * v3, dv3 = dp3 * u3;
            st(da0, du, j, c);
            st(da1, du + H, j, c);
            st(da2, du + 2 * H, j, c);
            st(du3, du + 3 * H, j, c);
            st(da4, du + 4 * H, j, c);
            st(da5, du + 5 * H, j, c);
            st(da6, du + 6 * H, j, c);
            st(da7, du + 7 * H, j, c);
            st(da0, dvrow, j, c);
            st(da1, dvrow + H, j, c);
            st(da2, dvrow + 2 * H, j, c);
            st(dv3, dvrow + 3 * H, j, c);
            st(da4, dvrow + 4 * H, j, c);
            st(da5, dvrow + 5 * H, j, c);
            st(da6, dvrow + 6 * H, j, c);
            st(da7, dvrow + 7 * H, j, c);
            st(dy0, dcrow, j, c);  // dc_prev: m0 = tanh(t + c)
          });
        }
      });
      // dh_prev = dv W_hh on the active rows (beta 0: their dh was consumed above)
      gemm_dh(dv_s, GH, scalar_t(0), dh_p, Hout, rows);
    }
  });
  Tensor dw_hh, db_hh, dw_hr;
  if (S > 0) {
    const Tensor dv2 = dv.reshape({S * B, GH});
    dw_hh = at::mm(dv2.t(), hs.narrow(0, 0, S).reshape({S * B, Hout}));
    if (k.bias) db_hh = dv2.sum(0);
    if (k.proj) dw_hr = at::mm(dhtot.reshape({S * B, P}).t(), mo.reshape({S * B, H}));
  } else {
    dw_hh = at::zeros_like(w_hh);
    if (k.bias) db_hh = at::zeros_like(b_hh);
    if (k.proj) dw_hr = at::zeros_like(w_hr);
  }
  return {dxp, sch.to_rows(dh), sch.to_rows(dc), dw_hh, db_hh, dw_hr};
}

}  // namespace rnnkit
