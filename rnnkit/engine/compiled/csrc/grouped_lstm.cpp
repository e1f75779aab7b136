// Grouped LSTM (GLSTM, Kuchaiev & Ginsburg 2017), exactly as
// rnnkit.functional.grouped_lstm_step: N independent LSTMs on slices of the state.
// Layout of a gate row (4H wide): group-major, [group 0: i f g o | group 1: i f g o | ...],
// each slice Hg = H / N wide; the state h, c (H wide) is [group 0 | group 1 | ...].
//   a_k = xp_k + h_k W_hh[k]^T          xp = per-group W_ih x + b_ih + b_hh (caller)
//   c'_k = sig(f) c_k + sig(i) tanh(g),  h'_k = sig(o) tanh(c'_k)
// The recurrent product is block diagonal: one GEMM per group and step on the group's
// slice of h (M = active rows, K = Hg, N = 4Hg), never a dense zero-padded 4H x H one.
#include "common.h"

namespace rnnkit {

namespace {

// C_k (M, Nc) = A_k (M, K) Bm_k (K, Nc) + beta C_k for k < groups, where the operands of
// group k start at A + k a_step, Bm + k b_step, C + k c_step (row strides lda, ldb, ldc).
// With several threads and groups, each thread runs whole groups on one BLAS thread (one
// parallel region per step, no column split); otherwise gemm_rows per group.
template <typename scalar_t>
void grouped_gemm(int64_t groups, int64_t M, int64_t Nc, int64_t K, const scalar_t* A,
                  int64_t lda, int64_t a_step, const scalar_t* Bm, int64_t ldb, int64_t b_step,
                  scalar_t beta, scalar_t* C, int64_t ldc, int64_t c_step) {
  if (M == 0 || Nc == 0) return;
  check_gemm_args(M, Nc, K, lda, ldb, ldc);
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && groups >= threads && 2.0 * M * Nc * K * groups >= 2e6 &&
      !at::in_parallel_region()) {
    std::atomic<bool> ok{true};
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t k = g0; k < g1; ++k) {
        if (!blas_gemm<scalar_t>(M, Nc, K, A + k * a_step, lda, Bm + k * b_step, ldb, beta,
                                 C + k * c_step, ldc)) {
          ok = false;
        }
      }
    });
    if (ok) return;  // else no Fortran BLAS: nothing was written, gemm_rows falls back
  }
  for (int64_t k = 0; k < groups; ++k) {
    gemm_rows<scalar_t>(M, Nc, K, A + k * a_step, lda, Bm + k * b_step, ldb, beta,
                        C + k * c_step, ldc);
  }
}

struct GlstmShape {
  int64_t T, B, H, N, Hg;
};

GlstmShape glstm_shape(const char* name, const Tensor& xp, const Tensor& c0,
                       const Tensor& w_hh) {
  TORCH_CHECK(xp.dim() == 3 && c0.dim() == 2 && w_hh.dim() == 3, name,
              ": xp must be 3-D, c0 2-D and weight_hh 3-D (groups, 4H/N, H/N)");
  GlstmShape k{xp.size(0), xp.size(1), c0.size(1), w_hh.size(0), w_hh.size(2)};
  TORCH_CHECK(k.N >= 1 && k.Hg * k.N == k.H, name, ": weight_hh ", w_hh.sizes(),
              " does not cut a hidden size of ", k.H, " into equal groups");
  return k;
}

}  // namespace

// Returns out (T, B, H), h_n, c_n and, when training: gates (S, B, 4H) activations,
// hs (S+1, B, H), cs (S+1, B, H), tanh(c) (S, B, H), all in step order by position.
std::vector<Tensor> grouped_lstm_forward(const Tensor& xp_in, const Tensor& h0,
                                         const Tensor& c0, const Tensor& w_hh,
                                         const Tensor& lengths, bool reverse, bool training) {
  constexpr const char* kName = "rnnkit grouped_lstm_forward";
  const Tensor xp = xp_in.contiguous();
  const GlstmShape k = glstm_shape(kName, xp, c0, w_hh);
  const int64_t T = k.T, B = k.B, H = k.H, N = k.N, Hg = k.Hg, GH = 4 * H;
  const auto dt = xp.scalar_type();
  check_arg(kName, "xp", xp, {T, B, GH}, dt);
  check_arg(kName, "h0", h0, {B, H}, dt, false);
  check_arg(kName, "c0", c0, {B, H}, dt, false);
  check_arg(kName, "weight_hh", w_hh, {N, 4 * Hg, Hg}, dt, false);
  check_lengths_arg(kName, lengths, B);
  const Schedule sch(lengths, T, B, reverse);
  const int64_t S = sch.S;
  const auto opts = xp.options();
  Tensor out = sch.identity() ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  const Tensor w_t = w_hh.transpose(1, 2).contiguous();  // (N, Hg, 4Hg): NN layout per step
  const int64_t SS = training ? S : 1;
  Tensor gates = at::empty({SS, B, GH}, opts);
  Tensor hs = at::empty({training ? S + 1 : 2, B, H}, opts);
  Tensor cs = at::empty({training ? S + 1 : 2, B, H}, opts);
  Tensor tanhc = at::empty({SS, B, H}, opts);
  Tensor hh = at::empty({B, GH}, opts);
  hs[0].copy_(sch.to_positions(h0));
  cs[0].copy_(sch.to_positions(c0));
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_grouped_lstm_forward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    const scalar_t* w_p = w_t.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    scalar_t* cs_p = cs.data_ptr<scalar_t>();
    scalar_t* hh_p = hh.data_ptr<scalar_t>();
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    scalar_t* tanhc_p = tanhc.data_ptr<scalar_t>();
    for (int64_t s = 0; s < S; ++s) {
      const int64_t cur = training ? s : (s & 1);
      const int64_t nxt = training ? s + 1 : 1 - cur;
      const int64_t sv = training ? s : 0;
      const scalar_t* hp = hs_p + cur * B * H;
      scalar_t* hn = hs_p + nxt * B * H;
      const scalar_t* cp_all = cs_p + cur * B * H;
      scalar_t* cn_all = cs_p + nxt * B * H;
      scalar_t* gate_s = gates_p + sv * B * GH;
      scalar_t* tc_s = tanhc_p + sv * B * H;
      const int64_t rows = sch.active_rows[s];
      // hh[:, group k] = h[:, group k] W_hh[k]^T on the active rows
      grouped_gemm<scalar_t>(N, rows, 4 * Hg, Hg, hp, H, Hg, w_p, 4 * Hg, Hg * 4 * Hg,
                             scalar_t(0), hh_p, GH, 4 * Hg);
      auto rows_fn = [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* cp = cp_all + b * H;
          scalar_t* cn = cn_all + b * H;
          if (b >= rows) {  // finished sequence: carry the state, no output
            std::copy(cp, cp + H, cn);
            std::copy(hp + b * H, hp + (b + 1) * H, hn + b * H);
            continue;
          }
          const int64_t t = sch.time(s, b);
          const scalar_t* x_row = xp_p + (t * B + sch.row(b)) * GH;
          for (int64_t g = 0; g < N; ++g) {
            const scalar_t* x = x_row + g * 4 * Hg;
            const scalar_t* a = hh_p + b * GH + g * 4 * Hg;
            scalar_t* gr = gate_s + b * GH + g * 4 * Hg;
            const scalar_t* cpg = cp + g * Hg;
            scalar_t* cng = cn + g * Hg;
            scalar_t* hng = hn + b * H + g * Hg;
            scalar_t* tcg = tc_s + b * H + g * Hg;
            vloop<scalar_t>(Hg, [&](int64_t j, int64_t c) {
              const V i = vsigmoid(ld(x, j, c) + ld(a, j, c));
              const V f = vsigmoid(ld(x + Hg, j, c) + ld(a + Hg, j, c));
              const V gg = vtanh(ld(x + 2 * Hg, j, c) + ld(a + 2 * Hg, j, c));
              const V o = vsigmoid(ld(x + 3 * Hg, j, c) + ld(a + 3 * Hg, j, c));
              const V cv = at::vec::fmadd(f, ld(cpg, j, c), i * gg);
              const V tc = vtanh(cv);
              st(i, gr, j, c);
              st(f, gr + Hg, j, c);
              st(gg, gr + 2 * Hg, j, c);
              st(o, gr + 3 * Hg, j, c);
              st(cv, cng, j, c);
              st(tc, tcg, j, c);
              st(o * tc, hng, j, c);
            });
          }
          std::copy(hn + b * H, hn + (b + 1) * H, out_p + (t * B + sch.row(b)) * H);
        }
      };
      const int64_t grain = row_grain(GH);
      if (B <= grain) {
        rows_fn(0, B);
      } else {
        at::parallel_for(0, B, grain, rows_fn);
      }
    }
  });
  const int64_t last = training ? S : (S & 1);
  std::vector<Tensor> result{out, sch.to_rows(hs[last]), sch.to_rows(cs[last])};
  if (training) {
    result.push_back(gates);
    result.push_back(hs);
    result.push_back(cs);
    result.push_back(tanhc);
  }
  return result;
}

// Returns dxp (T, B, 4H), dh0, dc0, dw_hh (N, 4Hg, Hg).
std::vector<Tensor> grouped_lstm_backward(const Tensor& dout_in, const Tensor& dhT,
                                          const Tensor& dcT, const Tensor& gates,
                                          const Tensor& hs, const Tensor& cs,
                                          const Tensor& tanhc, const Tensor& w_hh,
                                          const Tensor& lengths, int64_t T, bool reverse) {
  constexpr const char* kName = "rnnkit grouped_lstm_backward";
  TORCH_CHECK(gates.dim() == 3 && hs.dim() == 3 && w_hh.dim() == 3, kName,
              ": saved tensors have the wrong rank");
  const int64_t S = gates.size(0), B = gates.size(1), H = hs.size(2);
  const int64_t N = w_hh.size(0), Hg = w_hh.size(2), GH = 4 * H;
  TORCH_CHECK(N >= 1 && N * Hg == H, kName, ": weight_hh does not match the hidden size");
  const auto dt = gates.scalar_type();
  check_arg(kName, "gates", gates, {S, B, GH}, dt);
  check_arg(kName, "hs", hs, {S + 1, B, H}, dt);
  check_arg(kName, "cs", cs, {S + 1, B, H}, dt);
  check_arg(kName, "tanh(c)", tanhc, {S, B, H}, dt);
  check_arg(kName, "weight_hh", w_hh, {N, 4 * Hg, Hg}, dt, false);
  if (present(dout_in)) check_arg(kName, "grad of outputs", dout_in, {T, B, H}, dt, false);
  if (present(dhT)) check_arg(kName, "grad of h_n", dhT, {B, H}, dt, false);
  if (present(dcT)) check_arg(kName, "grad of c_n", dcT, {B, H}, dt, false);
  check_lengths_arg(kName, lengths, B);
  const Schedule sch(lengths, T, B, reverse);
  TORCH_CHECK(sch.S == S, kName, ": saved steps do not match lengths");
  const auto opts = gates.options();
  const Tensor dout = present(dout_in) ? dout_in.contiguous() : Tensor();
  Tensor dh = present(dhT) ? sch.to_positions(dhT) : at::zeros({B, H}, opts);
  Tensor dc = present(dcT) ? sch.to_positions(dcT) : at::zeros({B, H}, opts);
  const Tensor w_c = w_hh.contiguous();  // (N, 4Hg, Hg): dh_k = dG_k W_hh[k]
  const bool alias = sch.identity();
  Tensor dxp = alias ? at::empty({T, B, GH}, opts) : at::zeros({T, B, GH}, opts);
  Tensor dgs = alias ? dxp : at::empty({S, B, GH}, opts);  // dG in step order
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_grouped_lstm_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* dout_p = present(dout) ? dout.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gates_p = gates.data_ptr<scalar_t>();
    const scalar_t* cs_p = cs.data_ptr<scalar_t>();
    const scalar_t* tanhc_p = tanhc.data_ptr<scalar_t>();
    const scalar_t* w_p = w_c.data_ptr<scalar_t>();
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    scalar_t* dgs_p = dgs.data_ptr<scalar_t>();
    scalar_t* dh_p = dh.data_ptr<scalar_t>();
    scalar_t* dc_p = dc.data_ptr<scalar_t>();
    const V one(scalar_t(1));
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t rows = sch.active_rows[s];
      scalar_t* dg_s = dgs_p + s * B * GH;
      auto rows_fn = [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* dgrow = dg_s + b * GH;
          if (b >= rows) {  // dh and dc pass through; nothing for the weight GEMMs
            std::fill(dgrow, dgrow + GH, scalar_t(0));
            continue;
          }
          const int64_t t = sch.time(s, b);
          const int64_t at = t * B + sch.row(b);
          const scalar_t* dorow = dout_p ? dout_p + at * H : nullptr;
          scalar_t* dx = dxp_p + at * GH;
          for (int64_t g = 0; g < N; ++g) {
            const scalar_t* gr = gates_p + (s * B + b) * GH + g * 4 * Hg;
            const scalar_t* cp = cs_p + (s * B + b) * H + g * Hg;
            const scalar_t* tc = tanhc_p + (s * B + b) * H + g * Hg;
            scalar_t* dhg = dh_p + b * H + g * Hg;
            scalar_t* dcg = dc_p + b * H + g * Hg;
            const scalar_t* dog = dorow ? dorow + g * Hg : nullptr;
            scalar_t* dgg = dgrow + g * 4 * Hg;
            vloop<scalar_t>(Hg, [&](int64_t j, int64_t c) {
              V dm = ld(dhg, j, c);
              if (dog) dm = dm + ld(dog, j, c);
              const V i = ld(gr, j, c), f = ld(gr + Hg, j, c);
              const V gg = ld(gr + 2 * Hg, j, c), o = ld(gr + 3 * Hg, j, c);
              const V tcv = ld(tc, j, c);
              const V dopre = dm * tcv * o * (one - o);
              const V d = at::vec::fmadd(dm * o, one - tcv * tcv, ld(dcg, j, c));
              const V dipre = d * gg * i * (one - i);
              const V dfpre = d * ld(cp, j, c) * f * (one - f);
              const V dgpre = d * i * (one - gg * gg);
              st(dipre, dgg, j, c);
              st(dfpre, dgg + Hg, j, c);
              st(dgpre, dgg + 2 * Hg, j, c);
              st(dopre, dgg + 3 * Hg, j, c);
              st(d * f, dcg, j, c);
            });
          }
          if (!alias) std::copy(dgrow, dgrow + GH, dx);
        }
      };
      const int64_t grain = row_grain(GH);
      if (B <= grain) {
        rows_fn(0, B);
      } else {
        at::parallel_for(0, B, grain, rows_fn);
      }
      // dh[:, group k] = dG[:, group k] W_hh[k] on the active rows (beta 0: their dh was
      // consumed above); the inactive rows keep theirs.
      grouped_gemm<scalar_t>(N, rows, Hg, 4 * Hg, dg_s, GH, 4 * Hg, w_p, Hg, 4 * Hg * Hg,
                             scalar_t(0), dh_p, H, Hg);
    }
  });
  Tensor dw_hh;
  if (S > 0) {
    // dW_hh[k] = dG_k^T h_prev_k over all S*B rows: one batched GEMM.
    const Tensor dg = dgs.narrow(0, 0, S).reshape({S * B, N, 4 * Hg}).permute({1, 2, 0});
    const Tensor hprev = hs.narrow(0, 0, S).reshape({S * B, N, Hg}).transpose(0, 1);
    dw_hh = at::bmm(dg, hprev);  // (N, 4Hg, Hg)
  } else {
    dw_hh = at::zeros_like(w_hh);
  }
  return {dxp, sch.to_rows(dh), sch.to_rows(dc), dw_hh};
}

}  // namespace rnnkit
