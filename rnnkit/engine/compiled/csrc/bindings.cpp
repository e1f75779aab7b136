// Python bindings of rnnkit's compiled recurrences (see rnnkit/engine/compiled/__init__.py).
#include <torch/extension.h>

#include "elman.h"
#include "small_gemm.h"
#include "step_loop.h"
#include "traced_step.h"

#include <algorithm>
#include <set>
#include <vector>

namespace rnnkit {
using at::Tensor;
// IndRNN's own kernel (indrnn.cpp; adapter in rnnkit/engine/compiled/_cells.py): no
// recurrent GEMM, so it runs time inside rows instead of the step-loop template.
std::vector<Tensor> indrnn_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                   bool, bool, bool);
std::vector<Tensor> indrnn_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                    const Tensor&, int64_t, bool, bool);
// minGRU/minLSTM's scan (min_scan.cpp; caller rnnkit/engine/parallel.py).
Tensor min_scan_forward(const Tensor&, const Tensor&, bool, bool);
std::vector<Tensor> min_scan_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                      bool, bool, bool, bool);
// Keras's categorical cross-entropy with its autograd node (keras_loss.cpp; caller
// rnnkit/training/keras_loss.py) and Keras's RMSprop step (keras_rmsprop.cpp; caller
// rnnkit/training/rmsprop.py).
Tensor keras_crossentropy(const Tensor&, const Tensor&, double, double);
void keras_rmsprop_step(const std::vector<Tensor>&, const std::vector<Tensor>&, const Tensor&,
                        const Tensor&, const Tensor&, const Tensor&, double, double, double,
                        double);
// The names every family's call may carry besides its own (step_loop.h).
static const ArgNames kCommonNames{
    {"xp", "state", "lengths", "states", "saved", "grad_out", "grad_state"},
    {"steps"},
    {"bf16", "reverse", "training"}};

static const FamilyEntry& family_entry(const std::string& family) {
  auto it = families().find(family);
  if (it == families().end()) {
    std::string known;
    for (const auto& kv : families()) known += (known.empty() ? "" : ", ") + kv.first;
    TORCH_CHECK(false, "rnnkit: no compiled family '", family, "' (built: ", known, ")");
  }
  return it->second;
}

// Every name must be one the family or the template knows: a misspelt or misplaced option is
// an error, never a silently ignored (or swapped) argument.
template <typename Map>
static void check_names(const std::string& kernel, const char* what, const Map& given,
                        const std::vector<std::string>& own,
                        const std::vector<std::string>& common) {
  for (const auto& kv : given) {
    // a handful of names each: a linear search, no set built per call
    if (std::find(own.begin(), own.end(), kv.first) != own.end() ||
        std::find(common.begin(), common.end(), kv.first) != common.end()) {
      continue;
    }
    std::set<std::string> known(own.begin(), own.end());
    known.insert(common.begin(), common.end());
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    TORCH_CHECK(false, kernel, ": unknown ", what, " '", kv.first, "' (known: ", list, ")");
  }
}

static KernelArgs make_args(const std::string& family, const char* direction,
                            std::map<std::string, Tensor> tensors,
                            std::map<std::string, double> numbers,
                            std::map<std::string, bool> flags) {
  const FamilyEntry& entry = family_entry(family);
  KernelArgs a;
  a.kernel = "rnnkit " + family + " " + direction;
  check_names(a.kernel, "tensor", tensors, entry.names.tensors, kCommonNames.tensors);
  check_names(a.kernel, "number", numbers, entry.names.numbers, kCommonNames.numbers);
  check_names(a.kernel, "flag", flags, entry.names.flags, kCommonNames.flags);
  a.tensors = std::move(tensors);
  a.numbers = std::move(numbers);
  a.flags = std::move(flags);
  return a;
}
}  // namespace rnnkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkit compiled recurrences: whole-sequence forward and BPTT in C++";
  m.def("forward",
        [](const std::string& family, std::map<std::string, at::Tensor> tensors,
           std::map<std::string, double> numbers, std::map<std::string, bool> flags) {
          const auto a = rnnkit::make_args(family, "forward", std::move(tensors),
                                           std::move(numbers), std::move(flags));
          return rnnkit::family_entry(family).forward(a);
        },
        "A family's whole forward on the step-loop template: tensors, numbers and flags by "
        "name; returns [out, final state, states, saved].");
  m.def("backward",
        [](const std::string& family, std::map<std::string, at::Tensor> tensors,
           std::map<std::string, double> numbers, std::map<std::string, bool> flags) {
          const auto a = rnnkit::make_args(family, "backward", std::move(tensors),
                                           std::move(numbers), std::move(flags));
          return rnnkit::family_entry(family).backward(a);
        },
        "A family's BPTT on the step-loop template; returns the gradients by name.");
  m.def("families", []() {
    std::map<std::string, std::vector<std::vector<std::string>>> out;
    for (const auto& kv : rnnkit::families()) {
      out[kv.first] = {kv.second.names.tensors, kv.second.names.numbers, kv.second.names.flags};
    }
    return out;
  }, "Registered families and their own tensor, number and flag names.");
  m.def("set_pointwise_grain", [](int64_t elems) {
    TORCH_CHECK(elems >= 1, "set_pointwise_grain: need >= 1 values per thread chunk");
    return rnnkit::pointwise_parallel_elems().exchange(elems);
  }, "Values per chunk below which a step's pointwise pass stays on one thread; returns the "
     "previous value (measurements and tests).");
  m.def("set_buffer_cache_limit", [](int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "set_buffer_cache_limit: need >= 0 bytes, got ", bytes);
    return rnnkit::BufferCache::instance().set_limit(bytes);
  }, "Idle bytes the step-loop buffer cache (StepLayout::reuse_buffers) may keep between "
     "calls; returns the previous limit.");
  m.def("set_buffer_cache_min_bytes", [](int64_t bytes) {
    TORCH_CHECK(bytes >= 1, "set_buffer_cache_min_bytes: need >= 1 byte, got ", bytes);
    return rnnkit::BufferCache::instance().set_min_bytes(bytes);
  }, "Requests below this many bytes bypass the step-loop buffer cache (1 MiB; tests lower "
     "it); returns the previous value.");
  m.def("clear_buffer_cache", []() { rnnkit::BufferCache::instance().clear(); },
        "Drop every idle buffer the step-loop buffer cache holds.");
  m.def("buffer_cache_bytes", []() { return rnnkit::BufferCache::instance().bytes(); },
        "(bytes held, bytes idle) by the step-loop buffer cache.");
  m.def("thread_gate", []() {
    const rnnkit::ThreadGate& g = rnnkit::thread_gate();
    return std::map<std::string, int64_t>{
        {"enabled", g.enabled()}, {"closed", g.closed()}, {"regions", g.regions()},
        {"lost", g.lost()}, {"closings", g.closings()}, {"interval_ns", g.interval_ns()},
        {"min_interval_ns", g.min_interval_ns()}, {"max_interval_ns", g.max_interval_ns()}};
  }, "The short-region thread gate (common.h, ThreadGate): counters and state.");
  m.def("set_thread_gate", [](bool enabled, int64_t min_interval_ns, int64_t max_interval_ns,
                              bool reset) {
    TORCH_CHECK(min_interval_ns >= 0 && max_interval_ns >= 0,
                "set_thread_gate: probe intervals must be >= 0 ns");
    rnnkit::thread_gate().configure(enabled, min_interval_ns, max_interval_ns, reset);
  }, py::arg("enabled"), py::arg("min_interval_ns") = 10000000,
     py::arg("max_interval_ns") = 1000000000, py::arg("reset") = true,
     "Switch the thread gate on/off and set its probe intervals; `reset` reopens it.");
  m.def("thread_gate_report", [](int64_t wall_ns, int64_t busy_ns) {
    rnnkit::thread_gate().report(wall_ns, busy_ns);
  }, "Feed the gate one region's timing (tests of its decisions).");
  m.def("thread_gate_open", []() { return rnnkit::thread_gate().open(); },
        "Ask the gate as a short region would (tests of its decisions; consumes a probe).");
  py::class_<rnnkit::SavedSteps, std::shared_ptr<rnnkit::SavedSteps>>(
      m, "SavedSteps", "What a traced step's compiled forward saved for its backward.");
  m.def("traced_forward",
        [](int64_t entry, int64_t n_results, int64_t n_unique, int64_t out_index,
           const std::vector<int64_t>& state_index, const std::vector<at::Tensor>& consts,
           const std::vector<at::Tensor>& per_step, std::vector<at::Tensor> leaves,
           const std::vector<int64_t>& order, std::optional<at::Tensor> keep,
           int64_t first_masked, int64_t steps, bool training, int64_t chunks) {
          return rnnkit::traced_forward(
              entry, n_results, n_unique, out_index, state_index, consts, per_step,
              std::move(leaves), {order, keep.value_or(at::Tensor()), first_masked, steps},
              training, chunks);
        },
        py::arg("entry"), py::arg("n_results"), py::arg("n_unique"), py::arg("out_index"),
        py::arg("state_index"), py::arg("consts"), py::arg("per_step"), py::arg("leaves"),
        py::arg("order"), py::arg("keep"), py::arg("first_masked"), py::arg("steps"),
        py::arg("training"), py::arg("chunks") = 1,
        "The inductor path's forward loop (traced_step.cpp): [outputs (T, B, H_out), final "
        "state, saved]. chunks > 1: the batch split into that many row blocks, each run on its "
        "own thread (the step compiled without the GIL).");
  m.def("traced_backward",
        [](int64_t entry, int64_t n_results, const rnnkit::SavedSteps& saved,
           const at::Tensor& grad_outputs, std::vector<at::Tensor> grad_leaves,
           const std::vector<int64_t>& positions, int64_t n_unique,
           const std::vector<std::vector<int64_t>>& tangent_strides,
           const std::vector<int64_t>& transposed, const std::vector<int64_t>& contiguous,
           int64_t n_const, int64_t n_step,
           const std::vector<bool>& needs, const std::vector<bool>& frontier_static,
           const std::vector<int64_t>& order, std::optional<at::Tensor> keep,
           int64_t first_masked, int64_t steps) {
          return rnnkit::traced_backward(
              entry, n_results, saved, grad_outputs, std::move(grad_leaves), positions,
              n_unique, tangent_strides, transposed, contiguous, n_const, n_step, needs,
              frontier_static, {order, keep.value_or(at::Tensor()), first_masked, steps});
        },
        py::arg("entry"), py::arg("n_results"), py::arg("saved"), py::arg("grad_outputs"),
        py::arg("grad_leaves"), py::arg("positions"), py::arg("n_unique"),
        py::arg("tangent_strides"), py::arg("transposed"), py::arg("contiguous"),
        py::arg("n_const"), py::arg("n_step"), py::arg("needs"),
        py::arg("frontier_static"), py::arg("order"), py::arg("keep"),
        py::arg("first_masked"), py::arg("steps"),
        "The inductor path's backward loop (traced_step.cpp): [constant inputs' gradients, "
        "per-step inputs' gradients (T, ...), deferred operands, initial state gradients].");
  m.def("indrnn_forward", &rnnkit::indrnn_forward);
  m.def("indrnn_backward", &rnnkit::indrnn_backward);
  m.def("min_scan_forward", &rnnkit::min_scan_forward, py::arg("pre"), py::arg("h0"),
        py::arg("gru"), py::arg("reverse"),
        "minGRU/minLSTM states hs (T, B, H) from pre (T, B, G*H) and h0 (B, H).");
  m.def("min_scan_backward", &rnnkit::min_scan_backward, py::arg("grad"), py::arg("pre"),
        py::arg("h0"), py::arg("hs"), py::arg("gru"), py::arg("reverse"),
        py::arg("want_pre"), py::arg("want_h0"),
        "[d pre, d h0] of min_scan_forward (gates recomputed from pre).");
  m.def("set_blas_gemm", [](bool on) { rnnkit::use_blas().store(on); },
        "Use the BLAS Fortran gemm for per-step products (default) or ATen's mm (tests).");
  m.def("set_packing", [](bool on) { return rnnkit::use_packing().exchange(on); },
        "Pack the recurrent weights once per sequence with MKL (default: on for Intel CPUs, "
        "off elsewhere); returns the previous setting.");
  m.def("packing", []() { return rnnkit::use_packing().load(); },
        "Whether the recurrent weights are packed once per sequence with MKL.");
  m.def("gemm_rows",
        [](const at::Tensor& A, int64_t lda, const at::Tensor& Bm, int64_t ldb, at::Tensor& C,
           int64_t ldc, int64_t M, int64_t N, int64_t K) {
          // Tests: the per-step GEMM with explicit leading dimensions (the BLAS-rule checks).
          TORCH_CHECK(A.is_contiguous() && Bm.is_contiguous() && C.is_contiguous() &&
                          A.scalar_type() == at::kFloat && Bm.scalar_type() == at::kFloat &&
                          C.scalar_type() == at::kFloat,
                      "gemm_rows: contiguous float32 buffers expected");
          TORCH_CHECK(M * lda <= A.numel() + lda && K * ldb <= Bm.numel() + ldb &&
                          M * ldc <= C.numel() + ldc,
                      "gemm_rows: buffers too small for the given sizes");
          rnnkit::gemm_rows<float>(M, N, K, A.data_ptr<float>(), lda, Bm.data_ptr<float>(),
                                   ldb, 0.0f, C.data_ptr<float>(), ldc);
        },
        "C (M, N) = A (M, K) B (K, N) with explicit row strides (tests only).");
  m.def("small_gemm",
        [](const at::Tensor& A, const at::Tensor& Bm, at::Tensor& C, double beta) {
          // Tests: small_gemm.h's tiles on any A strides, B and C with contiguous rows.
          TORCH_CHECK(A.dim() == 2 && Bm.dim() == 2 && C.dim() == 2,
                      "small_gemm: A, B and C must be 2-D");
          TORCH_CHECK(A.size(1) == Bm.size(0) && C.size(0) == A.size(0) &&
                          C.size(1) == Bm.size(1),
                      "small_gemm: shapes do not match: A ", A.sizes(), ", B ", Bm.sizes(),
                      ", C ", C.sizes());
          TORCH_CHECK(A.scalar_type() == C.scalar_type() && Bm.scalar_type() == C.scalar_type() &&
                          (C.scalar_type() == at::kFloat || C.scalar_type() == at::kDouble) &&
                          A.device().is_cpu() && Bm.device().is_cpu() && C.device().is_cpu(),
                      "small_gemm: float32 or float64 CPU tensors of one dtype expected");
          const int64_t ldb = rnnkit::row_ld(Bm), ldc = rnnkit::row_ld(C);
          AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "small_gemm", [&] {
            rnnkit::small_gemm::gemm<scalar_t>(
                A.size(0), Bm.size(1), A.size(1),
                {A.data_ptr<scalar_t>(), A.stride(0), A.stride(1)}, Bm.data_ptr<scalar_t>(),
                ldb, static_cast<scalar_t>(beta), C.data_ptr<scalar_t>(), ldc);
          });
        },
        "C = A B + beta C in place with small_gemm.h's register tiles (tests only).");
  m.def("small_linear", &rnnkit::small_gemm::linear, py::arg("x"), py::arg("weight"),
        py::arg("bias"),
        "x (M, K) W^T + bias for W (N, K) with small_gemm.h's tiles (N small; bias may be "
        "empty): the hoisted input projection of a small layer.");
  m.def("small_linear_grads", &rnnkit::small_gemm::linear_grads, py::arg("x"), py::arg("grad"),
        py::arg("weight"), py::arg("bias"),
        "[d W = grad^T x (N, K), d bias (N)] of small_linear, each only when asked for.");
  m.def("elman_projected_forward", &rnnkit::elman_projected_forward, py::arg("x"),
        py::arg("weight_ih"), py::arg("bias"), py::arg("second"), py::arg("weight_hh"),
        py::arg("state"), py::arg("lengths"), py::kw_only(), py::arg("relu"),
        py::arg("reverse"), py::arg("training"),
        "Elman with the input projection inside the steps (small hidden sizes, every row "
        "running all T steps): [out, final state, states]; [] where it does not apply.");
  m.def("elman_projected_backward", &rnnkit::elman_projected_backward, py::arg("x"),
        py::arg("weight_ih"), py::arg("weight_hh"), py::arg("states"), py::arg("grad_out"),
        py::arg("grad_state"), py::kw_only(), py::arg("relu"), py::arg("reverse"),
        py::arg("need_x"), py::arg("need_weight_ih"), py::arg("need_bias"),
        "BPTT of elman_projected_forward: [d x, d W_ih, d bias, d state, d W_hh].");
  m.def("elman_projected_apply", &rnnkit::elman_projected_apply, py::arg("x"),
        py::arg("weight_ih"), py::arg("bias"), py::arg("second"), py::arg("weight_hh"),
        py::arg("state"), py::arg("lengths"), py::kw_only(), py::arg("relu"),
        py::arg("reverse"),
        "elman_projected_forward with its autograd node in C++ (elman_node.cpp): "
        "[out, final state], differentiable; [] where the kernel does not apply.");
  m.def("keras_crossentropy", &rnnkit::keras_crossentropy, py::arg("logits"),
        py::arg("target"), py::arg("low"), py::arg("high"),
        "Keras's categorical cross-entropy of softmax(logits (N, C)) against int64 ids (N,) "
        "or probabilities (N, C), log-probabilities clipped to [low, high], mean over N; "
        "differentiable in the logits (one C++ node).");
  m.def("keras_rmsprop_step", &rnnkit::keras_rmsprop_step, py::arg("params"),
        py::arg("grads"), py::arg("velocity"), py::arg("momentum"), py::arg("average"),
        py::arg("scratch"), py::kw_only(), py::arg("lr"), py::arg("rho"),
        py::arg("momentum_factor"), py::arg("epsilon"),
        "One Keras RMSprop update of params (in place) from grads, the state in flat "
        "buffers in the params' order (momentum / average empty when unused; scratch: the "
        "velocity's size), rounded as the op-by-op torch form rounds it.");
  m.def("set_bf16_gemm", [](const std::string& mode) {
    TORCH_CHECK(mode == "amx" || mode == "mkl" || mode == "emulated", "set_bf16_gemm: mode "
                "must be 'amx', 'mkl' or 'emulated', got '", mode, "'");
    TORCH_CHECK(mode == "emulated" || rnnkit::have_mkl_bf16_gemm(), "set_bf16_gemm('", mode,
                "'): this torch does not export MKL's cblas_gemm_bf16bf16f32");
    TORCH_CHECK(mode != "amx" || rnnkit::amx::available(), "set_bf16_gemm('amx'): this CPU "
                "has no AMX-BF16, or Linux did not grant its tile state");
    const std::string previous = rnnkit::bf16_gemm_name();
    rnnkit::bf16_gemm_mode_flag().store(static_cast<int>(
        mode == "amx" ? rnnkit::Bf16Gemm::kAmx
        : mode == "mkl" ? rnnkit::Bf16Gemm::kMkl : rnnkit::Bf16Gemm::kEmulated));
    return previous;
  }, "How precision='bf16' GEMMs run: 'amx' (per-step products on AMX tiles, the weight laid "
     "out once per call; the input projection on MKL), 'mkl' (cblas_gemm_bf16bf16f32, "
     "AVX512-bf16/AMX) or 'emulated' (bf16-rounded operands, float32 BLAS); returns the "
     "previous mode.");
  m.def("bf16_gemm", []() { return std::string(rnnkit::bf16_gemm_name()); },
        "The bf16 GEMM in use: 'amx', 'mkl' or 'emulated' (default: 'amx' where AMX-BF16 is "
        "usable, else 'mkl' on a CPU with AVX512-bf16 when MKL's bf16 GEMM is exported, else "
        "'emulated').");
  m.def("has_amx", &rnnkit::amx::available,
        "Whether this process may run AMX-BF16 (CPUID and Linux's tile-state grant).");
  m.def("amx_gemm", [](const at::Tensor& a, const at::Tensor& w, at::Tensor c,
                       double beta) {
    TORCH_CHECK(a.dim() == 2 && w.dim() == 2 && c.dim() == 2 && a.size(1) == w.size(0) &&
                    c.size(0) == a.size(0) && c.size(1) == w.size(1),
                "amx_gemm: need a (M, K), w (K, N), c (M, N), got ", a.sizes(), ", ",
                w.sizes(), ", ", c.sizes());
    TORCH_CHECK(a.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                    c.scalar_type() == at::kFloat && c.stride(1) == 1,
                "amx_gemm: float32 tensors and a row-major c expected");
    const at::Tensor rows = a.contiguous();
    const rnnkit::amx::StepProduct product(rows.size(0), w);
    product(rows.data_ptr<float>(), rows.size(1), static_cast<float>(beta),
            c.data_ptr<float>(), c.stride(0), rows.size(0));
    return c;
  }, py::arg("a"), py::arg("w"), py::arg("c"), py::arg("beta"),
     "c = bf16(a) bf16(w) + beta c (beta 0 or 1) through the per-step products' AMX path "
     "(amx::StepProduct, as StepGemm runs it; tests only).");
  m.def("cpu_has_native_bf16", &rnnkit::cpu_has_native_bf16,
        "Whether the CPU has AVX512-BF16 or AMX-BF16 (CPUID).");
  m.def("has_mkl_bf16_gemm", &rnnkit::have_mkl_bf16_gemm);
  m.def("bf16_linear", &rnnkit::bf16_linear,
        "x (M, K) W^T for W (N, K), float32 in and out, both operands rounded to bf16 (the "
        "hoisted input projection of a precision='bf16' call).");
  m.def("has_blas_gemm", []() { return rnnkit::sgemm_ != nullptr && rnnkit::dgemm_ != nullptr; });
}
