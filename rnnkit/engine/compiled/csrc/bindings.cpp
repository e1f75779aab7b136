// Python bindings of rnnkit's compiled recurrences (see rnnkit/engine/compiled/__init__.py).
#include <torch/extension.h>

#include "common.h"

#include <vector>

namespace rnnkit {
using at::Tensor;
std::vector<Tensor> lstm_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&, bool, bool, bool, bool, double, double, double,
                                 bool, bool);
std::vector<Tensor> lstm_backward(const Tensor&, const Tensor&, const Tensor&,
                                  const std::vector<Tensor>&, const Tensor&, const Tensor&,
                                  const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, const Tensor&, const Tensor&, int64_t, bool,
                                  bool, bool, bool, double, bool);
std::vector<Tensor> gru_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, bool, bool, double, double, bool, bool);
std::vector<Tensor> gru_backward(const Tensor&, const Tensor&, const std::vector<Tensor>&,
                                 const Tensor&, bool, const Tensor&, const Tensor&,
                                 const Tensor&, int64_t, bool, bool, bool);
std::vector<Tensor> elman_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  bool, bool, bool);
std::vector<Tensor> elman_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                   const Tensor&, int64_t, bool, bool);
}  // namespace rnnkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkit compiled recurrences: whole-sequence forward and BPTT in C++";
  m.def("lstm_forward", &rnnkit::lstm_forward);
  m.def("lstm_backward", &rnnkit::lstm_backward);
  m.def("gru_forward", &rnnkit::gru_forward);
  m.def("gru_backward", &rnnkit::gru_backward);
  m.def("elman_forward", &rnnkit::elman_forward);
  m.def("elman_backward", &rnnkit::elman_backward);
  m.def("set_blas_gemm", [](bool on) { rnnkit::use_blas().store(on); },
        "Use the BLAS Fortran gemm for per-step products (default) or ATen's mm (tests).");
  m.def("set_packing", [](bool on) { rnnkit::use_packing().store(on); },
        "Pack the recurrent weights once per sequence with MKL (off by default: no gain measured).");
  m.def("has_blas_gemm", []() { return rnnkit::sgemm_ != nullptr && rnnkit::dgemm_ != nullptr; });
}
