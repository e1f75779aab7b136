// IndRNN recurrence (Li et al. 2018), exactly as rnnkit.functional.indrnn_step:
//   h' = act(xp + u * h),  act = relu or tanh,  xp = W_ih x + b (caller),
//   u = clip(weight_hh, -max, max) (caller: the clip and its gradient are torch's clamp).
//
// There is no recurrent GEMM: every unit of every sequence is its own scalar recurrence. So
// the loop runs the other way round from the GEMM kernels: rows (sequences) outside, time
// inside, each vector of units kept in registers across all steps of its sequence. One
// parallel region per call (split by rows), no per-step barrier, so a neighbour process
// that takes a core for a while delays one chunk of rows, not every step (issue 15,
// "steady under load").
#include "common.h"

namespace rnnkit {

namespace {

// Rows per parallel chunk: ~32k elements of work per chunk.
inline int64_t indrnn_grain(int64_t steps, int64_t H) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, steps * H));
}

}  // namespace

// Returns out (T, B, H), h_n (B, H) and, when training, hs (S+1, B, H) in step order by
// position (hs[0] = h0; hs[s+1] = state after step s; rows past their length are not
// written and never read).
std::vector<Tensor> indrnn_forward(const Tensor& xp_in, const Tensor& h0, const Tensor& u,
                                   const Tensor& lengths, bool relu, bool reverse,
                                   bool training) {
  constexpr const char* kName = "rnnkit indrnn_forward";
  TORCH_CHECK(xp_in.dim() == 3 && h0.dim() == 2, kName, ": xp must be 3-D and h0 2-D");
  const Tensor xp = xp_in.contiguous();
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(1);
  const auto dt = xp.scalar_type();
  check_arg(kName, "xp", xp, {T, B, H}, dt);
  check_arg(kName, "h0", h0, {B, H}, dt, false);
  check_arg(kName, "recurrent weight", u, {H}, dt);
  check_lengths_arg(kName, lengths, B);
  const Schedule sch(lengths, T, B, reverse);
  const int64_t S = sch.S;
  const auto opts = xp.options();
  Tensor out = sch.identity() ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  Tensor state = sch.to_positions(h0);  // (B, H) by position; ends as the final state
  Tensor hs = training ? at::empty({S + 1, B, H}, opts) : Tensor();
  if (training) hs[0].copy_(state);
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_indrnn_forward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    const scalar_t* u_p = u.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* st_p = state.data_ptr<scalar_t>();
    scalar_t* hs_p = training ? hs.data_ptr<scalar_t>() : nullptr;
    const V zero(scalar_t(0));
    at::parallel_for(0, B, indrnn_grain(S, H), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = sch.len[p], row = sch.row(p);
        scalar_t* hrow = st_p + p * H;
        vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
          const V uv = ld(u_p, j, c);
          V h = ld(hrow, j, c);
          for (int64_t s = 0; s < n; ++s) {
            const int64_t at = (sch.time(s, p) * B + row) * H;
            const V pre = at::vec::fmadd(uv, h, ld(xp_p + at, j, c));
            h = relu ? at::vec::maximum(pre, zero) : vtanh(pre);
            st(h, out_p + at, j, c);
            if (hs_p != nullptr) st(h, hs_p + ((s + 1) * B + p) * H, j, c);
          }
          st(h, hrow, j, c);
        });
      }
    });
  });
  std::vector<Tensor> result{out, sch.to_rows(state)};
  if (training) result.push_back(hs);
  return result;
}

// Returns dxp (T, B, H), dh0 (B, H), du (H).
std::vector<Tensor> indrnn_backward(const Tensor& dout_in, const Tensor& dhT, const Tensor& hs,
                                    const Tensor& u, const Tensor& lengths, int64_t T,
                                    bool relu, bool reverse) {
  constexpr const char* kName = "rnnkit indrnn_backward";
  TORCH_CHECK(hs.dim() == 3 && hs.size(0) >= 1, kName, ": saved states have the wrong shape");
  const int64_t S = hs.size(0) - 1, B = hs.size(1), H = hs.size(2);
  const auto dt = hs.scalar_type();
  check_arg(kName, "hs", hs, {S + 1, B, H}, dt);
  check_arg(kName, "recurrent weight", u, {H}, dt);
  if (present(dout_in)) check_arg(kName, "grad of outputs", dout_in, {T, B, H}, dt, false);
  if (present(dhT)) check_arg(kName, "grad of h_n", dhT, {B, H}, dt, false);
  check_lengths_arg(kName, lengths, B);
  const Schedule sch(lengths, T, B, reverse);
  TORCH_CHECK(sch.S == S, kName, ": saved steps do not match lengths");
  const auto opts = hs.options();
  const Tensor dout = present(dout_in) ? dout_in.contiguous() : Tensor();
  Tensor dh = present(dhT) ? sch.to_positions(dhT) : at::zeros({B, H}, opts);
  Tensor dxp = sch.identity() ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  Tensor acc_u = at::zeros({B, H}, opts);  // per row: no atomics, summed after
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_indrnn_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* dout_p = present(dout) ? dout.data_ptr<scalar_t>() : nullptr;
    const scalar_t* hs_p = hs.data_ptr<scalar_t>();
    const scalar_t* u_p = u.data_ptr<scalar_t>();
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    scalar_t* dh_p = dh.data_ptr<scalar_t>();
    scalar_t* acc_p = acc_u.data_ptr<scalar_t>();
    const V one(scalar_t(1)), zero(scalar_t(0));
    at::parallel_for(0, B, indrnn_grain(S, H), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = sch.len[p], row = sch.row(p);
        scalar_t* dhrow = dh_p + p * H;
        vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
          const V uv = ld(u_p, j, c);
          V d = ld(dhrow, j, c);
          V acc = zero;
          for (int64_t s = n - 1; s >= 0; --s) {
            const int64_t at = (sch.time(s, p) * B + row) * H;
            if (dout_p != nullptr) d = d + ld(dout_p + at, j, c);
            const V h = ld(hs_p + ((s + 1) * B + p) * H, j, c);
            // relu: torch's threshold_backward passes the gradient where the output > 0.
            const V dpre = relu ? V::blendv(zero, d, h > zero) : d * (one - h * h);
            st(dpre, dxp_p + at, j, c);
            acc = at::vec::fmadd(dpre, ld(hs_p + (s * B + p) * H, j, c), acc);
            d = dpre * uv;
          }
          st(d, dhrow, j, c);
          st(acc, acc_p + p * H, j, c);
        });
      }
    });
  });
  return {dxp, sch.to_rows(dh), acc_u.sum(0)};
}

}  // namespace rnnkit
