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
#include <mutex>
#include <tuple>
#include <vector>

#include "buffer_cache.h"
#include "common.h"
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
Tensor keep_at(const StepSchedule& schedule, int64_t t) {
  const Tensor& keep = schedule.keep;
  if (!keep.defined() || t < schedule.first_masked || t >= keep.size(0)) return Tensor();
  return keep.select(0, t);
}

// Runs `body(q)` for each of `chunks` row blocks: on torch's threads where there are more
// than one (each block then runs every step on its own thread, the GIL released: its
// compiled step never takes it), else here.
template <typename Body>
void for_each_chunk(int64_t chunks, const Body& body) {
  if (chunks == 1) {
    body(0);
    return;
  }
  pybind11::gil_scoped_release no_gil;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    // torch turns MKL's dynamic threading off: without this each block's GEMMs would open
    // nested (one-thread) OpenMP regions and spin in them
    OneBlasThread one(true);
    for (int64_t q = begin; q < end; ++q) body(q);
  });
}

// Allocates a shared stack once, whichever block gets there first.
Tensor shared_stack(std::mutex& lock, Tensor& slot, const Tensor& value, int64_t steps,
                    int64_t batch) {
  std::lock_guard<std::mutex> guard(lock);
  if (!slot.defined()) {
    std::vector<int64_t> shape{steps, batch};
    shape.insert(shape.end(), value.sizes().begin() + 1, value.sizes().end());
    slot = BufferCache::instance().empty(shape, value.options());
  }
  return slot;
}

// buffer[t, row0:row0+n] = value (n, ...): one memcpy where both are contiguous (no view
// made, no copy kernel dispatched: a step's rows are a few tens of KiB, the dispatch a few
// microseconds).
void set_rows(const Tensor& buffer, int64_t t, int64_t row0, const Tensor& value) {
  const int64_t n = value.size(0), cells = buffer.size(0) * buffer.size(1);
  if (cells > 0 && buffer.is_contiguous() && value.is_contiguous() &&
      value.scalar_type() == buffer.scalar_type() &&
      value.numel() * cells == n * buffer.numel()) {
    const size_t row_bytes = static_cast<size_t>(buffer.numel() / cells) * buffer.element_size();
    std::memcpy(static_cast<char*>(buffer.data_ptr()) +
                    (t * buffer.size(1) + row0) * row_bytes,
                value.data_ptr(), n * row_bytes);
  } else {
    buffer[t].narrow(0, row0, n).copy_(value);
  }
}

// Tensor k of every block, joined along the batch (the tensor itself for one block).
Tensor join_blocks(const std::vector<std::vector<Tensor>>& blocks, size_t k) {
  if (blocks.size() == 1) return blocks[0][k];
  std::vector<Tensor> parts;
  for (const auto& block : blocks) parts.push_back(block[k]);
  return at::cat(parts, 0);
}

}  // namespace

TracedForward traced_forward(int64_t entry, int64_t n_results, int64_t n_unique,
                             int64_t out_index, const std::vector<int64_t>& state_index,
                             const std::vector<Tensor>& consts,
                             const std::vector<Tensor>& per_step, std::vector<Tensor> leaves,
                             const StepSchedule& schedule, bool training, int64_t chunks) {
  const std::vector<int64_t>& order = schedule.order;
  const int64_t steps = schedule.steps;
  TORCH_CHECK(!order.empty(), "rnnkit inductor loop: no step to run");
  TORCH_CHECK(state_index.size() == leaves.size() && !leaves.empty(),
              "rnnkit inductor loop: ", leaves.size(), " state tensors, ", state_index.size(),
              " state outputs");
  const int64_t batch = leaves[0].size(0);
  TORCH_CHECK(chunks >= 1 && batch % chunks == 0 && (chunks == 1 || batch > 0),
              "rnnkit inductor loop: ", batch, " rows do not split into ", chunks, " blocks");
  const int64_t rows = batch / chunks;
  auto saved = std::make_shared<SavedSteps>();
  saved->chunks = chunks;
  saved->rows = rows;
  if (training) saved->steps.resize(steps * chunks);
  Tensor outputs;  // (T, B, H_out), made at the first step
  std::mutex lock;
  std::vector<std::vector<Tensor>> finals(chunks);
  for_each_chunk(chunks, [&](int64_t q) {
    const int64_t row0 = q * rows;
    StepCall call(entry, static_cast<int64_t>(consts.size() + per_step.size() + leaves.size()),
                  n_results, "step's forward");
    std::vector<Tensor> state(leaves.size());
    for (size_t k = 0; k < leaves.size(); ++k) {
      state[k] = chunks == 1 ? leaves[k] : leaves[k].narrow(0, row0, rows).contiguous();
    }
    std::vector<Tensor> arguments(consts.begin(), consts.end());
    const size_t first_step = arguments.size();
    arguments.resize(first_step + per_step.size() + state.size());
    Tensor out_stack;
    for (int64_t t : order) {
      for (size_t i = 0; i < per_step.size(); ++i) {
        arguments[first_step + i] =
            chunks == 1 ? per_step[i][t] : per_step[i][t].narrow(0, row0, rows);
      }
      std::copy(state.begin(), state.end(), arguments.begin() + first_step + per_step.size());
      std::vector<Tensor> results = call(arguments);
      Tensor out = results[out_index];
      Tensor keep_t = keep_at(schedule, t);
      if (keep_t.defined() && chunks > 1) keep_t = keep_t.narrow(0, row0, rows);
      for (size_t k = 0; k < state.size(); ++k) {
        Tensor next = results[state_index[k]];
        if (keep_t.defined()) next = at::where(keep_t, next, state[k]);
        state[k] = next.contiguous();
      }
      if (keep_t.defined()) out = at::where(keep_t, out, 0.0);
      if (!out_stack.defined()) out_stack = shared_stack(lock, outputs, out, steps, batch);
      set_rows(out_stack, t, row0, out);
      if (training) {
        saved->steps[q * steps + t].assign(std::make_move_iterator(results.begin() + n_unique),
                                           std::make_move_iterator(results.end()));
      }
    }
    finals[q] = std::move(state);
  });
  for (size_t k = 0; k < leaves.size(); ++k) leaves[k] = join_blocks(finals, k);
  // steps past the longest sequence never ran: their outputs are zero (the order covers
  // 0..max_len-1, one direction or the other)
  const int64_t ran = static_cast<int64_t>(order.size());
  if (ran < steps) outputs.narrow(0, ran, steps - ran).zero_();
  return {outputs, leaves, saved};
}

TracedBackward traced_backward(int64_t entry, int64_t n_results, const SavedSteps& saved,
                               const Tensor& grad_outputs, std::vector<Tensor> grad_leaves,
                               const std::vector<int64_t>& positions, int64_t n_unique,
                               const std::vector<std::vector<int64_t>>& tangent_strides,
                               const std::vector<int64_t>& transposed,
                               const std::vector<int64_t>& contiguous, int64_t n_const,
                               int64_t n_step, const std::vector<bool>& needs,
                               const std::vector<bool>& frontier_static,
                               const StepSchedule& schedule) {
  const std::vector<int64_t>& order = schedule.order;
  const int64_t steps = schedule.steps;
  const int64_t n_state = static_cast<int64_t>(grad_leaves.size());
  const int64_t n_inputs = n_const + n_step + n_state;
  const int64_t n_frontier = static_cast<int64_t>(frontier_static.size());
  TORCH_CHECK(static_cast<int64_t>(needs.size()) == n_inputs &&
                  static_cast<int64_t>(positions.size()) == 1 + n_state &&
                  n_results == n_inputs + n_frontier &&
                  static_cast<int64_t>(tangent_strides.size()) == n_unique,
              "rnnkit inductor loop: the backward's layout does not match its call");
  TORCH_CHECK(!order.empty(), "rnnkit inductor loop: no step to run back");
  const int64_t chunks = saved.chunks, rows = saved.rows, batch = chunks * rows;
  const int64_t ran = static_cast<int64_t>(order.size());
  const int64_t n_saved = static_cast<int64_t>(saved.steps[order.front()].size());
  std::vector<Tensor> step_grads(n_step);  // (T, B, ...) each, made at the first gradient
  std::vector<Tensor> frontier(n_frontier);  // static: one value; else (max_len, B, ...)
  std::vector<int64_t> same_as(n_frontier, -1);  // frontier value that is a step gradient
  std::mutex lock;
  // per block: constant inputs' gradients, the steps that wrote each per-step gradient, the
  // initial state's gradients
  std::vector<std::vector<Tensor>> block_consts(chunks, std::vector<Tensor>(n_const));
  std::vector<std::vector<std::vector<char>>> block_written(
      chunks, std::vector<std::vector<char>>(n_step, std::vector<char>(steps, 0)));
  std::vector<std::vector<Tensor>> block_leaves(chunks);
  std::vector<Tensor> block_static(n_frontier);  // a static frontier value (block 0's)
  for_each_chunk(chunks, [&](int64_t q) {
    const int64_t row0 = q * rows;
    auto block = [&](const Tensor& value) {
      return chunks == 1 ? value : value.narrow(0, row0, rows);
    };
    StepCall call(entry, n_saved + n_unique, n_results, "step's backward");
    std::vector<Tensor> d_leaves(n_state);
    for (int64_t k = 0; k < n_state; ++k) d_leaves[k] = block(grad_leaves[k]);
    std::vector<Tensor>& grad_consts = block_consts[q];
    std::vector<Tensor> grad_stacks(n_step), frontier_stacks(n_frontier);
    std::vector<int64_t> same(n_frontier, -1);  // frontier value that is a step gradient
    std::vector<std::pair<int64_t, Tensor>> swap;  // static weights laid out, made once
    std::vector<Tensor> arguments(n_saved + n_unique), tangents(n_unique);
    bool first = true;
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      const int64_t t = *it;
      Tensor d_out = block(grad_outputs[t]);
      Tensor keep_t = keep_at(schedule, t);
      if (keep_t.defined()) keep_t = block(keep_t);
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
      const std::vector<Tensor>& step_saved = saved.steps[q * steps + t];
      TORCH_CHECK(static_cast<int64_t>(step_saved.size()) == n_saved,
                  "rnnkit inductor loop: step ", t, " saved nothing for the backward");
      std::copy(step_saved.begin(), step_saved.end(), arguments.begin());
      if (first) {
        for (int64_t j : transposed) swap.emplace_back(j, step_saved[j].t().contiguous());
        for (int64_t j : contiguous) swap.emplace_back(j, step_saved[j].contiguous());
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
        if (!grad_stacks[i].defined()) {
          grad_stacks[i] = shared_stack(lock, step_grads[i], g, steps, batch);
        }
        set_rows(grad_stacks[i], t, row0, g);
        block_written[q][i][t] = 1;
      }
      for (int64_t f = 0; f < n_frontier; ++f) {
        const Tensor& value = grads[n_inputs + f];
        if (frontier_static[f]) {
          if (q == 0) block_static[f] = value;
          continue;
        }
        if (first) {  // the same buffer as a per-step input's gradient: use its stack
          for (int64_t i = 0; i < n_step && same[f] < 0; ++i) {
            if (needs[n_const + i] && value.defined() && value.is_same(grads[n_const + i])) {
              same[f] = i;
            }
          }
          if (same[f] < 0) {
            frontier_stacks[f] = shared_stack(lock, frontier[f], value, ran, batch);
          }
        }
        if (same[f] >= 0) {
          TORCH_CHECK(value.is_same(grads[n_const + same[f]]),
                      "rnnkit inductor loop: the step's backward changed its outputs' "
                      "aliasing");
          continue;
        }
        set_rows(frontier_stacks[f], t, row0, value);
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
    block_leaves[q] = std::move(d_leaves);
    if (q == 0) same_as = same;  // the same structure in every block
  });
  std::vector<Tensor> grad_consts = std::move(block_consts[0]);
  for (int64_t q = 1; q < chunks; ++q) {
    for (int64_t i = 0; i < n_const; ++i) {
      const Tensor& g = block_consts[q][i];
      if (!g.defined()) continue;
      grad_consts[i] = grad_consts[i].defined() ? grad_consts[i].add_(g) : g;
    }
  }
  for (int64_t i = 0; i < n_step; ++i) {  // rows no step wrote: zero
    if (!step_grads[i].defined()) continue;
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t q = 0; q < chunks; ++q) {
        if (!block_written[q][i][t]) step_grads[i][t].narrow(0, q * rows, rows).zero_();
      }
    }
  }
  for (int64_t f = 0; f < n_frontier; ++f) {
    if (frontier_static[f]) {
      frontier[f] = block_static[f];
    } else if (same_as[f] >= 0) {
      frontier[f] = step_grads[same_as[f]].narrow(0, 0, ran);
    }
  }
  std::vector<Tensor> d_leaves(n_state);
  for (int64_t k = 0; k < n_state; ++k) d_leaves[k] = join_blocks(block_leaves, k);
  return {grad_consts, step_grads, frontier, d_leaves};
}

}  // namespace rnnkit
