// GRU in both forms, exactly as rnnkit.functional.gru_step (gate order r, z, n):
//   reset_after:  n = tanh(xp_n + r * (N_hh(W_hn h) + b_hn))        (torch.nn.GRU)
//   reset before: n = tanh(xp_n + N_hn(W_hn (r * h)) + b_hn)        (Cho et al., CNTK, TF1)
//   h' = n + z * (h - n),   xp = N_ih(W_ih x) + b_ih (caller); r/z get N_hh(W_h[rz] h) + b_h[rz]
// N_* is the identity, or with layer_norm a LayerNorm: over all 3H recurrent products
// (reset_after) or over the 2H r/z products plus a separate one over W_hn (r * h).
#include "common.h"

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

// Saved (training), in order: gates (S, B, 3H) r z n; hs (S+1, B, H); aux (S, B, H) the
// post-norm W_hn h + b_hn (reset_after) or r * h (reset before); with layer norm also
// xhat_hh (S, B, 3H or 2H), rstd_hh (S, B), xhat_hn (S, B, H), rstd_hn (S, B).
std::vector<Tensor> gru_forward(const Tensor& xp_in, const Tensor& h0, const Tensor& w_hh,
                                const Tensor& b_hh, const Tensor& ln_hh_w,
                                const Tensor& ln_hh_b, const Tensor& ln_hn_w,
                                const Tensor& ln_hn_b, const Tensor& lengths, bool reset_after,
                                bool ln, double eps_hh, double eps_hn, bool reverse,
                                bool training) {
  constexpr const char* kName = "rnnkit gru_forward";
  TORCH_CHECK(xp_in.dim() == 3 && h0.dim() == 2, kName, ": xp must be 3-D and h0 2-D");
  const Tensor xp = xp_in.contiguous();
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(1), GH = 3 * H;
  const auto dt = xp.scalar_type();
  check_arg(kName, "xp", xp, {T, B, GH}, dt);
  check_arg(kName, "h0", h0, {B, H}, dt, false);
  check_arg(kName, "weight_hh", w_hh, {GH, H}, dt);
  if (present(b_hh)) check_arg(kName, "bias_hh", b_hh, {GH}, dt);
  const int64_t NH_ = reset_after ? GH : 2 * H;
  if (ln) {
    check_arg(kName, "ln_hh.weight", ln_hh_w, {NH_}, dt);
    check_arg(kName, "ln_hh.bias", ln_hh_b, {NH_}, dt);
    if (!reset_after) {
      check_arg(kName, "ln_hn.weight", ln_hn_w, {H}, dt);
      check_arg(kName, "ln_hn.bias", ln_hn_b, {H}, dt);
    }
  }
  check_lengths_arg(kName, lengths, B);
  const Schedule sch(lengths, T, B, reverse);
  const int64_t S = sch.S;
  const auto opts = xp.options();
  const bool has_bias = present(b_hh);
  const int64_t NH = reset_after ? GH : 2 * H;  // width of the first recurrent product
  Tensor out = sch.identity() ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  const int64_t SS = training ? S : 1;
  Tensor gates = at::empty({SS, B, GH}, opts);
  Tensor hs = at::empty({training ? S + 1 : 2, B, H}, opts);
  Tensor aux = at::empty({SS, B, H}, opts);
  Tensor xhat_hh = ln ? at::empty({SS, B, NH}, opts) : Tensor();
  Tensor rstd_hh = ln ? at::empty({SS, B}, opts) : Tensor();
  Tensor xhat_hn = ln && !reset_after ? at::empty({SS, B, H}, opts) : Tensor();
  Tensor rstd_hn = ln && !reset_after ? at::empty({SS, B}, opts) : Tensor();
  Tensor hh = at::empty({B, NH}, opts);
  Tensor hn_buf = reset_after ? Tensor() : at::empty({B, H}, opts);
  // Transposed once per sequence (plain NN layout for the per-step GEMMs).
  const Tensor w_t = (reset_after ? w_hh : w_hh.narrow(0, 0, 2 * H)).t().contiguous();
  const Tensor w_n_t = w_hh.narrow(0, 2 * H, H).t().contiguous();
  hs[0].copy_(sch.to_positions(h0));

  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_gru_forward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    const scalar_t* bias = has_bias ? b_hh.data_ptr<scalar_t>() : nullptr;
    const scalar_t* g_hh = ptr_or_null<scalar_t>(ln_hh_w);
    const scalar_t* be_hh = ptr_or_null<scalar_t>(ln_hh_b);
    const scalar_t* g_hn = ptr_or_null<scalar_t>(ln_hn_w);
    const scalar_t* be_hn = ptr_or_null<scalar_t>(ln_hn_b);
    const scalar_t* bias_n = bias != nullptr ? bias + 2 * H : nullptr;
    const RecurrentGemm<scalar_t> gemm_h(B, w_t);      // h W_h(rz|all)^T
    const RecurrentGemm<scalar_t> gemm_rh(B, w_n_t);   // (r h) W_hn^T (reset before)
    for (int64_t s = 0; s < S; ++s) {
      const int64_t cur = training ? s : (s & 1);
      const int64_t nxt = training ? s + 1 : 1 - cur;
      const int64_t sv = training ? s : 0;
      Tensor h_prev = hs[cur];
      gemm_h(h_prev, 0, hh, sch.active_rows[s]);  // (B, NH); bias (after the norm) in the row pass
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* hn = hs[nxt].data_ptr<scalar_t>();
      scalar_t* hh_p = hh.data_ptr<scalar_t>();
      scalar_t* g_p = gates[sv].data_ptr<scalar_t>();
      scalar_t* aux_p = aux[sv].data_ptr<scalar_t>();
      scalar_t* xhh_p = ln ? xhat_hh[sv].data_ptr<scalar_t>() : nullptr;
      scalar_t* rhh_p = ln ? rstd_hh[sv].data_ptr<scalar_t>() : nullptr;
      scalar_t* xhn_p = xhat_hn.defined() ? xhat_hn[sv].data_ptr<scalar_t>() : nullptr;
      scalar_t* rhn_p = rstd_hn.defined() ? rstd_hn[sv].data_ptr<scalar_t>() : nullptr;
      const int64_t grain = row_grain(GH);

      if (!reset_after) {
        // r, z and r * h first: W_hn needs r * h.
        at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            scalar_t* rh = aux_p + b * H;
            if (!sch.active(s, b)) {
              std::fill(rh, rh + H, scalar_t(0));
              continue;
            }
            const scalar_t* x = xp_p + (sch.time(s, b) * B + sch.row(b)) * GH;
            scalar_t* a = hh_p + b * NH;
            norm_and_bias(a, ln ? xhh_p + b * NH : nullptr, ln ? rhh_p + b : nullptr, g_hh,
                          be_hh, bias, NH, eps_hh, ln);
            scalar_t* gr = g_p + b * GH;
            vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
              const V r = vsigmoid(ld(x, j, c) + ld(a, j, c));
              const V z = vsigmoid(ld(x + H, j, c) + ld(a + H, j, c));
              st(r, gr, j, c);
              st(z, gr + H, j, c);
              st(r * ld(hp + b * H, j, c), rh, j, c);
            });
          }
        });
        gemm_rh(aux[sv], 0, hn_buf, sch.active_rows[s]);  // (B, H)
      }
      scalar_t* hnb = reset_after ? nullptr : hn_buf.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* h = hp + b * H;
          scalar_t* hnew = hn + b * H;
          if (!sch.active(s, b)) {
            std::copy(h, h + H, hnew);
            if (reset_after) std::fill(aux_p + b * H, aux_p + (b + 1) * H, scalar_t(0));
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* x = xp_p + (t * B + sch.row(b)) * GH;
          scalar_t* a = hh_p + b * NH;
          scalar_t* gr = g_p + b * GH;
          if (reset_after) {
            norm_and_bias(a, ln ? xhh_p + b * NH : nullptr, ln ? rhh_p + b : nullptr, g_hh,
                          be_hh, bias, NH, eps_hh, ln);
          } else {
            norm_and_bias(hnb + b * H, ln ? xhn_p + b * H : nullptr, ln ? rhn_p + b : nullptr,
                          g_hn, be_hn, bias_n, H, eps_hn, ln);
          }
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
            V z, n;
            if (reset_after) {
              const V r = vsigmoid(ld(x, j, c) + ld(a, j, c));
              z = vsigmoid(ld(x + H, j, c) + ld(a + H, j, c));
              const V hnv = ld(a + 2 * H, j, c);
              n = vtanh(at::vec::fmadd(r, hnv, ld(x + 2 * H, j, c)));
              st(r, gr, j, c);
              st(z, gr + H, j, c);
              st(hnv, aux_p + b * H, j, c);
            } else {
              z = ld(gr + H, j, c);
              n = vtanh(ld(x + 2 * H, j, c) + ld(hnb + b * H, j, c));
            }
            st(n, gr + 2 * H, j, c);
            st(at::vec::fmadd(z, ld(h, j, c) - n, n), hnew, j, c);
          });
          std::copy(hnew, hnew + H, out_p + (t * B + sch.row(b)) * H);
        }
      });
    }
  });
  const int64_t last = training ? S : (S & 1);
  std::vector<Tensor> result{out, sch.to_rows(hs[last])};
  if (training) {
    for (const Tensor& t : {gates, hs, aux, xhat_hh, rstd_hh, xhat_hn, rstd_hn}) {
      result.push_back(t);
    }
  }
  return result;
}

// Returns dxp (T, B, 3H), dh0, dw_hh, db_hh, dln_hh_w, dln_hh_b, dln_hn_w, dln_hn_b
// (undefined where absent).
std::vector<Tensor> gru_backward(const Tensor& dout_in, const Tensor& dhT,
                                 const std::vector<Tensor>& saved, const Tensor& w_hh,
                                 bool has_bias, const Tensor& ln_hh_w, const Tensor& ln_hn_w,
                                 const Tensor& lengths, int64_t T, bool reset_after, bool ln,
                                 bool reverse) {
  constexpr const char* kName = "rnnkit gru_backward";
  TORCH_CHECK(saved.size() == 7, kName, ": expected 7 saved tensors, got ", saved.size());
  const Tensor& gates = saved[0];
  const Tensor& hs = saved[1];
  const Tensor& aux = saved[2];
  TORCH_CHECK(gates.dim() == 3 && hs.dim() == 3, kName, ": saved buffers have the wrong rank");
  const int64_t S = gates.size(0), B = gates.size(1), H = hs.size(2), GH = 3 * H;
  const int64_t NH = reset_after ? GH : 2 * H;
  const auto dt = gates.scalar_type();
  check_arg(kName, "gates", gates, {S, B, GH}, dt);
  check_arg(kName, "hs", hs, {S + 1, B, H}, dt);
  check_arg(kName, "aux", aux, {S, B, H}, dt);
  check_arg(kName, "weight_hh", w_hh, {GH, H}, dt);
  if (present(dout_in)) check_arg(kName, "grad of outputs", dout_in, {T, B, H}, dt, false);
  if (present(dhT)) check_arg(kName, "grad of h_n", dhT, {B, H}, dt, false);
  if (ln) {
    check_arg(kName, "ln_hh.weight", ln_hh_w, {NH}, dt);
    check_arg(kName, "xhat_hh", saved[3], {S, B, NH}, dt);
    check_arg(kName, "rstd_hh", saved[4], {S, B}, dt);
    if (!reset_after) {
      check_arg(kName, "ln_hn.weight", ln_hn_w, {H}, dt);
      check_arg(kName, "xhat_hn", saved[5], {S, B, H}, dt);
      check_arg(kName, "rstd_hn", saved[6], {S, B}, dt);
    }
  }
  check_lengths_arg(kName, lengths, B);
  const Schedule sch(lengths, T, B, reverse);
  TORCH_CHECK(sch.S == S, "rnnkit gru backward: saved steps do not match lengths");
  const auto opts = gates.options();
  const Tensor dout = present(dout_in) ? dout_in.contiguous() : Tensor();
  Tensor dh = present(dhT) ? sch.to_positions(dhT) : at::zeros({B, H}, opts);
  // Reset-before without layer norm: the gradient of the gate pre-activations is the same
  // for xp and for the recurrent products, so the step-ordered buffer can be dxp itself.
  const bool alias = !reset_after && !ln && sch.identity();
  Tensor dxp = sch.identity() ? at::empty({T, B, GH}, opts) : at::zeros({T, B, GH}, opts);
  Tensor dhh = alias ? dxp : at::empty({S, B, GH}, opts);
  Tensor drh = reset_after ? Tensor() : at::empty({B, H}, opts);
  // Per-row accumulators (no races between threads that own different rows).
  Tensor acc_db = ln && has_bias ? at::zeros({B, GH}, opts) : Tensor();
  Tensor acc_hh = ln ? at::zeros({B, 2, NH}, opts) : Tensor();
  Tensor acc_hn = ln && !reset_after ? at::zeros({B, 2, H}, opts) : Tensor();
  const Tensor w_c = w_hh.contiguous();
  const Tensor w_rz = w_c.narrow(0, 0, 2 * H);
  const Tensor w_n = w_c.narrow(0, 2 * H, H);

  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* dout_p = present(dout) ? dout.data_ptr<scalar_t>() : nullptr;
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    const scalar_t* g_hh = ptr_or_null<scalar_t>(ln_hh_w);
    const scalar_t* g_hn = ptr_or_null<scalar_t>(ln_hn_w);
    scalar_t* adb = acc_db.defined() ? acc_db.data_ptr<scalar_t>() : nullptr;
    scalar_t* ahh = ln ? acc_hh.data_ptr<scalar_t>() : nullptr;
    scalar_t* ahn = acc_hn.defined() ? acc_hn.data_ptr<scalar_t>() : nullptr;
    const V one(scalar_t(1));
    const int64_t grain = row_grain(GH);
    const RecurrentGemm<scalar_t> gemm_all(B, w_c);  // reset_after: dG W_hh
    const RecurrentGemm<scalar_t> gemm_n(B, w_n);    // reset before: dn W_hn
    const RecurrentGemm<scalar_t> gemm_rz(B, w_rz);  // reset before: d(rz) W_h(rz)
    for (int64_t s = S - 1; s >= 0; --s) {
      scalar_t* dh_p = dh.data_ptr<scalar_t>();
      const scalar_t* g_p = gates[s].data_ptr<scalar_t>();
      const scalar_t* hp = hs[s].data_ptr<scalar_t>();
      const scalar_t* aux_p = aux[s].data_ptr<scalar_t>();
      const scalar_t* xhh_p = ln ? saved[3][s].data_ptr<scalar_t>() : nullptr;
      const scalar_t* rhh_p = ln ? saved[4][s].data_ptr<scalar_t>() : nullptr;
      const scalar_t* xhn_p = ahn ? saved[5][s].data_ptr<scalar_t>() : nullptr;
      const scalar_t* rhn_p = ahn ? saved[6][s].data_ptr<scalar_t>() : nullptr;
      scalar_t* dhh_s = dhh[s].data_ptr<scalar_t>();
      // Pass 1: everything that needs no GEMM. dh becomes the direct term dh_tot * z
      // (active rows) so that the recurrent GEMM can accumulate onto it.
      at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
        std::vector<scalar_t> tmp(ln ? GH : 0);
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* dr = dhh_s + b * GH;
          if (!sch.active(s, b)) {
            std::fill(dr, dr + GH, scalar_t(0));
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* gr = g_p + b * GH;
          const scalar_t* h = hp + b * H;
          const scalar_t* dorow = dout_p ? dout_p + (t * B + sch.row(b)) * H : nullptr;
          scalar_t* dhrow = dh_p + b * H;
          scalar_t* dx = dxp_p + (t * B + sch.row(b)) * GH;
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
            V d = ld(dhrow, j, c);
            if (dorow) d = d + ld(dorow, j, c);
            const V z = ld(gr + H, j, c), n = ld(gr + 2 * H, j, c);
            const V dnpre = d * (one - z) * (one - n * n);
            const V dzpre = d * (ld(h, j, c) - n) * z * (one - z);
            st(d * z, dhrow, j, c);
            st(dnpre, dx + 2 * H, j, c);
            st(dzpre, dx + H, j, c);
            st(dzpre, dr + H, j, c);
            if (reset_after) {
              const V r = ld(gr, j, c);
              const V drpre = dnpre * ld(aux_p + b * H, j, c) * r * (one - r);
              st(drpre, dx, j, c);
              st(drpre, dr, j, c);
              st(dnpre * r, dr + 2 * H, j, c);
            } else {
              st(dnpre, dr + 2 * H, j, c);
            }
          });
          if (!ln) continue;
          // dr holds gradients of the post-norm products (+ bias) for reset_after's 3H, or
          // of W_hn (r h) for reset before's n slice: the bias gets them, the norm turns
          // them into gradients of the raw GEMM outputs.
          if (adb != nullptr) {
            scalar_t* a = adb + b * GH;
            const int64_t from = reset_after ? 0 : 2 * H, n = reset_after ? GH : H;
            vloop<scalar_t>(n, [&](int64_t j, int64_t c) {
              st(ld(a + from, j, c) + ld(dr + from, j, c), a + from, j, c);
            });
          }
          if (reset_after) {
            ln_row_backward(dr, xhh_p + b * NH, rhh_p[b], g_hh, dr, ahh + b * 2 * NH,
                            ahh + b * 2 * NH + NH, tmp.data(), NH);
          } else {
            ln_row_backward(dr + 2 * H, xhn_p + b * H, rhn_p[b], g_hn, dr + 2 * H,
                            ahn + b * 2 * H, ahn + b * 2 * H + H, tmp.data(), H);
          }
        }
      });
      if (reset_after) {
        gemm_all(dhh[s], 1, dh, sch.active_rows[s]);
      } else {
        gemm_n(dhh[s].narrow(1, 2 * H, H), 0, drh, sch.active_rows[s]);  // d(r * h)  (B, H)
        const scalar_t* drh_p = drh.data_ptr<scalar_t>();
        at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
          std::vector<scalar_t> tmp(ln ? GH : 0);
          for (int64_t b = b0; b < b1; ++b) {
            if (!sch.active(s, b)) continue;
            const int64_t t = sch.time(s, b);
            const scalar_t* gr = g_p + b * GH;
            const scalar_t* h = hp + b * H;
            scalar_t* dhrow = dh_p + b * H;
            scalar_t* dr = dhh_s + b * GH;
            scalar_t* dx = dxp_p + (t * B + sch.row(b)) * GH;
            vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
              const V r = ld(gr, j, c);
              const V drhv = ld(drh_p + b * H, j, c);
              const V drpre = drhv * ld(h, j, c) * r * (one - r);
              st(at::vec::fmadd(drhv, r, ld(dhrow, j, c)), dhrow, j, c);
              st(drpre, dr, j, c);
              if (!alias) st(drpre, dx, j, c);
            });
            if (!ln) continue;
            if (adb != nullptr) {
              scalar_t* a = adb + b * GH;
              vloop<scalar_t>(2 * H, [&](int64_t j, int64_t c) {
                st(ld(a, j, c) + ld(dr, j, c), a, j, c);
              });
            }
            ln_row_backward(dr, xhh_p + b * NH, rhh_p[b], g_hh, dr, ahh + b * 2 * NH,
                            ahh + b * 2 * NH + NH, tmp.data(), NH);
          }
        });
        gemm_rz(dhh[s].narrow(1, 0, 2 * H), 1, dh, sch.active_rows[s]);
      }
    }
  });
  Tensor dw_hh, db_hh, dlnhw, dlnhb, dlnnw, dlnnb;
  if (S == 0) {
    dw_hh = at::zeros_like(w_hh);
    if (has_bias) db_hh = at::zeros({GH}, opts);
  } else {
    const Tensor d2 = dhh.narrow(0, 0, S).reshape({S * B, GH});
    const Tensor hprev = hs.narrow(0, 0, S).reshape({S * B, H});
    if (reset_after) {
      dw_hh = at::mm(d2.t(), hprev);
    } else {
      dw_hh = at::empty_like(w_hh);
      Tensor rz_rows = dw_hh.narrow(0, 0, 2 * H), n_rows = dw_hh.narrow(0, 2 * H, H);
      at::mm_out(rz_rows, d2.narrow(1, 0, 2 * H).t(), hprev);
      at::mm_out(n_rows, d2.narrow(1, 2 * H, H).t(), aux.reshape({S * B, H}));
    }
    if (has_bias) db_hh = ln ? acc_db.sum(0) : d2.sum(0);
  }
  if (ln) {
    Tensor sums = acc_hh.sum(0);
    dlnhw = sums[0];
    dlnhb = sums[1];
    if (!reset_after) {
      Tensor sums_n = acc_hn.sum(0);
      dlnnw = sums_n[0];
      dlnnb = sums_n[1];
    }
  }
  return {dxp, sch.to_rows(dh), dw_hh, db_hh, dlnhw, dlnhb, dlnnw, dlnnb};
}

}  // namespace rnnkit
