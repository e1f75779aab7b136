// Keras's RMSprop update in one pass (rnnkit/training/rmsprop.py has the formula, the state
// handling and the op-by-op torch form this replaces when the extension is built).
//
// Why in C++: a small model's update is a few thousand flops, and the op-by-op form spends
// ~90 us on its ten calls (a gradient concatenation, seven ops on the flat state, one foreach
// add); this is one call from Python.
//
// Rounding: every value is rounded where the op-by-op form rounds it, so the two agree to the
// bit (tests/training/test_rmsprop.py). torch's add with alpha is a fused multiply-add
// (ufunc/add.h: vec::fmadd(other, alpha, self)), so is this; every other product is rounded
// before its sum, which `rounded` keeps the compiler from contracting into an FMA. The square
// root is torch's (two passes around at::sqrt_): its float kernel is not the correctly
// rounded sqrtss (1 in ~4000 results differ by an ulp).
#include <torch/extension.h>

#include "common.h"

#include <cmath>
#include <vector>

namespace rnnkit {

using at::Tensor;

namespace {

template <typename T>
inline T rounded(T x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(x));  // x leaves a register as computed: no FMA contraction across it
#else
  volatile T kept = x;
  x = kept;
#endif
  return x;
}

template <typename T>
struct Options {
  T lr, rho, one_minus_rho, momentum, epsilon;
  bool use_momentum, centered;
};

// Elements [begin, end) of one parameter, first pass: the state (v, a: its share of the flat
// buffers) and the denominator d before its square root.
template <typename T>
void update_state(const T* g, T* v, T* a, T* d, int64_t begin, int64_t end,
                  const Options<T>& o) {
  for (int64_t i = begin; i < end; ++i) {
    const T gi = g[i];
    const T vi = std::fma(rounded(gi * gi), o.one_minus_rho, rounded(v[i] * o.rho));
    v[i] = vi;
    T di = vi + o.epsilon;
    if (o.centered) {
      const T ai = std::fma(gi, o.one_minus_rho, rounded(a[i] * o.rho));
      a[i] = ai;
      di = di - rounded(ai * ai);
    }
    d[i] = di;
  }
}

// Second pass, after sqrt(d): the step lr g / sqrt(d), through the momentum buffer m.
template <typename T>
void apply_step(T* p, const T* g, T* m, const T* root, int64_t begin, int64_t end,
                const Options<T>& o) {
  for (int64_t i = begin; i < end; ++i) {
    T step = rounded(g[i] * o.lr) / root[i];
    if (o.use_momentum) {
      step = rounded(m[i] * o.momentum) + step;
      m[i] = step;
    }
    p[i] = p[i] - step;
  }
}

}  // namespace

void keras_rmsprop_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                        const Tensor& velocity, const Tensor& momentum, const Tensor& average,
                        const Tensor& scratch, double lr, double rho, double momentum_factor,
                        double epsilon) {
  TORCH_CHECK(params.size() == grads.size(), "keras_rmsprop_step: ", params.size(),
              " parameters but ", grads.size(), " gradients");
  const bool use_momentum = momentum.numel() > 0, centered = average.numel() > 0;
  int64_t total = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    const Tensor &p = params[k], &g = grads[k];
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && p.sizes() == g.sizes() &&
                    p.scalar_type() == velocity.scalar_type() &&
                    g.scalar_type() == velocity.scalar_type() && p.device().is_cpu() &&
                    g.device().is_cpu() && !g.is_sparse(),
                "keras_rmsprop_step: parameter ", k, " ", p.sizes(), " and its gradient ",
                g.sizes(), " must be contiguous dense CPU tensors of the state's dtype");
    total += p.numel();
  }
  for (const Tensor* state : {&velocity, &momentum, &average, &scratch}) {
    TORCH_CHECK((state->numel() == 0 && state != &velocity && state != &scratch) ||
                    (state->is_contiguous() && state->numel() == total &&
                     state->scalar_type() == velocity.scalar_type()),
                "keras_rmsprop_step: a state buffer of ", state->numel(), " elements for ",
                total, " parameter elements");
  }
  AT_DISPATCH_FLOATING_TYPES(velocity.scalar_type(), "keras_rmsprop_step", [&] {
    using T = scalar_t;
    const Options<T> o{static_cast<T>(lr), static_cast<T>(rho), static_cast<T>(1.0 - rho),
                       static_cast<T>(momentum_factor), static_cast<T>(epsilon),
                       use_momentum, centered};
    // the same pointers for both passes: parameter k's share of each flat buffer
    auto each = [&](auto&& pass) {
      int64_t offset = 0;
      for (size_t k = 0; k < params.size(); ++k) {
        const int64_t n = params[k].numel();
        at::parallel_for(0, n, row_grain(1), [&](int64_t begin, int64_t end) {
          pass(k, offset, begin, end);
        });
        offset += n;
      }
    };
    T* d = scratch.data_ptr<T>();
    each([&](size_t k, int64_t offset, int64_t begin, int64_t end) {
      update_state<T>(grads[k].data_ptr<T>(), velocity.data_ptr<T>() + offset,
                      centered ? average.data_ptr<T>() + offset : nullptr, d + offset, begin,
                      end, o);
    });
    // torch's own square root (its float32 kernel is not always the correctly rounded one,
    // sqrtss): the op-by-op form takes it on a buffer of this length, so the two round alike
    Tensor root = scratch;  // a handle: sqrt_ takes a non-const one
    at::sqrt_(root);
    each([&](size_t k, int64_t offset, int64_t begin, int64_t end) {
      apply_step<T>(params[k].data_ptr<T>(), grads[k].data_ptr<T>(),
                    use_momentum ? momentum.data_ptr<T>() + offset : nullptr, d + offset,
                    begin, end, o);
    });
  });
  // an in-place change, as torch's foreach add is: a graph that saved a parameter refuses a
  // backward after this step instead of using the new values
  for (const Tensor& p : params) torch::autograd::impl::bump_version(p);
}

}  // namespace rnnkit
