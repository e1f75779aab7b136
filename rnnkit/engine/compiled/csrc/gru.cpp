// GRU in both forms, exactly as rnnkit.functional.gru_step (gate order r, z, n):
//   reset_after:  n = tanh(xp_n + r * (W_hn h + b_hn))          (torch.nn.GRU)
//   reset before: n = tanh(xp_n + W_hn (r * h) + b_hn)          (Cho et al., CNTK, TF1)
//   h' = n + z * (h - n),   xp = W_ih x + b_ih (caller), r/z also get W_h[rz] h + b_h[rz]
#include "common.h"

namespace rnnkit {

// Saved (training): gates (S, B, 3H) r z n; hs (S+1, B, H); aux (S, B, H): W_hn h + b_hn
// (reset_after) or r * h (reset before).
std::vector<Tensor> gru_forward(const Tensor& xp_in, const Tensor& h0, const Tensor& w_hh,
                                const Tensor& b_hh, const Tensor& lengths, bool reset_after,
                                bool reverse, bool training) {
  const Tensor xp = xp_in.contiguous();
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(1), GH = 3 * H;
  TORCH_CHECK(xp.size(2) == GH && w_hh.size(0) == GH && w_hh.size(1) == H,
              "rnnkit gru: shapes do not match");
  const Schedule sch(lengths, T, B, reverse);
  const int64_t S = sch.S;
  const auto opts = xp.options();
  const bool has_bias = present(b_hh);
  Tensor out = sch.identity() ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  const int64_t SS = training ? S : 1;
  Tensor gates = at::empty({SS, B, GH}, opts);
  Tensor hs = at::empty({training ? S + 1 : 2, B, H}, opts);
  Tensor aux = at::empty({SS, B, H}, opts);
  Tensor hh = at::empty({B, reset_after ? GH : 2 * H}, opts);
  Tensor hn_buf = reset_after ? Tensor() : at::empty({B, H}, opts);
  // Transposed once per sequence (plain NN layout for the per-step GEMMs).
  const Tensor w_t = (reset_after ? w_hh : w_hh.narrow(0, 0, 2 * H)).t().contiguous();
  const Tensor w_n_t = w_hh.narrow(0, 2 * H, H).t().contiguous();
  const Tensor b_rz = has_bias ? (reset_after ? b_hh : b_hh.narrow(0, 0, 2 * H)) : Tensor();
  const Tensor b_n = has_bias ? b_hh.narrow(0, 2 * H, H) : Tensor();
  hs[0].copy_(h0);

  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_gru_forward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    const V one(scalar_t(1));
    for (int64_t s = 0; s < S; ++s) {
      const int64_t cur = training ? s : (s & 1);
      const int64_t nxt = training ? s + 1 : 1 - cur;
      const int64_t sv = training ? s : 0;
      Tensor h_prev = hs[cur];
      if (has_bias) {
        at::addmm_out(hh, b_rz, h_prev, w_t);
      } else {
        at::mm_out(hh, h_prev, w_t);
      }
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* hn = hs[nxt].data_ptr<scalar_t>();
      const scalar_t* hh_p = hh.data_ptr<scalar_t>();
      const int64_t hh_stride = hh.size(1);
      scalar_t* g_p = gates[sv].data_ptr<scalar_t>();
      scalar_t* aux_p = aux[sv].data_ptr<scalar_t>();
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
            const scalar_t* x = xp_p + (sch.time(s, b) * B + b) * GH;
            const scalar_t* a = hh_p + b * hh_stride;
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
        if (has_bias) {
          at::addmm_out(hn_buf, b_n, aux[sv], w_n_t);
        } else {
          at::mm_out(hn_buf, aux[sv], w_n_t);
        }
      }
      const scalar_t* hnb = reset_after ? nullptr : hn_buf.data_ptr<scalar_t>();
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
          const scalar_t* x = xp_p + (t * B + b) * GH;
          const scalar_t* a = hh_p + b * hh_stride;
          scalar_t* gr = g_p + b * GH;
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
          std::copy(hnew, hnew + H, out_p + (t * B + b) * H);
        }
      });
    }
  });
  const int64_t last = training ? S : (S & 1);
  std::vector<Tensor> result{out, hs[last].clone()};
  if (training) {
    result.push_back(gates);
    result.push_back(hs);
    result.push_back(aux);
  }
  return result;
}

// Returns dxp (T, B, 3H), dh0, dw_hh, db_hh (undefined without bias).
std::vector<Tensor> gru_backward(const Tensor& dout_in, const Tensor& dhT, const Tensor& gates,
                                 const Tensor& hs, const Tensor& aux, const Tensor& w_hh,
                                 bool has_bias, const Tensor& lengths, int64_t T,
                                 bool reset_after, bool reverse) {
  const int64_t S = gates.size(0), B = gates.size(1), H = hs.size(2), GH = 3 * H;
  const Schedule sch(lengths, T, B, reverse);
  TORCH_CHECK(sch.S == S, "rnnkit gru backward: saved steps do not match lengths");
  const auto opts = gates.options();
  const Tensor dout = present(dout_in) ? dout_in.contiguous() : Tensor();
  Tensor dh = present(dhT) ? dhT.clone() : at::zeros({B, H}, opts);
  Tensor dh_next = at::empty({B, H}, opts);
  // Reset-before: the gradient of the gate pre-activations is the same for xp and for the
  // recurrent products, so the step-ordered buffer can be dxp itself.
  const bool alias = !reset_after && sch.identity();
  Tensor dxp = sch.identity() ? at::empty({T, B, GH}, opts) : at::zeros({T, B, GH}, opts);
  Tensor dhh = alias ? dxp : at::empty({S, B, GH}, opts);
  Tensor drh = reset_after ? Tensor() : at::empty({B, H}, opts);
  const Tensor w_rz = w_hh.narrow(0, 0, 2 * H);
  const Tensor w_n = w_hh.narrow(0, 2 * H, H);

  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* dout_p = present(dout) ? dout.data_ptr<scalar_t>() : nullptr;
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    const V one(scalar_t(1));
    const int64_t grain = row_grain(GH);
    for (int64_t s = S - 1; s >= 0; --s) {
      scalar_t* dh_p = dh.data_ptr<scalar_t>();
      const scalar_t* g_p = gates[s].data_ptr<scalar_t>();
      const scalar_t* hp = hs[s].data_ptr<scalar_t>();
      const scalar_t* aux_p = aux[s].data_ptr<scalar_t>();
      scalar_t* dhh_s = dhh[s].data_ptr<scalar_t>();
      // Pass 1: everything that needs no GEMM. dh becomes the direct term dh_tot * z
      // (active rows) so that the recurrent GEMM can accumulate onto it.
      at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* dr = dhh_s + b * GH;
          if (!sch.active(s, b)) {
            std::fill(dr, dr + GH, scalar_t(0));
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* gr = g_p + b * GH;
          const scalar_t* h = hp + b * H;
          const scalar_t* dorow = dout_p ? dout_p + (t * B + b) * H : nullptr;
          scalar_t* dhrow = dh_p + b * H;
          scalar_t* dx = dxp_p + (t * B + b) * GH;
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
        }
      });
      if (reset_after) {
        at::addmm_out(dh_next, dh, dhh[s], w_hh);
      } else {
        at::mm_out(drh, dhh[s].narrow(1, 2 * H, H), w_n);  // d(r * h)  (B, H)
        const scalar_t* drh_p = drh.data_ptr<scalar_t>();
        at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            if (!sch.active(s, b)) continue;
            const int64_t t = sch.time(s, b);
            const scalar_t* gr = g_p + b * GH;
            const scalar_t* h = hp + b * H;
            scalar_t* dhrow = dh_p + b * H;
            scalar_t* dr = dhh_s + b * GH;
            scalar_t* dx = dxp_p + (t * B + b) * GH;
            vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
              const V r = ld(gr, j, c);
              const V drhv = ld(drh_p + b * H, j, c);
              const V drpre = drhv * ld(h, j, c) * r * (one - r);
              st(at::vec::fmadd(drhv, r, ld(dhrow, j, c)), dhrow, j, c);
              st(drpre, dr, j, c);
              if (!alias) st(drpre, dx, j, c);
            });
          }
        });
        at::addmm_out(dh_next, dh, dhh[s].narrow(1, 0, 2 * H), w_rz);
      }
      std::swap(dh, dh_next);
    }
  });
  Tensor dw_hh;
  Tensor db_hh;
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
    if (has_bias) db_hh = d2.sum(0);
  }
  return {dxp, dh, dw_hh, db_hh};
}

}  // namespace rnnkit
