// The inductor path's per-step loop in C++ (traced_step.cpp; caller
// rnnkit/engine/inductor.py's _Sequence).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <tuple>
#include <vector>

namespace rnnkit {

// What each step's compiled forward saved for its backward, by time index (empty where the
// step did not run): kept in C++ between the two calls, opaque to Python.
// With the batch split into row blocks (`chunks` of `rows` rows, each run on its own thread),
// block q's step t is steps[q * T + t].
struct SavedSteps {
  std::vector<std::vector<at::Tensor>> steps;
  int64_t chunks = 1, rows = 0;
};

// Which steps run in which order, and where the lengths mask them (inductor.py's _Schedule).
struct StepSchedule {
  std::vector<int64_t> order;  // time indices in processing order
  at::Tensor keep;             // (T', B, 1) bool: where rows still run (undefined: every row)
  int64_t first_masked = 0;    // the shortest length: before it every row runs
  int64_t steps = 0;           // T (outputs past the longest sequence are zero)
};

// (T, B, H_out) outputs, final state leaves, saved values
using TracedForward =
    std::tuple<at::Tensor, std::vector<at::Tensor>, std::shared_ptr<SavedSteps>>;
// constant inputs' gradients summed over steps (undefined where none), per-step inputs'
// gradients (T, ...), the deferred weight-gradient operands (static: one value; else
// (max_len, ...)), the initial state's gradients
using TracedBackward = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>,
                                  std::vector<at::Tensor>, std::vector<at::Tensor>>;

TracedForward traced_forward(int64_t entry, int64_t n_results, int64_t n_unique,
                             int64_t out_index, const std::vector<int64_t>& state_index,
                             const std::vector<at::Tensor>& consts,
                             const std::vector<at::Tensor>& per_step,
                             std::vector<at::Tensor> leaves, const StepSchedule& schedule,
                             bool training, int64_t chunks);

TracedBackward traced_backward(int64_t entry, int64_t n_results, const SavedSteps& saved,
                               const at::Tensor& grad_outputs, std::vector<at::Tensor> grad_leaves,
                               const std::vector<int64_t>& positions, int64_t n_unique,
                               const std::vector<std::vector<int64_t>>& tangent_strides,
                               const std::vector<int64_t>& transposed,
                               const std::vector<int64_t>& contiguous, int64_t n_const,
                               int64_t n_step, const std::vector<bool>& needs,
                               const std::vector<bool>& frontier_static,
                               const StepSchedule& schedule);

}  // namespace rnnkit
