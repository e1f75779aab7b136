// Entry points of the Elman layer on the small path with the input projection inside the
// steps (elman.cpp) and its C++ autograd node (elman_node.cpp); bound in bindings.cpp.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace rnnkit {

// Whether elman_projected_forward runs this call: x (T, B, H_in) float32/float64, H <= 32,
// one thread or a product too small for threads, and every row running all T steps.
bool elman_projected_applies(const at::Tensor& x, const at::Tensor& weight_hh,
                             const at::Tensor& lengths);

// [out (T, B, H), final state (B, H), states (T+1, B, H) when training], or [] where it does
// not apply. bias / second: empty tensors when absent.
std::vector<at::Tensor> elman_projected_forward(const at::Tensor& x, const at::Tensor& weight_ih,
                                                const at::Tensor& bias,
                                                const at::Tensor& second,
                                                const at::Tensor& weight_hh,
                                                const at::Tensor& state,
                                                const at::Tensor& lengths, bool relu,
                                                bool reverse, bool training);

// [d x, d W_ih, d bias, d state, d W_hh]; d x, d W_ih and d bias undefined unless asked for.
std::vector<at::Tensor> elman_projected_backward(
    const at::Tensor& x, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& states, const at::Tensor& grad_out, const at::Tensor& grad_state,
    bool relu, bool reverse, bool need_x, bool need_weight_ih, bool need_bias);

// elman_projected_forward with a C++ autograd node: [out, final state], or [].
std::vector<at::Tensor> elman_projected_apply(const at::Tensor& x, const at::Tensor& weight_ih,
                                              const at::Tensor& bias, const at::Tensor& second,
                                              const at::Tensor& weight_hh,
                                              const at::Tensor& state, const at::Tensor& lengths,
                                              bool relu, bool reverse);

}  // namespace rnnkit
