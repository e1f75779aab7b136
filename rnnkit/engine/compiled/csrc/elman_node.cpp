// The autograd node of an Elman layer on the small path, in C++ (issue 13 row 2's
// SimpleRNN(16) at B=100, T=28 spends as long in Python around its kernels as in them).
//
// elman_projected_apply runs elman_projected_forward (elman.cpp: the input projection inside
// the steps) as a torch::autograd::Function: the graph node is built, and its backward
// (elman_projected_backward) runs, without entering Python, where the Python Function
// (_functions.ProjectedRecurrence) pays Function.apply and a Python backward per call. The
// cached call of a drop-in (rnnkit.layers.rnn, "Per-call overhead" in docs/engine.md) takes
// it; everything else keeps the Python Function.
//
// Gradients of gradients (a backward under create_graph=True) and vmapped gradients
// (functorch-wrapped, as jacobian(vectorize=True) hands them over) are not the C++
// backward's business: the node then calls back into Python
// (rnnkit.engine.compiled._functions._elman_differentiable), which recomputes the layer in
// torch ops and differentiates that, as the Python Function does.
#include <torch/extension.h>

#include "elman.h"

#include <vector>

namespace rnnkit {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// A gradient the C++ backward cannot read as plain memory: a functorch wrapper (vmap's
// batched tensor, grad's wrapper) or a legacy batched tensor (is_grads_batched=True).
bool wrapped(const Tensor& t) {
  if (!t.defined()) return false;
  const auto keys = t.key_set();
  return keys.has(c10::DispatchKey::FuncTorchBatched) ||
         keys.has(c10::DispatchKey::FuncTorchGradWrapper) ||
         keys.has(c10::DispatchKey::Batched) || !t.has_storage();
}

// Tensor inputs, in this order; all defined (absent biases are empty tensors), so that the
// node's edge i is input i (needs_input_grad counts defined tensors only).
enum Input { kX, kWeightIh, kBias, kSecond, kWeightHh, kState, kInputs };

struct ElmanProjected : public torch::autograd::Function<ElmanProjected> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w_ih,
                               const Tensor& bias, const Tensor& second, const Tensor& w_hh,
                               const Tensor& state, bool relu, bool reverse) {
    // grad mode is off here: the kernel's tensors are plain
    const auto result = elman_projected_forward(x, w_ih, bias, second, w_hh, state, Tensor(),
                                                relu, reverse, /*training=*/true);
    TORCH_CHECK(!result.empty(), "rnnkit elman node: the projected kernel declined a call "
                "elman_projected_applies accepted");
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, w_ih, bias, second, w_hh, state, result[2]});
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["reverse"] = reverse;
    return {result[0], result[1]};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w_ih = saved[1], &bias = saved[2], &second = saved[3];
    const Tensor &w_hh = saved[4], &state = saved[5], &states = saved[6];
    const bool relu = ctx->saved_data["relu"].toBool();
    const bool reverse = ctx->saved_data["reverse"].toBool();
    std::vector<bool> needs(kInputs);
    for (int i = 0; i < kInputs; ++i) needs[i] = ctx->needs_input_grad(i);
    const Tensor& d_out = grads[0];
    const Tensor& d_state = grads[1];
    variable_list result(kInputs + 2);  // + relu, reverse: no gradient
    if (at::GradMode::is_enabled() || wrapped(d_out) || wrapped(d_state)) {
      pybind11::gil_scoped_acquire gil;
      const auto fn = pybind11::module_::import("rnnkit.engine.compiled._functions")
                          .attr("_elman_differentiable");
      const auto list = fn(std::vector<Tensor>{x, w_ih, bias, second, w_hh, state}, needs,
                           d_out, d_state, relu, reverse)
                            .cast<std::vector<std::optional<Tensor>>>();
      for (int i = 0; i < kInputs; ++i) {
        if (list[i].has_value()) result[i] = *list[i];
      }
      return result;
    }
    const bool want_bias = (bias.numel() > 0 && needs[kBias]) ||
                           (second.numel() > 0 && needs[kSecond]);
    const auto g = elman_projected_backward(x, w_ih, w_hh, states, d_out, d_state, relu,
                                            reverse, needs[kX], needs[kWeightIh], want_bias);
    // g: {d x, d W_ih, d bias, d state, d W_hh}
    if (needs[kX]) result[kX] = g[0];
    if (needs[kWeightIh]) result[kWeightIh] = g[1];
    if (bias.numel() > 0 && needs[kBias]) result[kBias] = g[2];
    if (second.numel() > 0 && needs[kSecond]) {
      result[kSecond] = result[kBias].defined() ? g[2].clone() : g[2];
    }
    if (needs[kState]) result[kState] = g[3];
    if (needs[kWeightHh]) result[kWeightHh] = g[4];
    return result;
  }
};

}  // namespace

// [out (T, B, H), final state (B, H)] with a C++ autograd node, or [] where the projected
// kernel does not apply (the caller then takes the Python Function). bias / second: empty
// tensors when absent.
std::vector<Tensor> elman_projected_apply(const Tensor& x, const Tensor& w_ih,
                                          const Tensor& bias, const Tensor& second,
                                          const Tensor& w_hh, const Tensor& state,
                                          const Tensor& lengths, bool relu, bool reverse) {
  if (!elman_projected_applies(x, w_hh, lengths)) return {};
  const bool training =
      at::GradMode::is_enabled() &&
      (x.requires_grad() || w_ih.requires_grad() || bias.requires_grad() ||
       second.requires_grad() || w_hh.requires_grad() || state.requires_grad());
  if (!training) {
    const auto result = elman_projected_forward(x, w_ih, bias, second, w_hh, state, lengths,
                                                relu, reverse, false);
    return {result[0], result[1]};
  }
  return ElmanProjected::apply(x, w_ih, bias, second, w_hh, state, relu, reverse);
}

}  // namespace rnnkit
