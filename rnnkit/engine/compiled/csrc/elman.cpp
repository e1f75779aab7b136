// Elman recurrence: h' = act(xp + W_hh h), act = tanh or relu; xp = W_ih x + b_ih + b_hh.
//
// Two ways to run it: the step-loop template (ElmanFamily below), and for small hidden sizes
// (H <= 32, one thread: issue 13 row 2's SimpleRNN(16)) a loop of its own (small_forward /
// small_backward) whose per-step product is small_gemm.h's register-tiled GEMM with the
// input term and the activation fused in, and whose BPTT accumulates dW_hh step by step
// while the step's rows are in cache. Both read and write the same buffers (states in the
// template's position order, no saved activations), so either backward accepts either
// forward's output; elman_forward / elman_backward pick one per call.
#include "elman.h"
#include "small_gemm.h"
#include "step_loop.h"

#include <cstring>

namespace rnnkit {

struct ElmanFamily {
  static constexpr const char* kName = "elman";
  static ArgNames names() { return {{"weight_hh"}, {}, {"relu"}}; }

  struct Config {
    int64_t H;
    bool relu;
  };
  static Config config(const KernelArgs& a) {
    const Tensor& w = a.tensor("weight_hh");
    TORCH_CHECK(w.dim() == 2, a.kernel, ": weight_hh must be 2-D, got ", w.sizes());
    return {w.size(0), a.flag("relu")};
  }
  static StepLayout layout(const Config& c) {
    StepLayout L;
    L.X = L.SW = L.out = L.K = L.N = c.H;
    // The GEMM writes straight into the new state, which phase 1 finishes in place (no
    // (B, H) scratch), and d pre-activation is both d xp and d rec.
    L.rec_in_state = true;
    L.rec_grad_is_xp_grad = true;
    L.work = c.H;
    return L;
  }
  static void check(const Config& c, const KernelArgs& a, at::ScalarType dt, const char* k) {
    check_arg(k, "weight_hh", a.tensor("weight_hh"), {c.H, c.H}, dt);
  }
  static Tensor gemm1_weight(const Config&, const KernelArgs& a) { return a.tensor("weight_hh"); }
  static Tensor gemm2_weight(const Config&, const KernelArgs&) { return Tensor(); }

  template <typename scalar_t>
  struct Forward : NoSecondGemmForward<scalar_t> {
    int64_t H;
    bool relu;
    Forward(const Config& c, const KernelArgs&) : H(c.H), relu(c.relu) {}
    void phase1(const FwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const V zero(scalar_t(0));
      // r.rec is r.next (rec_in_state): h' = act(xp + W_hh h) in place.
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        const V pre = ld(r.x, j, c) + ld(r.rec, j, c);
        st(relu ? at::vec::maximum(pre, zero) : fast_tanh<scalar_t>(pre), r.next, j, c);
      });
    }
  };

  template <typename scalar_t>
  struct Backward : NoSecondGemmBackward<scalar_t> {
    int64_t H;
    bool relu;
    Backward(const Config& c, const KernelArgs&) : H(c.H), relu(c.relu) {}
    void phase1(const BwdRow<scalar_t>& r) const {
      using V = Vec<scalar_t>;
      const V one(scalar_t(1)), zero(scalar_t(0));
      vloop<scalar_t>(H, [&](int64_t j, int64_t c) {
        V d = ld(r.dstate, j, c);
        if (r.dy != nullptr) d = d + ld(r.dy, j, c);
        const V h = ld(r.next, j, c);
        // relu: torch's threshold_backward passes the gradient where the output > 0.
        const V g = relu ? V::blendv(zero, d, h > zero) : d * (one - h * h);
        st(g, r.drec, j, c);
        if (r.dx != r.drec) st(g, r.dx, j, c);
        st(zero, r.dstate, j, c);  // no direct path from h to h_prev: all of it is d rec W
      });
    }
  };

  static std::map<std::string, Tensor> finish(const Config&, const KernelArgs&,
                                              const WeightGrads& g) {
    return {{"weight_hh", g.dw1}};
  }
};

// ---- Small hidden sizes ------------------------------------------------------------------
// The fused loop wins where the BLAS call per step is mostly fixed cost; it stays on one
// thread, so it is used only where the template's GEMM would too (products under 2 MFLOP,
// gemm_rows in common.h) or when torch runs one thread.
constexpr int64_t kSmallHidden = 32;

static bool small_sizes(int64_t B, int64_t H) {
  return H <= kSmallHidden && (at::get_num_threads() == 1 || 2.0 * B * H * H < 2e6);
}

static bool small_path(const KernelArgs& a, int64_t B, int64_t H) {
  return small_sizes(B, H) && !bf16_flag(a.flags);
}

// The output gradient (T, B, H) of a backward, read through its strides: a sum or mean loss
// hands over an expanded tensor (all strides 0), which contiguous() would write out in full.
// Row (t, r) starts at row(t, r); whole_rows false: one value broadcast along the row.
struct OutputGrad {
  Tensor t;  // undefined or empty: no output gradient
  OutputGrad(const Tensor& g, int64_t H)
      : t(!present(g) || g.stride(2) == 1 || g.stride(2) == 0 || H == 1 ? g
                                                                          : g.contiguous()) {}
  template <typename scalar_t>
  struct Rows {
    const scalar_t* p;
    int64_t s0, s1;
    bool whole_rows;
    const scalar_t* row(int64_t time, int64_t r) const {
      return p != nullptr ? p + time * s0 + r * s1 : nullptr;
    }
  };
  template <typename scalar_t>
  Rows<scalar_t> rows() const {
    if (!present(t)) return {nullptr, 0, 0, true};
    return {t.data_ptr<scalar_t>(), t.stride(0), t.stride(1), t.size(2) == 1 || t.stride(2) == 1};
  }
};

// The gradient of one row's pre-activation at columns [j, j + c): act'(h) (d state + d y).
// dy: the row's output gradient, or null; dy_row false: one value broadcast along the row.
template <typename scalar_t, bool Relu>
[[gnu::always_inline]] inline Vec<scalar_t> pre_activation_grad(const scalar_t* dstate,
                                                               const scalar_t* dy, bool dy_row,
                                                               const scalar_t* h_row,
                                                               int64_t j, int64_t c) {
  using V = Vec<scalar_t>;
  V d = ld(dstate, j, c);
  if (dy != nullptr) d = d + (dy_row ? ld(dy, j, c) : V(*dy));
  const V h = ld(h_row, j, c);
  if constexpr (Relu) {
    // torch's threshold_backward passes the gradient where the output > 0
    return V::blendv(V(scalar_t(0)), d, h > V(scalar_t(0)));
  } else {
    return d * (V(scalar_t(1)) - h * h);
  }
}

// f(integral_constant<bool, a>) (and with two flags f(..a, ..b)): run-time flags as
// compile-time choices of the step loops (the activation, the plain schedule).
template <typename F>
static void with_flag(bool a, const F& f) {
  if (a) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}
template <typename F>
static void with_flags(bool a, bool b, const F& f) {
  with_flag(a, [&](auto a_c) { with_flag(b, [&](auto b_c) { f(a_c, b_c); }); });
}

template <typename scalar_t, bool Relu>
[[gnu::always_inline]] inline Vec<scalar_t> activate(const Vec<scalar_t>& pre) {
  if constexpr (Relu) {
    return at::vec::maximum(pre, Vec<scalar_t>(scalar_t(0)));
  } else {
    return fast_tanh<scalar_t>(pre);
  }
}

// Same results and buffers as run_forward<ElmanFamily>: {out (T, B, H), final (B, H),
// states (S+1, B, H) by position, saved (0, B, 0)}; states and saved empty unless training.
static std::vector<Tensor> small_forward(const KernelArgs& a, const Tensor& xp_in, int64_t H,
                                         bool relu) {
  const char* kernel = a.kernel.c_str();
  const Tensor xp = xp_in.contiguous();
  const int64_t T = xp.size(0), B = xp.size(1);
  const auto dt = xp.scalar_type();
  check_arg(kernel, "xp", xp, {T, B, H}, dt);
  check_arg(kernel, "state", a.tensor("state"), {B, H}, dt, false);
  const Tensor& w = a.tensor("weight_hh");
  check_arg(kernel, "weight_hh", w, {H, H}, dt);
  const Tensor lengths = a.optional("lengths");
  check_lengths_arg(kernel, lengths, B);
  const bool training = a.flag("training");
  const Schedule sch(lengths, T, B, a.flag("reverse"));
  const int64_t S = sch.S;
  const auto opts = xp.options();
  Tensor out = sch.identity() ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  Tensor states = at::empty({training ? S + 1 : 2, B, H}, opts);
  const Tensor& state = a.tensor("state");
  if (!sch.permuted) {
    states.select(0, 0).copy_(state);  // one copy (to_positions clones first)
  } else {
    states[0].copy_(sch.to_positions(state));
  }
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_elman_small_forward", [&] {
    using V = Vec<scalar_t>;
    // W_hh^T (H, H): row k holds column k of W_hh, the B operand of rec = h W_hh^T
    const std::vector<scalar_t> wt = small_gemm::transposed<scalar_t>(w);
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* st_p = states.data_ptr<scalar_t>();
    // The activation and the schedule compile-time choices: no tanh code in the relu loop,
    // and where every row reads time s at step s (no lengths, forward) plain row offsets
    // instead of a per-row look-up of time and position.
    const bool plain = sch.identity() && !sch.permuted;
    const auto steps = [&](auto relu_c, auto plain_c) {
      constexpr bool kPlain = decltype(plain_c)::value;
      const auto at_time = [&](int64_t s, int64_t b) RNNKIT_ALWAYS_INLINE {
        if constexpr (kPlain) {
          return (s * B + b) * H;
        } else {
          return (sch.time(s, b) * B + sch.row(b)) * H;
        }
      };
      for (int64_t s = 0; s < S; ++s) {
        const int64_t cur = training ? s : (s & 1), nxt = training ? s + 1 : 1 - cur;
        const scalar_t* prev = st_p + cur * B * H;
        scalar_t* next = st_p + nxt * B * H;
        const int64_t rows = sch.active_rows[s];
        // h' = act(xp + h W_hh^T) row by row, written to the new state and the output
        small_gemm::apply<scalar_t>(
            rows, H, H, {prev, H, 1}, wt.data(), H,
            [&](int64_t b, int64_t j, int64_t cnt) RNNKIT_ALWAYS_INLINE {
              return ld(xp_p + at_time(s, b), j, cnt);
            },
            [&](int64_t b, int64_t j, int64_t cnt, const V& pre) RNNKIT_ALWAYS_INLINE {
              const V h = activate<scalar_t, decltype(relu_c)::value>(pre);
              st(h, next + b * H, j, cnt);
              st(h, out_p + at_time(s, b), j, cnt);
            });
        for (int64_t b = rows; b < B; ++b) {  // finished sequences carry their state
          std::copy(prev + b * H, prev + (b + 1) * H, next + b * H);
        }
      }
    };
    with_flags(relu, plain, steps);
  });
  const int64_t last = training ? S : (S & 1);
  Tensor final_state = sch.to_rows(states[last]);
  if (!training) return {out, final_state, Tensor(), Tensor()};
  return {out, final_state, states, at::empty({0, B, 0}, opts)};
}

// Same results as run_backward<ElmanFamily>: {"xp", "state", "weight_hh"}.
static std::map<std::string, Tensor> small_backward(const KernelArgs& a,
                                                    const Tensor& states_in, int64_t H,
                                                    bool relu) {
  const char* kernel = a.kernel.c_str();
  const int64_t S = states_in.size(0) - 1, B = states_in.size(1);
  const int64_t T = static_cast<int64_t>(a.number("steps"));
  const auto dt = states_in.scalar_type();
  check_arg(kernel, "states", states_in, {S + 1, B, H}, dt);
  const Tensor& w = a.tensor("weight_hh");
  check_arg(kernel, "weight_hh", w, {H, H}, dt);
  const Tensor lengths = a.optional("lengths");
  check_lengths_arg(kernel, lengths, B);
  const Tensor& dout_in = a.has("grad_out") ? a.tensor("grad_out") : Tensor();
  if (dout_in.defined()) check_arg(kernel, "grad of outputs", dout_in, {T, B, H}, dt, false);
  const OutputGrad dout(dout_in, H);
  const Tensor dfinal = a.optional("grad_state");
  if (dfinal.defined()) check_arg(kernel, "grad of the final state", dfinal, {B, H}, dt, false);
  const Schedule sch(lengths, T, B, a.flag("reverse"));
  TORCH_CHECK(sch.S == S, kernel, ": saved steps (", S, ") do not match the lengths (", sch.S, ")");
  const auto opts = states_in.options();
  Tensor dstate = dfinal.defined() ? sch.to_positions(dfinal) : at::zeros({B, H}, opts);
  Tensor dxp = sch.identity() ? at::empty({T, B, H}, opts) : at::zeros({T, B, H}, opts);
  Tensor dw = at::zeros({H, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_elman_small_backward", [&] {
    using V = Vec<scalar_t>;
    const scalar_t* w_p = w.data_ptr<scalar_t>();
    const auto dy_rows = dout.rows<scalar_t>();
    const scalar_t* st_p = states_in.data_ptr<scalar_t>();
    scalar_t* dst_p = dstate.data_ptr<scalar_t>();
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    scalar_t* dw_p = dw.data_ptr<scalar_t>();
    const bool plain = sch.identity() && !sch.permuted;
    // d pre-activation of the step's active rows: where every row reads time s at step s it
    // is written once, into d xp's step s, which the two GEMMs then read
    std::vector<scalar_t> grad(plain ? 0 : B * H);
    // The activation and the schedule compile-time choices, as in the forward.
    const auto steps = [&](auto relu_c, auto plain_c) {
      constexpr bool kRelu = decltype(relu_c)::value, kPlain = decltype(plain_c)::value;
      for (int64_t s = S - 1; s >= 0; --s) {
        const int64_t rows = sch.active_rows[s];
        const scalar_t* prev = st_p + s * B * H;
        const scalar_t* next = st_p + (s + 1) * B * H;
        scalar_t* g_p = kPlain ? dxp_p + s * B * H : grad.data();
        for (int64_t b = 0; b < rows; ++b) {
          const int64_t t = kPlain ? s : sch.time(s, b), r = kPlain ? b : sch.row(b);
          const scalar_t* dy = dy_rows.row(t, r);
          scalar_t* dxp_row = dxp_p + (t * B + r) * H;
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) RNNKIT_ALWAYS_INLINE {
            const V g = pre_activation_grad<scalar_t, kRelu>(
                dst_p + b * H, dy, dy_rows.whole_rows, next + b * H, j, c);
            st(g, g_p + b * H, j, c);
            if constexpr (!kPlain) st(g, dxp_row, j, c);
          });
        }
        // d h_prev = g W_hh (no direct path from h to h_prev); finished rows pass through
        small_gemm::gemm<scalar_t>(rows, H, H, {g_p, H, 1}, w_p, H, scalar_t(0), dst_p, H);
        // dW_hh += g^T h_prev
        small_gemm::gemm<scalar_t>(H, H, rows, {g_p, 1, H}, prev, H, scalar_t(1), dw_p, H);
      }
    };
    with_flags(relu, plain, steps);
  });
  // dstate is this call's own buffer: handed back as it is unless rows were sorted
  return {{"xp", dxp}, {"state", sch.permuted ? sch.to_rows(dstate) : dstate},
          {"weight_hh", dw}};
}

// ---- The input projection inside the steps (ProjectedRecurrence, small hidden sizes) ----
// h' = act(b + x_t W_ih^T + h W_hh^T): each step is one pass of tiles over two products, so
// the projection's (T, B, H) result is never written nor read back, and BPTT accumulates
// d W_ih += g^T x_t, the bias's column sum and d x_t = g W_ih at the step where g is in
// cache. Only for schedules where every row runs all T steps (no lengths shorter than T;
// forward or reverse): each step then reads one time position x_t, a (B, H_in) matrix read
// with x's own strides (a batch-first view is not copied). Otherwise, or past the small
// path's limits, elman_projected_forward returns nothing and the caller takes the
// projection-then-recurrence path.

static bool all_rows_run_all_steps(const Tensor& lengths, int64_t T) {
  if (!present(lengths)) return true;
  const Tensor l = lengths.to(at::kLong).contiguous();
  const int64_t* p = l.data_ptr<int64_t>();
  for (int64_t b = 0; b < l.numel(); ++b)
    if (p[b] != T) return false;
  return true;
}

bool elman_projected_applies(const Tensor& x, const Tensor& w_hh, const Tensor& lengths) {
  if (x.dim() != 3 || w_hh.dim() != 2) return false;
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(0);
  return (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
         small_sizes(B, H) && all_rows_run_all_steps(lengths, T);
}

// {out (T, B, H), final (B, H), states (T+1, B, H) when training} or {} (not this path).
std::vector<Tensor> elman_projected_forward(const Tensor& x_in, const Tensor& w_ih,
                                                   const Tensor& bias, const Tensor& second,
                                                   const Tensor& w_hh, const Tensor& state,
                                                   const Tensor& lengths, bool relu,
                                                   bool reverse, bool training) {
  const char* kernel = "rnnkit elman projected forward";
  if (!elman_projected_applies(x_in, w_hh, lengths)) return {};
  const Tensor x = x_in.stride(2) == 1 || x_in.size(2) == 1 ? x_in : x_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(0);
  const auto dt = x.scalar_type();
  check_arg(kernel, "weight_ih", w_ih, {H, I}, dt, false);
  check_arg(kernel, "weight_hh", w_hh, {H, H}, dt, false);
  check_arg(kernel, "state", state, {B, H}, dt, false);
  if (present(bias)) check_arg(kernel, "bias", bias, {H}, dt, false);
  if (present(second)) check_arg(kernel, "second bias", second, {H}, dt, false);
  check_lengths_arg(kernel, lengths, B);
  const auto opts = x.options();
  Tensor out = at::empty({T, B, H}, opts);
  Tensor states = at::empty({training ? T + 1 : 2, B, H}, opts);
  // raw copies in and out of `states` where the layout allows: at this size each torch op
  // (select, copy_, clone) costs microseconds, tens of them on a cold cache (row 17a)
  const bool plain_state = state.is_contiguous();
  if (!plain_state) states.select(0, 0).copy_(state);
  Tensor final_state = at::empty({B, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_elman_projected_forward", [&] {
    using V = Vec<scalar_t>;
    const std::vector<scalar_t> wih_t = small_gemm::transposed<scalar_t>(w_ih);  // (I, H)
    const std::vector<scalar_t> whh_t = small_gemm::transposed<scalar_t>(w_hh);  // (H, H)
    std::vector<scalar_t> b(H, scalar_t(0));  // bias + second: added here, no torch op
    for (const Tensor& term : {bias, second}) {
      if (!present(term)) continue;
      const Tensor c = term.contiguous();
      for (int64_t j = 0; j < H; ++j) b[j] += c.data_ptr<scalar_t>()[j];
    }
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2);
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* st_p = states.data_ptr<scalar_t>();
    if (plain_state && B * H > 0) {
      std::memcpy(st_p, state.data_ptr<scalar_t>(), B * H * sizeof(scalar_t));
    }
    const scalar_t* b_p = b.data();
    const auto steps = [&](auto relu_c) {
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        const int64_t cur = training ? s : (s & 1), nxt = training ? s + 1 : 1 - cur;
        const scalar_t* prev = st_p + cur * B * H;
        scalar_t* next = st_p + nxt * B * H;
        scalar_t* out_t = out_p + t * B * H;
        const small_gemm::Product<scalar_t> products[2] = {
            {{x_p + t * xs0, xs1, xs2}, wih_t.data(), H, I},  // x_t W_ih^T
            {{prev, H, 1}, whh_t.data(), H, H}};              // h W_hh^T
        small_gemm::apply_products<scalar_t>(
            B, H, products, 2,
            [&](int64_t, int64_t j, int64_t cnt) RNNKIT_ALWAYS_INLINE {
              return ld(b_p, j, cnt);
            },
            [&](int64_t r, int64_t j, int64_t cnt, const V& pre) RNNKIT_ALWAYS_INLINE {
              const V h = activate<scalar_t, decltype(relu_c)::value>(pre);
              st(h, next + r * H, j, cnt);
              st(h, out_t + r * H, j, cnt);
            });
      }
    };
    with_flag(relu, steps);
    if (B * H > 0) {
      std::memcpy(final_state.data_ptr<scalar_t>(), st_p + (training ? T : (T & 1)) * B * H,
                  B * H * sizeof(scalar_t));
    }
  });
  if (!training) return {out, final_state, Tensor()};
  return {out, final_state, states};
}

// {d x (T, B, H_in), d W_ih (H, H_in), d bias (H), d state (B, H), d W_hh (H, H)}; d x, d W_ih
// and d bias undefined unless asked for. states: elman_projected_forward's (T+1, B, H).
std::vector<Tensor> elman_projected_backward(
    const Tensor& x_in, const Tensor& w_ih, const Tensor& w_hh, const Tensor& states_in,
    const Tensor& grad_out, const Tensor& grad_state, bool relu, bool reverse, bool need_x,
    bool need_weight_ih, bool need_bias) {
  const char* kernel = "rnnkit elman projected backward";
  TORCH_CHECK(x_in.dim() == 3, kernel, ": x must be (T, B, H_in), got ", x_in.sizes());
  const Tensor x = x_in.stride(2) == 1 || x_in.size(2) == 1 ? x_in : x_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  const int64_t H = w_hh.size(0);
  const auto dt = x.scalar_type();
  check_arg(kernel, "weight_ih", w_ih, {H, I}, dt, false);
  check_arg(kernel, "weight_hh", w_hh, {H, H}, dt, false);
  const Tensor states = states_in.contiguous();
  check_arg(kernel, "states", states, {T + 1, B, H}, dt);
  if (present(grad_out)) check_arg(kernel, "grad of outputs", grad_out, {T, B, H}, dt, false);
  const OutputGrad dout(grad_out, H);
  if (present(grad_state)) {
    check_arg(kernel, "grad of the final state", grad_state, {B, H}, dt, false);
  }
  const auto opts = x.options();
  Tensor dstate = present(grad_state) ? grad_state.clone(at::MemoryFormat::Contiguous)
                                      : at::zeros({B, H}, opts);
  Tensor dw_hh = at::zeros({H, H}, opts);
  Tensor dw_ih = need_weight_ih ? at::zeros({H, I}, opts) : Tensor();
  Tensor dbias = need_bias ? at::zeros({H}, opts) : Tensor();
  Tensor dx = need_x ? at::empty({T, B, I}, opts) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_elman_projected_backward", [&] {
    using V = Vec<scalar_t>;
    const Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
    const scalar_t* wih_p = wih.data_ptr<scalar_t>();  // (H, I): B operand of d x = g W_ih
    const scalar_t* whh_p = whh.data_ptr<scalar_t>();  // (H, H): of d h_prev = g W_hh
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
    const auto dy_rows = dout.rows<scalar_t>();
    const scalar_t* st_p = states.data_ptr<scalar_t>();
    scalar_t* dst_p = dstate.data_ptr<scalar_t>();
    scalar_t* dwhh_p = dw_hh.data_ptr<scalar_t>();
    scalar_t* dwih_p = need_weight_ih ? dw_ih.data_ptr<scalar_t>() : nullptr;
    scalar_t* db_p = need_bias ? dbias.data_ptr<scalar_t>() : nullptr;
    scalar_t* dx_p = need_x ? dx.data_ptr<scalar_t>() : nullptr;
    std::vector<scalar_t> grad(B * H);  // d pre-activation of the step
    scalar_t* g_p = grad.data();
    const auto steps = [&](auto relu_c) {
      constexpr bool kRelu = decltype(relu_c)::value;
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = reverse ? T - 1 - s : s;
        const scalar_t* prev = st_p + s * B * H;
        const scalar_t* next = st_p + (s + 1) * B * H;
        for (int64_t b = 0; b < B; ++b) {
          const scalar_t* dy = dy_rows.row(t, b);
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) RNNKIT_ALWAYS_INLINE {
            st(pre_activation_grad<scalar_t, kRelu>(dst_p + b * H, dy, dy_rows.whole_rows,
                                                    next + b * H, j, c),
               g_p + b * H, j, c);
          });
        }
        if (need_bias) {  // d bias += column sum of g
          vloop<scalar_t>(H, [&](int64_t j, int64_t c) RNNKIT_ALWAYS_INLINE {
            st(ld(db_p, j, c) + small_gemm::column_sum(g_p, H, B, j, c), db_p, j, c);
          });
        }
        // d h_prev = g W_hh (no direct path from h to h_prev)
        small_gemm::gemm<scalar_t>(B, H, H, {g_p, H, 1}, whh_p, H, scalar_t(0), dst_p, H);
        // d W_hh += g^T h_prev, d W_ih += g^T x_t
        small_gemm::gemm<scalar_t>(H, H, B, {g_p, 1, H}, prev, H, scalar_t(1), dwhh_p, H);
        if (need_weight_ih) {
          small_gemm::gemm<scalar_t>(H, I, B, {g_p, 1, H}, x_p + t * xs0, xs1, scalar_t(1),
                                     dwih_p, I);
        }
        if (need_x) {  // d x_t = g W_ih
          small_gemm::gemm<scalar_t>(B, I, H, {g_p, H, 1}, wih_p, I, scalar_t(0),
                                     dx_p + t * B * I, I);
        }
      }
    };
    with_flag(relu, steps);
  });
  return {dx, dw_ih, dbias, dstate, dw_hh};
}

static std::vector<Tensor> elman_forward(const KernelArgs& a) {
  const Tensor& xp = a.tensor("xp");
  const auto cfg = ElmanFamily::config(a);
  if (xp.dim() == 3 && small_path(a, xp.size(1), cfg.H)) {
    return small_forward(a, xp, cfg.H, cfg.relu);
  }
  return run_forward<ElmanFamily>(a);
}

static std::map<std::string, Tensor> elman_backward(const KernelArgs& a) {
  const Tensor& states = a.tensor("states");
  const auto cfg = ElmanFamily::config(a);
  if (states.dim() == 3 && states.size(0) >= 1 && small_path(a, states.size(1), cfg.H)) {
    return small_backward(a, states.contiguous(), cfg.H, cfg.relu);
  }
  return run_backward<ElmanFamily>(a);
}

// Registered by hand (not RNNKIT_REGISTER_FAMILY): the entry points above choose between the
// small-H loop and the template.
static const bool rnnkit_registered_elman = [] {
  families()[ElmanFamily::kName] =
      FamilyEntry{&elman_forward, &elman_backward, ElmanFamily::names()};
  return true;
}();

}  // namespace rnnkit
