// Keras's categorical cross-entropy on softmax(logits) as one C++ autograd node
// (rnnkit/training/keras_loss.py has the formula, the checks and the torch-op twin
// this replaces when the extension is built).
//
// Why in C++: at issue 13 row 2's size (100 samples, 10 classes) the loss is a few hundred
// flops, and its cost is the calls around them: a Python autograd.Function pays ~25 us to
// apply and as much again for its Python backward, the op-by-op form five graph nodes and
// ~140 us forward and backward. This node is one call each way.
//
//   log p_nc = z_nc - max_c z_nc - log sum_c exp(z_nc - max_c z_nc)      (as torch's log_softmax)
//   loss     = -(1/N) sum_n sum_c t_nc clamp(log p_nc, low, high)
//   d z_nj   = (grad/N) (p_nj sum_c t_nc m_nc - t_nj m_nj),   m = [low <= log p <= high]
//
// Targets: class ids (N,) int64 (t one-hot) or probabilities (N, C) of the logits' dtype.
#include <torch/extension.h>

#include "common.h"

#include <cmath>
#include <vector>

namespace rnnkit {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// One row: probabilities into p (C), and the row's contribution -sum_c t_c clamp(log p_c)
// with the held weights w (ids: w[0] = m_y; probabilities: w[c] = t_c m_c).
template <typename scalar_t>
scalar_t row_forward(const scalar_t* z, int64_t C, const int64_t* id, const scalar_t* t,
                     scalar_t low, scalar_t high, scalar_t* p, scalar_t* w) {
  using V = Vec<scalar_t>;
  scalar_t top, log_sum;
  if (C < 2 * V::size()) {  // a short row (a classifier's): scalar, no partial vectors
    top = z[0];
    for (int64_t c = 1; c < C; ++c) top = std::max(top, z[c]);
    scalar_t sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += (p[c] = std::exp(z[c] - top));
    log_sum = std::log(sum);
    const scalar_t inv = scalar_t(1) / sum;
    for (int64_t c = 0; c < C; ++c) p[c] *= inv;
  } else {
    top = at::vec::reduce_all<scalar_t>(
        [](V& a, V& b) { return at::vec::maximum(a, b); }, z, C);
    at::vec::map([top](V v) { return (v - V(top)).exp(); }, p, z, C);
    const scalar_t sum = at::vec::reduce_all<scalar_t>(
        [](V& a, V& b) { return a + b; }, p, C);
    log_sum = std::log(sum);
    const scalar_t inv = scalar_t(1) / sum;
    at::vec::map([inv](V v) { return v * V(inv); }, p, p, C);
  }
  auto held = [&](scalar_t log_p, scalar_t weight, scalar_t* into) {
    const bool inside = log_p >= low && log_p <= high;
    *into = inside ? weight : scalar_t(0);
    return weight * std::min(std::max(log_p, low), high);
  };
  if (id != nullptr) return -held(z[*id] - top - log_sum, scalar_t(1), w);
  scalar_t sum = 0;
  for (int64_t c = 0; c < C; ++c) sum += held(z[c] - top - log_sum, t[c], w + c);
  return -sum;
}

struct KerasCrossEntropy : public torch::autograd::Function<KerasCrossEntropy> {
  static Tensor forward(AutogradContext* ctx, const Tensor& logits_in, const Tensor& target_in,
                        double low, double high) {
    const Tensor logits = logits_in.contiguous();  // (N, C)
    const Tensor target = target_in.contiguous();  // (N,) ids or (N, C) probabilities
    const bool ids = target.dim() == 1;
    const int64_t N = logits.size(0), C = logits.size(1);
    Tensor p = at::empty_like(logits);                               // (N, C) softmax
    Tensor held = at::empty(ids ? at::IntArrayRef{N} : at::IntArrayRef{N, C}, logits.options());
    std::vector<double> rows(N);                                     // per-row losses
    if (ids) {
      const int64_t* y = target.data_ptr<int64_t>();
      for (int64_t n = 0; n < N; ++n) {
        TORCH_CHECK_INDEX(y[n] >= 0 && y[n] < C, "keras_crossentropy: class id ", y[n],
                          " (sample ", n, ") is out of bounds for ", C, " classes");
      }
    }
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "keras_crossentropy", [&] {
      const scalar_t* z = logits.data_ptr<scalar_t>();
      scalar_t* pp = p.data_ptr<scalar_t>();
      scalar_t* hp = held.data_ptr<scalar_t>();
      double* rp = rows.data();
      const int64_t* y = ids ? target.data_ptr<int64_t>() : nullptr;
      const scalar_t* t = ids ? nullptr : target.data_ptr<scalar_t>();
      // rows per task: the kernels' pointwise grain (common.h), so a classifier's batch runs
      // on the calling thread
      at::parallel_for(0, N, row_grain(C), [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          rp[n] = row_forward<scalar_t>(z + n * C, C, ids ? y + n : nullptr,
                                        ids ? nullptr : t + n * C, static_cast<scalar_t>(low),
                                        static_cast<scalar_t>(high), pp + n * C,
                                        hp + (ids ? n : n * C));
        }
      });
    });
    ctx->save_for_backward({p, target, held});
    double total = 0;  // in a fixed order, whatever the threads
    for (const double row : rows) total += row;
    return at::scalar_tensor(total / static_cast<double>(N), logits.options());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "keras_crossentropy: gradients of gradients (create_graph=True) are not "
                "available: its gradient is written out, not recorded");
    const auto saved = ctx->get_saved_variables();
    const Tensor &p = saved[0], &target = saved[1], &held = saved[2];
    variable_list result(4);
    if (!ctx->needs_input_grad(0)) return result;
    const Tensor& grad = grads[0];
    TORCH_CHECK(grad.numel() == 1 && grad.has_storage(),
                "keras_crossentropy: its gradient takes a plain scalar gradient (vmapped or "
                "batched gradients are not supported)");
    const bool ids = target.dim() == 1;
    const int64_t N = p.size(0), C = p.size(1);
    Tensor d = at::empty_like(p);                                    // (N, C)
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "keras_crossentropy_backward", [&] {
      const scalar_t scale = static_cast<scalar_t>(grad.item<double>() / N);
      const scalar_t* pp = p.data_ptr<scalar_t>();
      const scalar_t* hp = held.data_ptr<scalar_t>();
      const int64_t* y = ids ? target.data_ptr<int64_t>() : nullptr;
      scalar_t* dp = d.data_ptr<scalar_t>();
      at::parallel_for(0, N, row_grain(C), [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* row = pp + n * C;
          scalar_t* out = dp + n * C;
          if (ids) {
            const scalar_t weight = hp[n] * scale;
            for (int64_t c = 0; c < C; ++c) out[c] = row[c] * weight;
            out[y[n]] -= weight;
          } else {
            const scalar_t* h = hp + n * C;
            scalar_t total = 0;
            for (int64_t c = 0; c < C; ++c) total += h[c];
            for (int64_t c = 0; c < C; ++c) out[c] = (row[c] * total - h[c]) * scale;
          }
        }
      });
    });
    result[0] = d;
    return result;
  }
};

}  // namespace

// The loss (a 0-dim tensor) of logits (N, C) against ids (N,) int64 or probabilities (N, C),
// differentiable in the logits; the Python side checks the arguments' shapes and dtypes.
Tensor keras_crossentropy(const Tensor& logits, const Tensor& target, double low,
                          double high) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) > 0 && logits.device().is_cpu(),
              "keras_crossentropy: logits (N, C) with N > 0 on the CPU expected, got ",
              logits.sizes());
  TORCH_CHECK((target.dim() == 1 && target.scalar_type() == at::kLong &&
               target.size(0) == logits.size(0)) ||
                  (target.sizes() == logits.sizes() &&
                   target.scalar_type() == logits.scalar_type()),
              "keras_crossentropy: target must be int64 ids (N,) or probabilities of the "
              "logits' shape and dtype, got ", target.scalar_type(), " ", target.sizes());
  return KerasCrossEntropy::apply(logits, target, low, high);
}

}  // namespace rnnkit
