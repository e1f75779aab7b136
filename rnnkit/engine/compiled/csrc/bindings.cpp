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
  m.def("has_blas_gemm", []() { return rnnkit::sgemm_ != nullptr && rnnkit::dgemm_ != nullptr; });
}
