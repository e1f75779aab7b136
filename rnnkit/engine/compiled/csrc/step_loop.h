// The step-loop template every compiled cell family plugs into (docs/engine-compiled.md).
//
// The template owns the schedule; a family owns only its pointwise math:
//   * named arguments (KernelArgs): tensors, numbers and flags by name, never by position;
//   * lengths and reverse (Schedule in common.h): rows sorted by decreasing length, so the
//     sequences still running at step s are the first active_rows[s] rows;
//   * the carried state of a row is one vector of SW values, [output | rest] (Elman h,
//     LSTM [h | c]); the step's output is its first `out` values;
//   * the recurrent GEMM rec (B, N) = state[:, :K] W^T on the active rows, block-diagonal in
//     `groups` blocks, or none (N = 0); an optional second GEMM inside the step,
//     rec2 (B, N2) = mid (B, K2) W2^T, where mid is a slice of the step's saved values (the
//     LSTM projection, the reset-before GRU's W_hn (r * h));
//   * saved activations in step order (S, B, saved) with zero rows for inactive (s, b), the
//     states before every step (S+1, B, SW); inference keeps two state slots and one saved slot;
//   * BPTT: per step the family's backward phases, then dstate[:, :K] += drec W on the
//     active rows; after the loop the weight gradients, one GEMM each over all S*B rows;
//   * the pointwise passes run on the calling thread unless a step's block is large
//     (pointwise_parallel_elems): per-step OpenMP barriers stall when a neighbour process
//     takes a core, the GEMMs are where threads pay.
//
// A family is a struct with (see elman.cpp, the smallest):
//   kName, names() (its own tensor/number/flag names), Config config(args),
//   StepLayout layout(cfg), check(cfg, args, dtype, kernel), gemm1_weight / gemm2_weight,
//   template <scalar_t> struct Forward { phase1(FwdRow), phase2(FwdRow) },
//   template <scalar_t> struct Backward { phase2(BwdRow), phase1(BwdRow) },
//   finish(cfg, args, WeightGrads) -> its parameter gradients by name,
// and registers itself with RNNKIT_REGISTER_FAMILY; bindings.cpp needs no change.
#pragma once

#include "bf16.h"
#include "buffer_cache.h"
#include "common.h"

#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace rnnkit {

// ---- Named arguments ------------------------------------------------------------------
struct KernelArgs {
  std::string kernel;  // for messages: "rnnkit elman forward"
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> numbers;
  std::map<std::string, bool> flags;

  bool has(const std::string& name) const {
    auto it = tensors.find(name);
    return it != tensors.end() && present(it->second);
  }
  const Tensor& tensor(const std::string& name) const {
    auto it = tensors.find(name);
    TORCH_CHECK(it != tensors.end() && it->second.defined(), kernel, ": tensor '", name,
                "' is missing");
    return it->second;
  }
  Tensor optional(const std::string& name) const { return has(name) ? tensors.at(name) : Tensor(); }
  bool flag(const std::string& name) const {
    auto it = flags.find(name);
    TORCH_CHECK(it != flags.end(), kernel, ": flag '", name, "' is missing");
    return it->second;
  }
  double number(const std::string& name) const {
    auto it = numbers.find(name);
    TORCH_CHECK(it != numbers.end(), kernel, ": number '", name, "' is missing");
    return it->second;
  }
};

struct ArgNames {
  std::vector<std::string> tensors, numbers, flags;
};

// ---- What a family declares about its step ----------------------------------------------
struct StepLayout {
  int64_t X = 0;      // xp features per row (the hoisted input projection)
  int64_t SW = 0;     // carried state per row, [output | rest]
  int64_t out = 0;    // output features per row (the first `out` state values)
  int64_t saved = 0;  // per-step saved activations per row (training)
  int64_t K = 0, N = 0, groups = 1;  // GEMM 1: rec (B, N) = state[:, :K] W1^T; N = 0: none
  bool rec_in_state = false;  // GEMM 1 writes into the new state's first N values (N <= SW)
  bool rec_grad_is_xp_grad = false;  // d rec == d xp (N == X): one buffer when rows read t = s
  int64_t K2 = 0, N2 = 0, mid_off = 0;  // GEMM 2: rec2 (B, N2) = saved[:, mid_off:+K2] W2^T
  int64_t acc = 0;      // per-row backward accumulators (peepholes, norms), summed at the end
  int64_t scratch = 0;  // per-thread scratch values for the backward phases
  int64_t work = 0;     // pointwise values per row (sizes the thread split)
  // The `groups` blocks never mix (GroupedLSTM): block q of xp, rec, each state part
  // ([0, out) and [out, SW)) and the saved values (each cut into `groups` equal contiguous
  // blocks) depends only on block q. The template then runs each group's whole sequence on
  // one thread (for_groups in run_forward/run_backward): no per-step barrier, no column
  // split. The family's phases see FwdRow/BwdRow::group and touch only that group's values.
  bool independent_groups = false;
  // Take the large per-call buffers (saved values, states, d rec, d xp) from BufferCache
  // instead of fresh allocations (see there).
  bool reuse_buffers = false;
};

// One row of one step, forward. `rec` may be changed in place (e.g. normalised).
template <typename scalar_t>
struct FwdRow {
  int64_t s, b, t;
  const scalar_t* x;     // xp row (X) at this row's time position
  scalar_t* rec;         // GEMM 1 output row (N), or nullptr
  scalar_t* rec2;        // GEMM 2 output row (N2), phase 2 only
  const scalar_t* prev;  // state before the step (SW)
  scalar_t* next;        // state after the step (SW)
  scalar_t* saved;       // this step's saved values (saved)
  int64_t group = 0;     // the group to compute (StepLayout::independent_groups)
};

// One row of one step, backward.
template <typename scalar_t>
struct BwdRow {
  int64_t s, b, t;
  const scalar_t* dy;    // gradient of this step's output (out), or nullptr
  scalar_t* dstate;      // in: d(state after); phase 1 leaves the direct d(state before),
                         // to which the template adds drec W1
  const scalar_t* prev;  // state before (SW)
  const scalar_t* next;  // state after (SW)
  const scalar_t* saved;
  scalar_t* dx;          // d xp row (X) at its time position
  scalar_t* drec;        // d rec (N), step order (may equal dx)
  scalar_t* drec2;       // d rec2 (N2), written by phase 2
  const scalar_t* dmid;  // d mid (K2) = drec2 W2, read by phase 1
  scalar_t* acc;         // this row's accumulators (acc)
  scalar_t* scratch;     // per-thread scratch (scratch)
  int64_t group = 0;     // the group to compute (StepLayout::independent_groups)
};

// Weight gradients the template computed, handed to the family's finish().
struct WeightGrads {
  Tensor dw1;    // (N, K / groups), or undefined
  Tensor dw2;    // (N2, K2), or undefined
  Tensor drec;   // (S*B, N) step-ordered d rec, zero rows where inactive
  Tensor drec2;  // (S*B, N2)
  Tensor acc;    // (acc) the per-row accumulators summed over rows
};

// ---- Threads for the pointwise passes (pointwise_parallel_elems: common.h) ----------
template <typename F>
inline void for_rows(int64_t n, int64_t row_elems, const F& fn) {
  if (n <= 0) return;
  const int64_t min_chunk = pointwise_parallel_elems().load(std::memory_order_relaxed);
  const int64_t grain = std::max<int64_t>(1, min_chunk / std::max<int64_t>(1, row_elems));
  if (n < 2 * grain) {
    fn(0, n);
    return;
  }
  short_parallel_for(n, grain, fn);  // checks threads and nesting itself
}

// Independent groups (StepLayout::independent_groups): fn(q0, q1) runs groups [q0, q1) through
// every step; the groups go to the threads, one parallel region per call.
template <typename F>
inline void for_groups(int64_t groups, const F& fn) {
  if (groups > 1 && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    at::parallel_for(0, groups, 1, fn);
  } else {
    fn(0, groups);
  }
}

inline void check_independent_groups(const StepLayout& L, const char* kernel) {
  const int64_t G = L.groups;
  TORCH_CHECK(L.N > 0 && L.K == L.out && L.N2 == 0 && L.acc == 0 && !L.rec_in_state &&
                  L.X % G == 0 && L.out % G == 0 && (L.SW - L.out) % G == 0 &&
                  L.saved % G == 0,
              kernel, ": independent groups need a recurrent GEMM on the output part, no "
              "second GEMM, no accumulators, and X, out, SW - out and saved divisible by ", G);
}

// ---- The forward loop ------------------------------------------------------------------
// Returns {out (T, B, out), final state (B, SW), states (S+1, B, SW), saved (S, B, saved)};
// the last two are empty tensors unless flag "training".
template <typename Family>
std::vector<Tensor> run_forward(const KernelArgs& a) {
  const std::string kname = a.kernel;
  const char* kernel = kname.c_str();
  const auto cfg = Family::config(a);
  const StepLayout L = Family::layout(cfg);
  const Tensor& xp_in = a.tensor("xp");
  TORCH_CHECK(xp_in.dim() == 3, kernel, ": xp must be (T, B, ", L.X, "), got ", xp_in.sizes());
  const Tensor xp = xp_in.contiguous();
  const int64_t T = xp.size(0), B = xp.size(1);
  const auto dt = xp.scalar_type();
  check_arg(kernel, "xp", xp, {T, B, L.X}, dt);
  check_arg(kernel, "state", a.tensor("state"), {B, L.SW}, dt, false);
  const Tensor lengths = a.optional("lengths");
  check_lengths_arg(kernel, lengths, B);
  Family::check(cfg, a, dt, kernel);
  const bool training = a.flag("training");
  const bool bf16 = bf16_flag(a.flags);  // bf16 GEMM operands (bf16.h)
  TORCH_CHECK(!bf16 || dt == at::kFloat, kernel, ": precision bf16 needs float32 tensors, got ",
              dt);
  const Schedule sch(lengths, T, B, a.flag("reverse"));
  const int64_t S = sch.S, SW = L.SW, SV = L.saved, N = L.N, G = L.groups;
  TORCH_CHECK(G >= 1 && (N == 0 || (L.K % G == 0 && N % G == 0)), kernel,
              ": GEMM sizes K=", L.K, ", N=", N, " do not split into ", G, " groups");
  TORCH_CHECK(!L.rec_in_state || N <= SW, kernel, ": rec_in_state needs N <= SW");
  const int64_t Kg = N ? L.K / G : 0, Ng = N ? N / G : 0;
  const auto opts = xp.options();

  Tensor out = sch.identity() ? at::empty({T, B, L.out}, opts) : at::zeros({T, B, L.out}, opts);
  auto buffer = [&](at::IntArrayRef shape) {
    return L.reuse_buffers ? BufferCache::instance().empty(shape, opts) : at::empty(shape, opts);
  };
  Tensor states = buffer({training ? S + 1 : 2, B, SW});
  Tensor saved = buffer({SV > 0 ? (training ? S : 1) : 0, B, SV});
  states[0].copy_(sch.to_positions(a.tensor("state")));
  // Weights transposed once per sequence: MKL's plain NN layout measured 3-5% faster per step.
  std::vector<Tensor> w1t;
  if (N > 0) {
    const Tensor w1 = Family::gemm1_weight(cfg, a);
    check_arg(kernel, "recurrent weight", w1, {N, Kg}, dt, false);
    for (int64_t q = 0; q < G; ++q) w1t.push_back(w1.narrow(0, q * Ng, Ng).t().contiguous());
  }
  Tensor w2t;
  if (L.N2 > 0) {
    const Tensor w2 = Family::gemm2_weight(cfg, a);
    check_arg(kernel, "second recurrent weight", w2, {L.N2, L.K2}, dt, false);
    w2t = w2.t().contiguous();
  }
  Tensor rec = N > 0 && !L.rec_in_state ? at::empty({B, N}, opts) : Tensor();
  Tensor rec2 = L.N2 > 0 ? at::empty({B, L.N2}, opts) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_step_loop_forward", [&] {
    const typename Family::template Forward<scalar_t> cell(cfg, a);
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* st_p = states.data_ptr<scalar_t>();
    scalar_t* sv_p = SV > 0 ? saved.data_ptr<scalar_t>() : nullptr;
    scalar_t* rec_p = rec.defined() ? rec.data_ptr<scalar_t>() : nullptr;
    scalar_t* rec2_p = rec2.defined() ? rec2.data_ptr<scalar_t>() : nullptr;
    std::vector<StepGemm<scalar_t>> gemm1;
    for (const Tensor& w : w1t) gemm1.emplace_back(B, w, bf16);
    const std::optional<StepGemm<scalar_t>> gemm2 =
        L.N2 > 0 ? std::optional<StepGemm<scalar_t>>(std::in_place, B, w2t, bf16) : std::nullopt;
    const int64_t ldr = L.rec_in_state ? SW : N;
    const int64_t Out = L.out, X = L.X, N2 = L.N2;

    if (L.independent_groups) {
      check_independent_groups(L, kernel);
      const int64_t og = Out / G, rg = (SW - Out) / G, svg = SV / G;
      for_groups(G, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          for (int64_t s = 0; s < S; ++s) {
            const int64_t cur = training ? s : (s & 1);
            const int64_t nxt = training ? s + 1 : 1 - cur;
            const scalar_t* prev = st_p + cur * B * SW;
            scalar_t* next = st_p + nxt * B * SW;
            scalar_t* sv_s = sv_p != nullptr ? sv_p + (training ? s : 0) * B * SV : nullptr;
            const int64_t rows = sch.active_rows[s];
            gemm1[q](prev + q * Kg, SW, scalar_t(0), rec_p + q * Ng, N, rows);
            for_rows(rows, L.work / G, [&](int64_t b0, int64_t b1) {
              for (int64_t b = b0; b < b1; ++b) {
                const int64_t t = sch.time(s, b);
                FwdRow<scalar_t> r{s, b, t, xp_p + (t * B + sch.row(b)) * X, rec_p + b * N,
                                   nullptr, prev + b * SW, next + b * SW,
                                   sv_s != nullptr ? sv_s + b * SV : nullptr};
                r.group = q;
                cell.phase1(r);
                const scalar_t* h = next + b * SW + q * og;
                std::copy(h, h + og, out_p + (t * B + sch.row(b)) * Out + q * og);
              }
            });
            for (int64_t b = rows; b < B; ++b) {  // finished: carry this group's state
              const scalar_t* from = prev + b * SW;
              scalar_t* to = next + b * SW;
              std::copy(from + q * og, from + (q + 1) * og, to + q * og);
              std::copy(from + Out + q * rg, from + Out + (q + 1) * rg, to + Out + q * rg);
              if (sv_s != nullptr && training) {
                std::fill(sv_s + b * SV + q * svg, sv_s + b * SV + (q + 1) * svg, scalar_t(0));
              }
            }
          }
        }
      });
      return;
    }

    for (int64_t s = 0; s < S; ++s) {
      const int64_t cur = training ? s : (s & 1);
      const int64_t nxt = training ? s + 1 : 1 - cur;
      const scalar_t* prev = st_p + cur * B * SW;
      scalar_t* next = st_p + nxt * B * SW;
      scalar_t* sv_s = sv_p != nullptr ? sv_p + (training ? s : 0) * B * SV : nullptr;
      scalar_t* rec_s = L.rec_in_state ? next : rec_p;
      const int64_t rows = sch.active_rows[s];
      for (int64_t q = 0; q < static_cast<int64_t>(gemm1.size()); ++q) {
        gemm1[q](prev + q * Kg, SW, scalar_t(0), rec_s + q * Ng, ldr, rows);
      }
      auto row = [&](int64_t b) {
        const int64_t t = sch.time(s, b);
        return FwdRow<scalar_t>{s, b, t, xp_p + (t * B + sch.row(b)) * X,
                                rec_s != nullptr ? rec_s + b * ldr : nullptr,
                                rec2_p != nullptr ? rec2_p + b * N2 : nullptr,
                                prev + b * SW, next + b * SW,
                                sv_s != nullptr ? sv_s + b * SV : nullptr};
      };
      auto emit = [&](int64_t b) {
        const scalar_t* h = next + b * SW;
        std::copy(h, h + Out, out_p + (sch.time(s, b) * B + sch.row(b)) * Out);
      };
      for_rows(rows, L.work, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          cell.phase1(row(b));
          if (N2 == 0) emit(b);
        }
      });
      // Finished sequences carry their state; their saved rows are zero (weight GEMMs).
      for (int64_t b = rows; b < B; ++b) {
        std::copy(prev + b * SW, prev + (b + 1) * SW, next + b * SW);
        if (sv_s != nullptr && training) std::fill(sv_s + b * SV, sv_s + (b + 1) * SV, scalar_t(0));
      }
      if (N2 > 0) {
        (*gemm2)(sv_s + L.mid_off, SV, scalar_t(0), rec2_p, N2, rows);
        for_rows(rows, L.work, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            cell.phase2(row(b));
            emit(b);
          }
        });
      }
    }
  });
  const int64_t last = training ? S : (S & 1);
  Tensor final_state = sch.to_rows(states[last]);
  if (!training) return {out, final_state, Tensor(), Tensor()};
  return {out, final_state, states, saved};
}

// ---- The backward loop (BPTT) ------------------------------------------------------------
// Tensors "states" and "saved" from run_forward, optional "grad_out" (T, B, out) and
// "grad_state" (B, SW), number "steps" (T). Returns "xp", "state" and the family's gradients.
template <typename Family>
std::map<std::string, Tensor> run_backward(const KernelArgs& a) {
  const std::string kname = a.kernel;
  const char* kernel = kname.c_str();
  const auto cfg = Family::config(a);
  const StepLayout L = Family::layout(cfg);
  const Tensor& states_in = a.tensor("states");
  TORCH_CHECK(states_in.dim() == 3 && states_in.size(0) >= 1, kernel,
              ": saved states have the wrong shape ", states_in.sizes());
  const int64_t S = states_in.size(0) - 1, B = states_in.size(1);
  const int64_t T = static_cast<int64_t>(a.number("steps"));
  const int64_t SW = L.SW, SV = L.saved, N = L.N, G = L.groups, X = L.X, Out = L.out;
  const int64_t N2 = L.N2, K2 = L.K2, A = L.acc;
  const int64_t Kg = N ? L.K / G : 0, Ng = N ? N / G : 0;
  const auto dt = states_in.scalar_type();
  check_arg(kernel, "states", states_in, {S + 1, B, SW}, dt);
  const Tensor saved = SV > 0 ? a.tensor("saved") : Tensor();
  if (SV > 0) check_arg(kernel, "saved", saved, {S, B, SV}, dt);
  const Tensor lengths = a.optional("lengths");
  check_lengths_arg(kernel, lengths, B);
  Family::check(cfg, a, dt, kernel);
  // bf16: float32 BPTT against the forward's bf16-rounded GEMM operands (bf16.h)
  const bool bf16 = bf16_flag(a.flags);
  const Tensor dout = a.has("grad_out") ? a.tensor("grad_out").contiguous() : Tensor();
  if (dout.defined()) check_arg(kernel, "grad of outputs", dout, {T, B, Out}, dt);
  const Tensor dfinal = a.optional("grad_state");
  if (dfinal.defined()) check_arg(kernel, "grad of the final state", dfinal, {B, SW}, dt, false);
  const Schedule sch(lengths, T, B, a.flag("reverse"));
  TORCH_CHECK(sch.S == S, kernel, ": saved steps (", S, ") do not match the lengths (", sch.S, ")");
  const auto opts = states_in.options();

  Tensor dstate = dfinal.defined() ? sch.to_positions(dfinal) : at::zeros({B, SW}, opts);
  auto buffer = [&](at::IntArrayRef shape) {
    return L.reuse_buffers ? BufferCache::instance().empty(shape, opts) : at::empty(shape, opts);
  };
  Tensor dxp = buffer({T, B, X});
  if (!sch.identity()) dxp.zero_();  // rows past a sequence's end get no gradient
  const bool alias = sch.identity() && L.rec_grad_is_xp_grad && N == X;
  Tensor drec = N > 0 ? (alias ? dxp : buffer({S, B, N})) : Tensor();
  Tensor drec2 = N2 > 0 ? at::empty({S, B, N2}, opts) : Tensor();
  Tensor dmid = N2 > 0 ? at::empty({B, K2}, opts) : Tensor();
  Tensor acc = A > 0 ? at::zeros({B, A}, opts) : Tensor();
  std::vector<Tensor> w1;
  if (N > 0) {
    const Tensor w = Family::gemm1_weight(cfg, a);
    check_arg(kernel, "recurrent weight", w, {N, Kg}, dt, false);
    for (int64_t q = 0; q < G; ++q) {
      w1.push_back(bf16_rounded(w.narrow(0, q * Ng, Ng), bf16).contiguous());
    }
  }
  const Tensor w2 =
      N2 > 0 ? bf16_rounded(Family::gemm2_weight(cfg, a), bf16).contiguous() : Tensor();
  if (N2 > 0) check_arg(kernel, "second recurrent weight", w2, {N2, K2}, dt);
  const Tensor states = states_in.contiguous();

  AT_DISPATCH_FLOATING_TYPES(dt, "rnnkit_step_loop_backward", [&] {
    const typename Family::template Backward<scalar_t> cell(cfg, a);
    const scalar_t* dout_p = dout.defined() ? dout.data_ptr<scalar_t>() : nullptr;
    const scalar_t* st_p = states.data_ptr<scalar_t>();
    const scalar_t* sv_p = SV > 0 ? saved.data_ptr<scalar_t>() : nullptr;
    scalar_t* dst_p = dstate.data_ptr<scalar_t>();
    scalar_t* dxp_p = dxp.data_ptr<scalar_t>();
    scalar_t* drec_p = N > 0 ? drec.data_ptr<scalar_t>() : nullptr;
    scalar_t* drec2_p = N2 > 0 ? drec2.data_ptr<scalar_t>() : nullptr;
    scalar_t* dmid_p = N2 > 0 ? dmid.data_ptr<scalar_t>() : nullptr;
    scalar_t* acc_p = A > 0 ? acc.data_ptr<scalar_t>() : nullptr;
    std::vector<RecurrentGemm<scalar_t>> gemm1;
    for (const Tensor& w : w1) gemm1.emplace_back(B, w);
    const std::optional<RecurrentGemm<scalar_t>> gemm2 =
        N2 > 0 ? std::optional<RecurrentGemm<scalar_t>>(std::in_place, B, w2) : std::nullopt;

    if (L.independent_groups) {
      check_independent_groups(L, kernel);
      for_groups(G, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          for (int64_t s = S - 1; s >= 0; --s) {
            const int64_t rows = sch.active_rows[s];
            scalar_t* drec_s = drec_p + s * B * N;
            for_rows(rows, L.work / G, [&](int64_t b0, int64_t b1) {
              std::vector<scalar_t> scratch(L.scratch);
              for (int64_t b = b0; b < b1; ++b) {
                const int64_t t = sch.time(s, b), r = sch.row(b);
                BwdRow<scalar_t> row{s, b, t,
                                     dout_p != nullptr ? dout_p + (t * B + r) * Out : nullptr,
                                     dst_p + b * SW,
                                     st_p + (s * B + b) * SW,
                                     st_p + ((s + 1) * B + b) * SW,
                                     sv_p != nullptr ? sv_p + (s * B + b) * SV : nullptr,
                                     dxp_p + (t * B + r) * X,
                                     drec_s + b * N,
                                     nullptr, nullptr, nullptr, scratch.data()};
                row.group = q;
                cell.phase1(row);
              }
            });
            // Inactive rows: dstate passes through, nothing reaches the weight GEMMs.
            for (int64_t b = rows; b < B; ++b) {
              std::fill(drec_s + b * N + q * Ng, drec_s + b * N + (q + 1) * Ng, scalar_t(0));
            }
            gemm1[q](drec_s + q * Ng, N, scalar_t(1), dst_p + q * Kg, SW, rows);
          }
        }
      });
      return;
    }

    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t rows = sch.active_rows[s];
      scalar_t* drec_s = drec_p != nullptr ? drec_p + s * B * N : nullptr;
      scalar_t* drec2_s = drec2_p != nullptr ? drec2_p + s * B * N2 : nullptr;
      auto row = [&](int64_t b, scalar_t* scratch) {
        const int64_t t = sch.time(s, b), r = sch.row(b);
        return BwdRow<scalar_t>{s, b, t,
                                dout_p != nullptr ? dout_p + (t * B + r) * Out : nullptr,
                                dst_p + b * SW,
                                st_p + (s * B + b) * SW,
                                st_p + ((s + 1) * B + b) * SW,
                                sv_p != nullptr ? sv_p + (s * B + b) * SV : nullptr,
                                dxp_p + (t * B + r) * X,
                                drec_s != nullptr ? drec_s + b * N : nullptr,
                                drec2_s != nullptr ? drec2_s + b * N2 : nullptr,
                                dmid_p != nullptr ? dmid_p + b * K2 : nullptr,
                                acc_p != nullptr ? acc_p + b * A : nullptr,
                                scratch};
      };
      if (N2 > 0) {
        for_rows(rows, L.work, [&](int64_t b0, int64_t b1) {
          std::vector<scalar_t> scratch(L.scratch);
          for (int64_t b = b0; b < b1; ++b) cell.phase2(row(b, scratch.data()));
        });
        std::fill(drec2_s + rows * N2, drec2_s + B * N2, scalar_t(0));
        (*gemm2)(drec2_s, N2, scalar_t(0), dmid_p, K2, rows);  // d mid = d rec2 W2
      }
      for_rows(rows, L.work, [&](int64_t b0, int64_t b1) {
        std::vector<scalar_t> scratch(L.scratch);
        for (int64_t b = b0; b < b1; ++b) cell.phase1(row(b, scratch.data()));
      });
      // Inactive rows: dstate passes through, nothing reaches the weight GEMMs.
      if (drec_s != nullptr) std::fill(drec_s + rows * N, drec_s + B * N, scalar_t(0));
      for (int64_t q = 0; q < static_cast<int64_t>(gemm1.size()); ++q) {
        gemm1[q](drec_s + q * Ng, N, scalar_t(1), dst_p + q * Kg, SW, rows);
      }
    }
  });

  WeightGrads g;
  if (N > 0) {
    const Tensor d = drec.narrow(0, 0, S).reshape({S * B, N});
    const Tensor h = bf16_rounded(states.narrow(0, 0, S).reshape({S * B, SW}), bf16);
    std::vector<Tensor> blocks;
    for (int64_t q = 0; q < G; ++q) {
      blocks.push_back(at::mm(d.narrow(1, q * Ng, Ng).t(), h.narrow(1, q * Kg, Kg)));
    }
    g.dw1 = G == 1 ? blocks[0] : at::cat(blocks, 0);
    g.drec = d;
  }
  if (N2 > 0) {
    const Tensor d2 = drec2.reshape({S * B, N2});
    const Tensor mid = saved.reshape({S * B, SV}).narrow(1, L.mid_off, K2);
    g.dw2 = at::mm(d2.t(), bf16_rounded(mid, bf16));
    g.drec2 = d2;
  }
  if (A > 0) g.acc = acc.sum(0);
  std::map<std::string, Tensor> result = Family::finish(cfg, a, g);
  result["xp"] = dxp;
  result["state"] = sch.to_rows(dstate);
  return result;
}

// ---- Registry: families register themselves; bindings.cpp dispatches by name ---------------
using ForwardFn = std::vector<Tensor> (*)(const KernelArgs&);
using BackwardFn = std::map<std::string, Tensor> (*)(const KernelArgs&);
struct FamilyEntry {
  ForwardFn forward;
  BackwardFn backward;
  ArgNames names;
};

inline std::map<std::string, FamilyEntry>& families() {
  static std::map<std::string, FamilyEntry> registry;
  return registry;
}

template <typename Family>
bool register_family() {
  families()[Family::kName] = FamilyEntry{&run_forward<Family>, &run_backward<Family>,
                                          Family::names()};
  return true;
}

#define RNNKIT_REGISTER_FAMILY(Family) \
  static const bool rnnkit_registered_##Family = ::rnnkit::register_family<Family>()

// Families without a second GEMM inherit these empty phases.
template <typename scalar_t>
struct NoSecondGemmForward {
  void phase2(const FwdRow<scalar_t>&) const {}
};
template <typename scalar_t>
struct NoSecondGemmBackward {
  void phase2(const BwdRow<scalar_t>&) const {}
};

}  // namespace rnnkit
