// LSTM family: plain, peepholes, coupled gates (i = 1 - f), projection, cell clip and
// layer normalisation (ln_hh on W_hh h, ln_c on the new cell state), exactly as
// rnnkit.functional.lstm_step:
//   a = xp + LN_hh(W_hh h)                         xp = LN_ih(W_ih x) + b_ih + b_hh (caller)
//   f = sig(a_f + w_cf c), i = sig(a_i + w_ci c) or 1 - f, g = tanh(a_g)
//   c' = clip(LN_c(f c + i g)),  o = sig(a_o + w_co c'),  m = o tanh(c'),  h' = W_hr m or m
#include "common.h"

namespace rnnkit {

struct LstmConfig {
  int64_t T, B, H, G, P, Hout;
  bool coupled, peep, ln_hh, ln_c, clip_on, proj, reverse;
  double clip, eps_hh, eps_c;
  // Offsets of the gate slices inside a G*H row (i is unused when coupled).
  int64_t oi, of, og, oo;
};

static LstmConfig make_config(const Tensor& xp, const Tensor& c0, const Tensor& w_hh,
                              const Tensor& w_hr, bool coupled, bool peep, bool ln_hh,
                              bool ln_c, double clip, bool reverse, double eps_hh,
                              double eps_c) {
  TORCH_CHECK(xp.dim() == 3 && c0.dim() == 2 && w_hh.dim() == 2 && (!present(w_hr) || w_hr.dim() == 2),
              "rnnkit lstm: xp must be 3-D, c0 and the weights 2-D");
  LstmConfig k;
  k.T = xp.size(0);
  k.B = xp.size(1);
  k.H = c0.size(1);
  k.G = coupled ? 3 : 4;
  TORCH_CHECK(xp.size(2) == k.G * k.H, "rnnkit lstm: xp has ", xp.size(2), " features, expected ",
              k.G * k.H);
  k.proj = present(w_hr);
  k.P = k.proj ? w_hr.size(0) : 0;
  k.Hout = k.proj ? k.P : k.H;
  TORCH_CHECK(w_hh.size(0) == k.G * k.H && w_hh.size(1) == k.Hout, "rnnkit lstm: weight_hh shape");
  k.coupled = coupled;
  k.peep = peep;
  k.ln_hh = ln_hh;
  k.ln_c = ln_c;
  k.clip_on = clip > 0;
  k.clip = clip;
  k.reverse = reverse;
  k.eps_hh = eps_hh;
  k.eps_c = eps_c;
  if (coupled) {
    k.oi = -1; k.of = 0; k.og = k.H; k.oo = 2 * k.H;
  } else {
    k.oi = 0; k.of = k.H; k.og = 2 * k.H; k.oo = 3 * k.H;
  }
  return k;
}

// Every parameter an LSTM kernel reads, against the sizes in `k` (see check_arg).
static void check_lstm_params(const char* name, const LstmConfig& k, at::ScalarType dt,
                              const Tensor& c0, const Tensor& w_hh, const Tensor& w_hr,
                              const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
                              const Tensor& ln_hh_w, const Tensor& ln_c_w,
                              const Tensor& lengths) {
  check_arg(name, "c0", c0, {k.B, k.H}, dt, false);
  check_arg(name, "weight_hh", w_hh, {k.G * k.H, k.Hout}, dt);
  if (k.proj) check_arg(name, "weight_hr", w_hr, {k.P, k.H}, dt);
  if (k.peep) {
    if (!k.coupled) check_arg(name, "weight_ci", w_ci, {k.H}, dt);
    check_arg(name, "weight_cf", w_cf, {k.H}, dt);
    check_arg(name, "weight_co", w_co, {k.H}, dt);
  }
  if (k.ln_hh) check_arg(name, "ln_hh.weight", ln_hh_w, {k.G * k.H}, dt);
  if (k.ln_c) check_arg(name, "ln_c.weight", ln_c_w, {k.H}, dt);
  check_lengths_arg(name, lengths, k.B);
}

// Saved tensors, in this order, returned by lstm_forward(training=true) and passed back to
// lstm_backward. Undefined where an option is off.
enum Saved {
  kGates = 0,  // (S, B, G*H) activations i f g o (coupled: f g o)
  kHs,         // (S+1, B, Hout) h before each step ([0] = h0); inactive rows carry
  kCs,         // (S+1, B, H)  c before each step ([0] = c0)
  kTanhC,      // (S, B, H)    tanh(c_t)
  kM,          // (S, B, H)    o * tanh(c) (projection only)
  kCPre,       // (S, B, H)    cell state before the clip (clip only)
  kXhatHH,     // (S, B, G*H)  normalised W_hh h (ln_hh only)
  kRstdHH,     // (S, B)
  kXhatC,      // (S, B, H)    normalised f c + i g (ln_c only)
  kRstdC,      // (S, B)
  kNumSaved
};

std::vector<Tensor> lstm_forward(const Tensor& xp_in, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_hh, const Tensor& w_hr, const Tensor& w_ci,
                                 const Tensor& w_cf, const Tensor& w_co, const Tensor& ln_hh_w,
                                 const Tensor& ln_hh_b, const Tensor& ln_c_w,
                                 const Tensor& ln_c_b, const Tensor& lengths, bool coupled,
                                 bool peep, bool ln_hh, bool ln_c, double clip, double eps_hh,
                                 double eps_c, bool reverse, bool training) {
  constexpr const char* kName = "rnnkit lstm_forward";
  const Tensor xp = xp_in.contiguous();
  const LstmConfig k = make_config(xp, c0, w_hh, w_hr, coupled, peep, ln_hh, ln_c, clip,
                                   reverse, eps_hh, eps_c);
  const auto dt = xp.scalar_type();
  check_arg(kName, "xp", xp, {k.T, k.B, k.G * k.H}, dt);
  check_arg(kName, "h0", h0, {k.B, k.Hout}, dt, false);
  check_lstm_params(kName, k, dt, c0, w_hh, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_c_w, lengths);
  if (k.ln_hh) check_arg(kName, "ln_hh.bias", ln_hh_b, {k.G * k.H}, dt);
  if (k.ln_c) check_arg(kName, "ln_c.bias", ln_c_b, {k.H}, dt);
  const int64_t T = k.T, B = k.B, H = k.H, GH = k.G * k.H, Hout = k.Hout;
  const Schedule sch(lengths, T, B, reverse);
  const int64_t S = sch.S;
  const auto opts = xp.options();

  Tensor out = sch.identity() ? at::empty({T, B, Hout}, opts) : at::zeros({T, B, Hout}, opts);
  // (Hout, GH): transposed once per sequence; MKL's plain (NN) layout measured ~3-5%
  // faster than reading W_hh transposed at every step.
  const Tensor w_hh_t = w_hh.t().contiguous();
  const Tensor w_hr_t = k.proj ? w_hr.t().contiguous() : Tensor();

  std::vector<Tensor> saved(kNumSaved);
  // In inference the "saved" buffers hold two steps and are used as ping-pong buffers.
  const int64_t SS = training ? S : 1;
  Tensor gates = at::empty({SS, B, GH}, opts);
  Tensor hs = at::empty({training ? S + 1 : 2, B, Hout}, opts);
  Tensor cs = at::empty({training ? S + 1 : 2, B, H}, opts);
  Tensor tanhc = at::empty({SS, B, H}, opts);
  Tensor m = k.proj ? at::empty({SS, B, H}, opts) : Tensor();
  Tensor cpre = k.clip_on && training ? at::empty({SS, B, H}, opts) : Tensor();
  Tensor xhat_hh = k.ln_hh ? at::empty({SS, B, GH}, opts) : Tensor();
  Tensor rstd_hh = k.ln_hh ? at::empty({SS, B}, opts) : Tensor();
  Tensor xhat_c = k.ln_c ? at::empty({SS, B, H}, opts) : Tensor();
  Tensor rstd_c = k.ln_c ? at::empty({SS, B}, opts) : Tensor();
  Tensor hh = at::empty({B, GH}, opts);  // recurrent GEMM output of one step
  hs[0].copy_(sch.to_positions(h0));
  cs[0].copy_(sch.to_positions(c0));

  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_lstm_forward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    const scalar_t* wci = k.peep && !k.coupled ? w_ci.data_ptr<scalar_t>() : nullptr;
    const scalar_t* wcf = k.peep ? w_cf.data_ptr<scalar_t>() : nullptr;
    const scalar_t* wco = k.peep ? w_co.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ghh = ptr_or_null<scalar_t>(ln_hh_w);
    const scalar_t* bhh = ptr_or_null<scalar_t>(ln_hh_b);
    const scalar_t* gc = ptr_or_null<scalar_t>(ln_c_w);
    const scalar_t* bc = ptr_or_null<scalar_t>(ln_c_b);
    const V one(scalar_t(1)), vclip(scalar_t(k.clip)), vnclip(scalar_t(-k.clip));
    const RecurrentGemm<scalar_t> gemm_hh(B, w_hh_t);  // weights packed once per sequence
    const std::optional<RecurrentGemm<scalar_t>> gemm_hr =
        k.proj ? std::optional<RecurrentGemm<scalar_t>>(std::in_place, B, w_hr_t) : std::nullopt;

    for (int64_t s = 0; s < S; ++s) {
      const int64_t cur = training ? s : (s & 1);
      const int64_t nxt = training ? s + 1 : 1 - cur;
      const int64_t sv = training ? s : 0;  // slot of per-step saved buffers
      Tensor h_prev = hs[cur], h_next = hs[nxt];
      gemm_hh(h_prev, 0, hh, sch.active_rows[s]);  // (B, GH)
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* hn = h_next.data_ptr<scalar_t>();
      const scalar_t* cp_all = cs[cur].data_ptr<scalar_t>();
      scalar_t* cn_all = cs[nxt].data_ptr<scalar_t>();
      scalar_t* hh_p = hh.data_ptr<scalar_t>();
      scalar_t* gate_p = gates[sv].data_ptr<scalar_t>();
      scalar_t* tc_p = tanhc[sv].data_ptr<scalar_t>();
      scalar_t* m_p = k.proj ? m[sv].data_ptr<scalar_t>() : nullptr;
      scalar_t* cpre_p = present(cpre) ? cpre[sv].data_ptr<scalar_t>() : nullptr;
      scalar_t* xhh_p = k.ln_hh ? xhat_hh[sv].data_ptr<scalar_t>() : nullptr;
      scalar_t* rhh_p = k.ln_hh ? rstd_hh[sv].data_ptr<scalar_t>() : nullptr;
      scalar_t* xc_p = k.ln_c ? xhat_c[sv].data_ptr<scalar_t>() : nullptr;
      scalar_t* rc_p = k.ln_c ? rstd_c[sv].data_ptr<scalar_t>() : nullptr;

      at::parallel_for(0, B, row_grain(GH), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* cp = cp_all + b * H;
          scalar_t* cn = cn_all + b * H;
          if (!sch.active(s, b)) {
            // Finished (or not yet started) sequence: carry the state, no output.
            std::copy(cp, cp + H, cn);
            if (!k.proj) std::copy(hp + b * Hout, hp + (b + 1) * Hout, hn + b * Hout);
            if (m_p != nullptr) std::fill(m_p + b * H, m_p + (b + 1) * H, scalar_t(0));
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* x = xp_p + (t * B + sch.row(b)) * GH;
          scalar_t* a = hh_p + b * GH;  // recurrent part, becomes LN_hh(...) in place
          if (k.ln_hh) {
            rhh_p[b] = ln_row_forward(a, xhh_p + b * GH, a, ghh, bhh, GH, k.eps_hh);
          }
          scalar_t* gr = gate_p + b * GH;
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
          if (k.ln_c) rc_p[b] = ln_row_forward(cn, xc_p + b * H, cn, gc, bc, H, k.eps_c);
          if (k.clip_on) {
            if (cpre_p != nullptr) std::copy(cn, cn + H, cpre_p + b * H);
            vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
              st(at::vec::clamp(ld(cn, j, c), vnclip, vclip), cn, j, c);
            });
          }
          scalar_t* dst = k.proj ? m_p + b * H : hn + b * Hout;
          scalar_t* tcr = tc_p + b * H;
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
          if (!k.proj) std::copy(dst, dst + Hout, out_p + (t * B + sch.row(b)) * Hout);
        }
      });
      if (k.proj) {
        (*gemm_hr)(m[sv], 0, h_next, sch.active_rows[s]);  // (B, P)
        for (int64_t b = 0; b < B; ++b) {
          if (sch.active(s, b)) {
            std::copy(hn + b * Hout, hn + (b + 1) * Hout, out_p + (sch.time(s, b) * B + sch.row(b)) * Hout);
          } else {
            std::copy(hp + b * Hout, hp + (b + 1) * Hout, hn + b * Hout);
          }
        }
      }
    }
  });

  const int64_t last = training ? S : (S & 1);
  Tensor hT = sch.to_rows(hs[last]);
  Tensor cT = sch.to_rows(cs[last]);
  std::vector<Tensor> result{out, hT, cT};
  if (training) {
    saved[kGates] = gates;
    saved[kHs] = hs;
    saved[kCs] = cs;
    saved[kTanhC] = tanhc;
    saved[kM] = m;
    saved[kCPre] = cpre;
    saved[kXhatHH] = xhat_hh;
    saved[kRstdHH] = rstd_hh;
    saved[kXhatC] = xhat_c;
    saved[kRstdC] = rstd_c;
    result.insert(result.end(), saved.begin(), saved.end());
  }
  return result;
}

// Returns dxp, dh0, dc0, dw_hh, dw_hr, dw_ci, dw_cf, dw_co, dln_hh_w, dln_hh_b, dln_c_w,
// dln_c_b (undefined where the option is off).
std::vector<Tensor> lstm_backward(const Tensor& dout_in, const Tensor& dhT, const Tensor& dcT,
                                  const std::vector<Tensor>& saved, const Tensor& c0,
                                  const Tensor& w_hh, const Tensor& w_hr, const Tensor& w_ci,
                                  const Tensor& w_cf, const Tensor& w_co,
                                  const Tensor& ln_hh_w, const Tensor& ln_c_w,
                                  const Tensor& lengths, int64_t T, bool coupled, bool peep,
                                  bool ln_hh, bool ln_c, double clip, bool reverse) {
  constexpr const char* kName = "rnnkit lstm_backward";
  TORCH_CHECK(saved.size() == kNumSaved, kName, ": expected ", int(kNumSaved),
              " saved tensors, got ", saved.size());
  const Tensor& gates = saved[kGates];
  TORCH_CHECK(gates.dim() == 3, kName, ": saved gates have the wrong rank");
  const int64_t S = gates.size(0), B = gates.size(1);
  const Tensor xp_like = at::empty({T, B, gates.size(2)}, gates.options());
  const LstmConfig k = make_config(xp_like, c0, w_hh, w_hr, coupled, peep, ln_hh, ln_c, clip,
                                   reverse, 0.0, 0.0);
  const int64_t H = k.H, GH = k.G * k.H, Hout = k.Hout, P = k.P;
  const auto dt = gates.scalar_type();
  check_lstm_params(kName, k, dt, c0, w_hh, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_c_w, lengths);
  check_arg(kName, "gates", gates, {S, B, GH}, dt);
  check_arg(kName, "hs", saved[kHs], {S + 1, B, Hout}, dt);
  check_arg(kName, "cs", saved[kCs], {S + 1, B, H}, dt);
  check_arg(kName, "tanh(c)", saved[kTanhC], {S, B, H}, dt);
  if (k.proj) check_arg(kName, "m", saved[kM], {S, B, H}, dt);
  if (k.clip_on) check_arg(kName, "c before clip", saved[kCPre], {S, B, H}, dt);
  if (k.ln_hh) {
    check_arg(kName, "xhat_hh", saved[kXhatHH], {S, B, GH}, dt);
    check_arg(kName, "rstd_hh", saved[kRstdHH], {S, B}, dt);
  }
  if (k.ln_c) {
    check_arg(kName, "xhat_c", saved[kXhatC], {S, B, H}, dt);
    check_arg(kName, "rstd_c", saved[kRstdC], {S, B}, dt);
  }
  if (present(dout_in)) check_arg(kName, "grad of outputs", dout_in, {T, B, Hout}, dt, false);
  if (present(dhT)) check_arg(kName, "grad of h_n", dhT, {B, Hout}, dt, false);
  if (present(dcT)) check_arg(kName, "grad of c_n", dcT, {B, H}, dt, false);
  const Schedule sch(lengths, T, B, reverse);
  TORCH_CHECK(sch.S == S, "rnnkit lstm backward: saved steps do not match lengths");
  const auto opts = gates.options();
  const Tensor dout = present(dout_in) ? dout_in.contiguous() : Tensor();

  Tensor dh = present(dhT) ? sch.to_positions(dhT) : at::zeros({B, Hout}, opts);
  const Tensor w_hh_c = w_hh.contiguous();
  const Tensor w_hr_c = k.proj ? w_hr.contiguous() : Tensor();
  Tensor dc = present(dcT) ? sch.to_positions(dcT) : at::zeros({B, H}, opts);
  // dG (gradient of the gate pre-activations) is dxp at the row's time position; the
  // recurrent GEMMs want it in step order (after LN_hh's backward when layer-normed).
  const bool alias = sch.identity() && !k.ln_hh;
  // Every (t, b) is written when all sequences are full; else padded positions stay zero.
  Tensor dxp = sch.identity() ? at::empty({T, B, GH}, opts) : at::zeros({T, B, GH}, opts);
  Tensor dhh = alias ? dxp : at::empty({S, B, GH}, opts);
  Tensor dhtot = k.proj ? at::empty({S, B, P}, opts) : Tensor();
  Tensor dm = k.proj ? at::empty({B, H}, opts) : Tensor();
  Tensor acc_peep = k.peep ? at::zeros({B, 3, H}, opts) : Tensor();  // ci, cf, co per row
  Tensor acc_lnhh = k.ln_hh ? at::zeros({B, 2, GH}, opts) : Tensor();  // dgamma, dbeta
  Tensor acc_lnc = k.ln_c ? at::zeros({B, 2, H}, opts) : Tensor();
  const Tensor& hs = saved[kHs];
  const Tensor& cs = saved[kCs];

  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_lstm_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* dout_p = present(dout) ? dout.data_ptr<scalar_t>() : nullptr;
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    const scalar_t* wci = k.peep && !k.coupled ? w_ci.data_ptr<scalar_t>() : nullptr;
    const scalar_t* wcf = k.peep ? w_cf.data_ptr<scalar_t>() : nullptr;
    const scalar_t* wco = k.peep ? w_co.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ghh = ptr_or_null<scalar_t>(ln_hh_w);
    const scalar_t* gc = ptr_or_null<scalar_t>(ln_c_w);
    scalar_t* accp = k.peep ? acc_peep.data_ptr<scalar_t>() : nullptr;
    scalar_t* acch = k.ln_hh ? acc_lnhh.data_ptr<scalar_t>() : nullptr;
    scalar_t* accc = k.ln_c ? acc_lnc.data_ptr<scalar_t>() : nullptr;
    const V one(scalar_t(1)), zero(scalar_t(0)), vclip(scalar_t(k.clip));
    const RecurrentGemm<scalar_t> gemm_dh(B, w_hh_c);
    const std::optional<RecurrentGemm<scalar_t>> gemm_dm =
        k.proj ? std::optional<RecurrentGemm<scalar_t>>(std::in_place, B, w_hr_c) : std::nullopt;

    for (int64_t s = S - 1; s >= 0; --s) {
      scalar_t* dh_p = dh.data_ptr<scalar_t>();
      scalar_t* dc_p = dc.data_ptr<scalar_t>();
      if (k.proj) {
        // dh_tot = dh + dout for active rows; dm = dh_tot W_hr.
        scalar_t* dt = dhtot[s].data_ptr<scalar_t>();
        for (int64_t b = 0; b < B; ++b) {
          scalar_t* row = dt + b * P;
          if (!sch.active(s, b)) {
            std::fill(row, row + P, scalar_t(0));
            continue;
          }
          const scalar_t* d1 = dh_p + b * P;
          const scalar_t* d2 = dout_p ? dout_p + (sch.time(s, b) * B + sch.row(b)) * P : nullptr;
          for (int64_t j = 0; j < P; ++j) row[j] = d1[j] + (d2 ? d2[j] : scalar_t(0));
        }
        (*gemm_dm)(dhtot[s], 0, dm, sch.active_rows[s]);  // (B, H)
      }
      const scalar_t* dm_p = k.proj ? dm.data_ptr<scalar_t>() : nullptr;
      const scalar_t* gate_p = gates[s].data_ptr<scalar_t>();
      const scalar_t* cp_all = cs[s].data_ptr<scalar_t>();
      const scalar_t* cn_all = cs[s + 1].data_ptr<scalar_t>();
      const scalar_t* tc_p = saved[kTanhC][s].data_ptr<scalar_t>();
      const scalar_t* cpre_p = k.clip_on ? saved[kCPre][s].data_ptr<scalar_t>() : nullptr;
      const scalar_t* xhh_p = k.ln_hh ? saved[kXhatHH][s].data_ptr<scalar_t>() : nullptr;
      const scalar_t* rhh_p = k.ln_hh ? saved[kRstdHH][s].data_ptr<scalar_t>() : nullptr;
      const scalar_t* xc_p = k.ln_c ? saved[kXhatC][s].data_ptr<scalar_t>() : nullptr;
      const scalar_t* rc_p = k.ln_c ? saved[kRstdC][s].data_ptr<scalar_t>() : nullptr;
      scalar_t* dhh_s = alias ? dxp_p + s * B * GH : dhh[s].data_ptr<scalar_t>();

      at::parallel_for(0, B, row_grain(GH), [&](int64_t b0, int64_t b1) {
        std::vector<scalar_t> dcv_buf(H), tmp(GH);
        scalar_t* dcv = dcv_buf.data();
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* dhh_row = dhh_s + b * GH;
          if (!sch.active(s, b)) {
            // dh and dc pass through unchanged; this row adds nothing to the GEMMs.
            std::fill(dhh_row, dhh_row + GH, scalar_t(0));
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* gr = gate_p + b * GH;
          const scalar_t* cp = cp_all + b * H;
          const scalar_t* cn = cn_all + b * H;
          const scalar_t* tc = tc_p + b * H;
          scalar_t* dg = dxp_p + (t * B + sch.row(b)) * GH;  // dG lands at its time position
          scalar_t* dhrow = dh_p + b * Hout;
          const scalar_t* dorow = dout_p ? dout_p + (t * B + sch.row(b)) * Hout : nullptr;
          scalar_t* dcrow = dc_p + b * H;
          scalar_t* ap = accp ? accp + b * 3 * H : nullptr;
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
            V dmv;
            if (k.proj) {
              dmv = ld(dm_p + b * H, j, c);
            } else {
              dmv = ld(dhrow, j, c);
              if (dorow) dmv = dmv + ld(dorow, j, c);
            }
            const V o = ld(gr + k.oo, j, c);
            const V tcv = ld(tc, j, c);
            const V dopre = dmv * tcv * o * (one - o);
            V d = at::vec::fmadd(dmv * o, one - tcv * tcv, ld(dcrow, j, c));
            if (wco != nullptr) {
              d = at::vec::fmadd(dopre, ld(wco, j, c), d);
              st(at::vec::fmadd(dopre, ld(cn, j, c), ld(ap + 2 * H, j, c)), ap + 2 * H, j, c);
            }
            if (cpre_p != nullptr) {
              const V cpv = ld(cpre_p + b * H, j, c);
              const auto inside = (cpv <= vclip) & (cpv >= vclip.neg());
              d = V::blendv(zero, d, inside);
            }
            st(dopre, dg + k.oo, j, c);
            st(d, dcv, j, c);
          });
          if (k.ln_c) {
            ln_row_backward(dcv, xc_p + b * H, rc_p[b], gc, dcv, accc + b * 2 * H,
                            accc + b * 2 * H + H, tmp.data(), H);
          }
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
            const V d = ld(dcv, j, c);
            const V cpv = ld(cp, j, c);
            const V f = ld(gr + k.of, j, c);
            const V g = ld(gr + k.og, j, c);
            V i, di;
            if (k.coupled) {
              i = one - f;
              di = d * g;
            } else {
              i = ld(gr + k.oi, j, c);
              di = d * g;
            }
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
          if (k.ln_hh) {
            ln_row_backward(dg, xhh_p + b * GH, rhh_p[b], ghh, dhh_row, acch + b * 2 * GH,
                            acch + b * 2 * GH + GH, tmp.data(), GH);
          } else if (!alias) {
            std::copy(dg, dg + GH, dhh_row);
          }
          // This row's dh has been consumed; the GEMM below adds its new value.
          std::fill(dhrow, dhrow + Hout, scalar_t(0));
        }
      });
      // dh_prev = (dh of inactive rows, 0 for active) + dG_hh W_hh
      gemm_dh(alias ? dxp[s] : dhh[s], 1, dh, sch.active_rows[s]);
    }
  });

  const Tensor hprev = hs.narrow(0, 0, S).reshape({S * B, Hout});
  Tensor dw_hh = S > 0 ? at::mm(dhh.narrow(0, 0, S).reshape({S * B, GH}).t(), hprev)
                       : at::zeros_like(w_hh);
  Tensor dw_hr;
  if (k.proj) {
    dw_hr = S > 0 ? at::mm(dhtot.reshape({S * B, P}).t(), saved[kM].reshape({S * B, H}))
                  : at::zeros_like(w_hr);
  }
  Tensor dci, dcf, dco, dlnhw, dlnhb, dlncw, dlncb;
  if (k.peep) {
    Tensor sums = acc_peep.sum(0);  // (3, H)
    if (!k.coupled) dci = sums[0];
    dcf = sums[1];
    dco = sums[2];
  }
  if (k.ln_hh) {
    Tensor sums = acc_lnhh.sum(0);
    dlnhw = sums[0];
    dlnhb = sums[1];
  }
  if (k.ln_c) {
    Tensor sums = acc_lnc.sum(0);
    dlncw = sums[0];
    dlncb = sums[1];
  }
  return {dxp, sch.to_rows(dh), sch.to_rows(dc), dw_hh, dw_hr, dci, dcf, dco, dlnhw, dlnhb,
          dlncw, dlncb};
}

}  // namespace rnnkit
