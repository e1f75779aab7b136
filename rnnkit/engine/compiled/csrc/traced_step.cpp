// The per-step loop of the inductor path (rnnkit/engine/inductor.py, _Sequence) in C++.
//
// A user's cell is traced once to a step graph; Inductor compiles its forward and backward
// graphs with its C++ wrapper, whose entry point
//
//     void inductor_entry_impl(AtenTensorHandle* inputs, AtenTensorHandle* outputs)
//
// takes the step's input tensors (stealing the handles) and hands back its outputs. The
// Python side finds that symbol in the library Inductor loaded and passes its address here;
// these loops then call it once per step without going back to Python. What they save is the
// per-step Python: building argument lists, the generated wrapper's own checks and buffer
// bookkeeping, and the stacking after the loop (measured at issue 15 row 15's shape, B=32,
// H=256: ~40-60 us of a ~120 us step each way).
//
// The schedule (order, lengths mask) and what the gradients do at masked rows are the
// Python loop's, line for line; tests hold the two to each other.
#include <torch/extension.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>

#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "buffer_cache.h"
#include "traced_step.h"

namespace rnnkit {

using at::Tensor;

namespace {

using EntryPoint = void (*)(AtenTensorHandle*, AtenTensorHandle*);

// One call of a generated entry point: the inputs go in as new handles (the entry point
// steals them), the outputs come back as tensors. An output may appear twice (a step that
// returns one buffer as two results): its handle is freed once, both results share it.
class StepCall {
 public:
  StepCall(int64_t address, int64_t n_inputs, int64_t n_outputs, const char* what)
      : entry_(reinterpret_cast<EntryPoint>(address)), inputs_(n_inputs), outputs_(n_outputs),
        what_(what) {
    TORCH_CHECK(address != 0, "rnnkit inductor loop: no entry point for the ", what);
  }

  std::vector<Tensor> operator()(const std::vector<Tensor>& inputs) {
    TORCH_CHECK(inputs.size() == inputs_.size(), "rnnkit inductor loop: the ", what_,
                " takes ", inputs_.size(), " inputs, got ", inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      inputs_[i] = torch::aot_inductor::new_tensor_handle(Tensor(inputs[i]));
    }
    std::fill(outputs_.begin(), outputs_.end(), nullptr);
    entry_(inputs_.data(), outputs_.data());
    std::vector<Tensor> results(outputs_.size());
    for (size_t i = 0; i < outputs_.size(); ++i) {
      AtenTensorHandle handle = outputs_[i];
      if (handle == nullptr) continue;  // a None result (a gradient nothing needs)
      size_t j = 0;
      while (j < i && outputs_[j] != handle) ++j;
      if (j < i) {  // the same buffer as an earlier result: already taken
        results[i] = results[j];
        continue;
      }
      at::Tensor* owned = torch::aot_inductor::tensor_handle_to_tensor_pointer(handle);
      results[i] = std::move(*owned);
      delete owned;
    }
    return results;
  }

 private:
  EntryPoint entry_;
  std::vector<AtenTensorHandle> inputs_, outputs_;
  const char* what_;
};

// The lengths mask of step t, (B, 1) bool, or an undefined tensor where every row runs.
Tensor keep_at(const Tensor& keep, int64_t first_masked, int64_t t) {
  if (!keep.defined() || t < first_masked || t >= keep.size(0)) return Tensor();
  return keep.select(0, t);
}

// A (steps, ...) buffer shaped like one step's `value`, from the buffer cache: the pages the
// last call touched, not freshly mapped ones that fault at the first write of each step.
Tensor steps_like(const Tensor& value, int64_t steps) {
  std::vector<int64_t> shape{steps};
  shape.insert(shape.end(), value.sizes().begin(), value.sizes().end());
  return BufferCache::instance().empty(shape, value.options());
}

// buffer[t] = value: one memcpy where both are contiguous (no view made, no copy kernel
// dispatched: a step's row is a few tens of KiB, the dispatch a few microseconds).
void set_row(const Tensor& buffer, int64_t t, const Tensor& value) {
  const int64_t row = buffer.numel() / buffer.size(0);
  if (buffer.is_contiguous() && value.is_contiguous() && value.numel() == row &&
      value.scalar_type() == buffer.scalar_type()) {
    const size_t bytes = static_cast<size_t>(row) * buffer.element_size();
    std::memcpy(static_cast<char*>(buffer.data_ptr()) + t * bytes, value.data_ptr(), bytes);
  } else {
    buffer[t].copy_(value);
  }
}

}  // namespace

TracedForward traced_forward(int64_t entry, int64_t n_results, int64_t n_unique,
                             int64_t out_index, const std::vector<int64_t>& state_index,
                             const std::vector<Tensor>& consts,
                             const std::vector<Tensor>& per_step, std::vector<Tensor> leaves,
                             const std::vector<int64_t>& order, const Tensor& keep,
                             int64_t first_masked, int64_t steps, bool training) {
  TORCH_CHECK(!order.empty(), "rnnkit inductor loop: no step to run");
  TORCH_CHECK(state_index.size() == leaves.size(), "rnnkit inductor loop: ", leaves.size(),
              " state tensors, ", state_index.size(), " state outputs");
  StepCall call(entry, static_cast<int64_t>(consts.size() + per_step.size() + leaves.size()),
                n_results, "step's forward");
  auto saved = std::make_shared<SavedSteps>();
  if (training) saved->steps.resize(steps);
  std::vector<Tensor> arguments(consts.begin(), consts.end());
  const size_t first_step = arguments.size();
  arguments.resize(first_step + per_step.size() + leaves.size());
  Tensor outputs;  // (T, B, H_out), made at the first step
  for (int64_t t : order) {
    for (size_t i = 0; i < per_step.size(); ++i) arguments[first_step + i] = per_step[i][t];
    std::copy(leaves.begin(), leaves.end(), arguments.begin() + first_step + per_step.size());
    std::vector<Tensor> results = call(arguments);
    Tensor out = results[out_index];
    const Tensor keep_t = keep_at(keep, first_masked, t);
    for (size_t k = 0; k < leaves.size(); ++k) {
      Tensor next = results[state_index[k]];
      if (keep_t.defined()) next = at::where(keep_t, next, leaves[k]);
      leaves[k] = next.contiguous();
    }
    if (keep_t.defined()) out = at::where(keep_t, out, 0.0);
    if (!outputs.defined()) outputs = steps_like(out, steps);
    set_row(outputs, t, out);
    if (training) {
      saved->steps[t].assign(std::make_move_iterator(results.begin() + n_unique),
                             std::make_move_iterator(results.end()));
    }
  }
  // steps past the longest sequence never ran: their outputs are zero (the order covers
  // 0..max_len-1, one direction or the other)
  const int64_t ran = static_cast<int64_t>(order.size());
  if (ran < steps) outputs.narrow(0, ran, steps - ran).zero_();
  return {outputs, leaves, saved};
}

TracedBackward traced_backward(int64_t entry, int64_t n_results, const SavedSteps& saved,
                               const Tensor& grad_outputs, std::vector<Tensor> d_leaves,
                               const std::vector<int64_t>& positions, int64_t n_unique,
                               const std::vector<std::vector<int64_t>>& tangent_strides,
                               const std::vector<int64_t>& transposed, int64_t n_const,
                               int64_t n_step, const std::vector<bool>& needs,
                               const std::vector<bool>& frontier_static,
                               const std::vector<int64_t>& order, const Tensor& keep,
                               int64_t first_masked, int64_t steps) {
  const int64_t n_state = static_cast<int64_t>(d_leaves.size());
  const int64_t n_inputs = n_const + n_step + n_state;
  const int64_t n_frontier = static_cast<int64_t>(frontier_static.size());
  TORCH_CHECK(static_cast<int64_t>(needs.size()) == n_inputs &&
                  static_cast<int64_t>(positions.size()) == 1 + n_state &&
                  n_results == n_inputs + n_frontier &&
                  static_cast<int64_t>(tangent_strides.size()) == n_unique,
              "rnnkit inductor loop: the backward's layout does not match its call");
  TORCH_CHECK(!order.empty(), "rnnkit inductor loop: no step to run back");
  const int64_t ran = static_cast<int64_t>(order.size());
  const int64_t n_saved = static_cast<int64_t>(saved.steps[order.front()].size());
  StepCall call(entry, n_saved + n_unique, n_results, "step's backward");
  std::vector<Tensor> grad_consts(n_const);
  std::vector<Tensor> step_grads(n_step);  // (T, ...) each, made at the first gradient
  std::vector<std::vector<bool>> written(n_step);
  std::vector<Tensor> frontier(n_frontier);  // static: one value; else (max_len, ...)
  std::vector<int64_t> same_as(n_frontier, -1);  // frontier value that is a step gradient
  std::vector<std::pair<int64_t, Tensor>> swap;  // transposed weights, made once
  std::vector<Tensor> arguments(n_saved + n_unique), tangents(n_unique);
  bool first = true;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const int64_t t = *it;
    Tensor d_out = grad_outputs[t];
    const Tensor keep_t = keep_at(keep, first_masked, t);
    std::vector<Tensor> carry;
    if (keep_t.defined()) {  // rows past their length: the state passes through
      d_out = at::where(keep_t, d_out, 0.0);
      carry.resize(n_state);
      for (int64_t k = 0; k < n_state; ++k) {
        carry[k] = at::where(keep_t, 0.0, d_leaves[k]);
        d_leaves[k] = at::where(keep_t, d_leaves[k], 0.0);
      }
    }
    std::fill(tangents.begin(), tangents.end(), Tensor());
    // an output that is also the state (h) gets the sum of its two tangents
    std::vector<bool> summed(n_unique, false);
    for (int64_t k = 0; k <= n_state; ++k) {
      const Tensor& d = k == 0 ? d_out : d_leaves[k - 1];
      Tensor& slot = tangents[positions[k]];
      if (!slot.defined()) {
        slot = d;
      } else {  // one new tensor in the layout compiled for, not a sum then a copy
        Tensor sum = at::empty_strided(d.sizes(), tangent_strides[positions[k]], d.options());
        at::add_out(sum, slot, d);
        slot = sum;
        summed[positions[k]] = true;
      }
    }
    const std::vector<Tensor>& step_saved = saved.steps[t];
    TORCH_CHECK(static_cast<int64_t>(step_saved.size()) == n_saved,
                "rnnkit inductor loop: step ", t, " saved nothing for the backward");
    std::copy(step_saved.begin(), step_saved.end(), arguments.begin());
    if (first) {
      for (int64_t j : transposed) swap.emplace_back(j, step_saved[j].t().contiguous());
    }
    for (const auto& [j, value] : swap) arguments[j] = value;
    for (int64_t k = 0; k < n_unique; ++k) {  // in the layout compiled for (as it comes:
      const Tensor& d = tangents[k];          // the state gradient the step before returned)
      const auto& want = tangent_strides[k];
      arguments[n_saved + k] = summed[k] || d.strides().equals(want)
          ? d : at::empty_strided(d.sizes(), want, d.options()).copy_(d);
    }
    std::vector<Tensor> grads = call(arguments);

    for (int64_t i = 0; i < n_step; ++i) {
      const Tensor& g = grads[n_const + i];
      if (!needs[n_const + i] || !g.defined()) continue;
      if (!step_grads[i].defined()) {
        step_grads[i] = steps_like(g, steps);
        written[i].assign(steps, false);
      }
      set_row(step_grads[i], t, g);
      written[i][t] = true;
    }
    for (int64_t f = 0; f < n_frontier; ++f) {
      const Tensor& value = grads[n_inputs + f];
      if (frontier_static[f]) {
        frontier[f] = value;
        continue;
      }
      if (first) {  // the same buffer as a per-step input's gradient: use its stack
        for (int64_t i = 0; i < n_step && same_as[f] < 0; ++i) {
          if (needs[n_const + i] && value.defined() && value.is_same(grads[n_const + i])) {
            same_as[f] = i;
          }
        }
        if (same_as[f] < 0) frontier[f] = steps_like(value, ran);
      }
      if (same_as[f] >= 0) {
        TORCH_CHECK(value.is_same(grads[n_const + same_as[f]]),
                    "rnnkit inductor loop: the step's backward changed its outputs' aliasing");
        continue;
      }
      set_row(frontier[f], t, value);
    }
    for (int64_t i = 0; i < n_const; ++i) {
      const Tensor& g = grads[i];
      if (!needs[i] || !g.defined()) continue;
      grad_consts[i] = grad_consts[i].defined() ? grad_consts[i].add_(g) : g;
    }
    for (int64_t k = 0; k < n_state; ++k) {
      const Tensor& g = grads[n_const + n_step + k];
      if (carry.empty()) {
        d_leaves[k] = g.defined() ? g : at::zeros_like(d_leaves[k]);
      } else {
        d_leaves[k] = !g.defined() ? carry[k] : g + carry[k];
      }
    }
    first = false;
  }
  for (int64_t i = 0; i < n_step; ++i) {  // rows no step wrote: zero
    if (!step_grads[i].defined()) continue;
    for (int64_t t = 0; t < steps; ++t) {
      if (!written[i][t]) step_grads[i][t].zero_();
    }
  }
  for (int64_t f = 0; f < n_frontier; ++f) {
    if (same_as[f] >= 0) frontier[f] = step_grads[same_as[f]].narrow(0, 0, ran);
  }
  return {grad_consts, step_grads, frontier, d_leaves};
}

}  // namespace rnnkit
