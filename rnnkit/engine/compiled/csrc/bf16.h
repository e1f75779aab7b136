// precision="bf16" in the compiled kernels: the GEMMs with bfloat16 operands, float32 results.
//
// What is bf16 (docs/engine-compiled.md, "bf16"): the operands of the GEMMs only. A bf16 call
// rounds each recurrent weight to bfloat16 once per call and the state (the GEMM's left
// operand, `state[:, :K]` or the second GEMM's `mid`) once per step, round to nearest even;
// the products are accumulated and written in float32, and everything else (the pointwise
// gate math, layer norms, the carried state, the outputs, the saved activations) stays
// float32. BPTT is float32 against the same rounded operands: d state = d rec W_bf16 and
// dW = d rec^T state_bf16, both float32 GEMMs of the bf16 values (a straight-through
// rounding: the gradient of the rounding is taken as 1).
//
// Three ways to run a bf16 GEMM (set_bf16_gemm):
//   * "amx": the per-step products on AMX tiles with the weight laid out once per call
//     (amx.h); the hoisted input projection, one tall product, on MKL. The default where the
//     CPU has AMX-BF16 and Linux grants its tile state.
//   * "mkl": MKL's cblas_gemm_bf16bf16f32 (exported by libtorch_cpu; weak, as the other BLAS
//     symbols), which uses AVX512-bf16 or AMX where the CPU has them. The default on a CPU
//     with AVX512-bf16 but no AMX.
//   * "emulated": the operands rounded to bf16 values held in float32, multiplied by the
//     float32 BLAS. A product of two bf16 values is exact in float32 (8 + 8 mantissa bits), so
//     this is the same GEMM up to the order of the float32 sums: what a CPU without
//     AVX512-bf16/AMX gets (AMD EPYC Zen 3, AVX2), as fast as float32 plus the rounding, not
//     faster. The default there.
#pragma once

#include "amx.h"
#include "buffer_cache.h"
#include "common.h"

#include <c10/util/BFloat16.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstring>
#include <optional>
#include <string>

extern "C" {
// MKL: row-major/col-major C = alpha op(A) op(B) + beta C with bf16 A, B and float C.
void cblas_gemm_bf16bf16f32(int, int, int, int, int, int, float, const uint16_t*, int,
                            const uint16_t*, int, float, float*, int) __attribute__((weak));
}

namespace rnnkit {

// Whether this CPU has bf16 arithmetic: AVX512-BF16 (CPUID.(7,1):EAX[5]) or AMX-BF16
// (CPUID.(7,0):EDX[22]).
inline bool cpu_has_native_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  bool avx512_bf16 = false, amx_bf16 = false;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    amx_bf16 = (d >> 22) & 1u;
    if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) avx512_bf16 = (a >> 5) & 1u;
  }
  return avx512_bf16 || amx_bf16;
#else
  return false;  // MKL's bf16 GEMM is x86 only
#endif
}

inline bool have_mkl_bf16_gemm() { return cblas_gemm_bf16bf16f32 != nullptr; }

enum class Bf16Gemm : int { kEmulated = 0, kMkl = 1, kAmx = 2 };

// How this process runs bf16 GEMMs (set_bf16_gemm changes it).
inline std::atomic<int>& bf16_gemm_mode_flag() {
  static std::atomic<int> mode{static_cast<int>(
      amx::available() && have_mkl_bf16_gemm() ? Bf16Gemm::kAmx
      : cpu_has_native_bf16() && have_mkl_bf16_gemm() ? Bf16Gemm::kMkl
      : Bf16Gemm::kEmulated)};
  return mode;
}

inline Bf16Gemm bf16_gemm_mode() { return static_cast<Bf16Gemm>(bf16_gemm_mode_flag().load()); }

inline const char* bf16_gemm_name() {
  switch (bf16_gemm_mode()) {
    case Bf16Gemm::kAmx: return "amx";
    case Bf16Gemm::kMkl: return "mkl";
    default: return "emulated";
  }
}

// n values rounded to bf16 and kept as float (the emulated GEMM's operand): the same rounding
// as c10::BFloat16 (add 0x7fff + the lowest kept bit, drop the low 16 bits; NaN kept), written
// as integer operations the compiler vectorises.
inline void round_bf16_row(const float* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    uint32_t u;
    std::memcpy(&u, &src[j], sizeof(u));
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    const uint32_t v = src[j] != src[j] ? u : r;  // NaN: kept as it is
    std::memcpy(&dst[j], &v, sizeof(v));
  }
}

// Row-major C (M, N) = A (M, K) Bm (K, N) + beta C, A and Bm bf16, C float32, with MKL; split
// by column slices across threads as gemm_rows does for float32.
inline void mkl_bf16_gemm_rows(int64_t M, int64_t N, int64_t K, const c10::BFloat16* A,
                               int64_t lda, const c10::BFloat16* Bm, int64_t ldb, float beta,
                               float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  check_gemm_args(M, N, K, lda, ldb, ldc);
  TORCH_CHECK(have_mkl_bf16_gemm(), "rnnkit bf16 gemm: this torch does not export MKL's "
              "cblas_gemm_bf16bf16f32; use the emulated bf16 GEMM");
  auto call = [&](int64_t n0, int64_t n1) {
    cblas_gemm_bf16bf16f32(cblas::kRowMajor, cblas::kNoTrans, cblas::kNoTrans, M, n1 - n0, K,
                           1.0f, reinterpret_cast<const uint16_t*>(A), lda,
                           reinterpret_cast<const uint16_t*>(Bm + n0), ldb, beta, C + n0, ldc);
  };
  const int64_t threads = at::get_num_threads();
  const double flops = 2.0 * M * N * K;
  if (threads > 1 && flops >= 2e6 && N >= 64 * threads && !at::in_parallel_region()) {
    const int64_t per = ((N + threads - 1) / threads + 31) / 32 * 32;
    const int64_t chunks = (N + per - 1) / per;
    short_parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t q = c0; q < c1; ++q) call(q * per, std::min(N, (q + 1) * per));
    });
    return;
  }
  OneBlasThread one(flops < 2e6 || thread_gate().closed());
  call(0, N);
}

// The template's per-step product, C (rows, N) = A (rows, K) W (K, N) + beta C, in float32
// (RecurrentGemm) or, when `bf16`, with A rounded to bf16 at every call and W rounded once
// here. Only float32 tensors take bf16.
template <typename scalar_t>
class StepGemm {
 public:
  StepGemm(int64_t M, const Tensor& W, bool bf16) : bf16_(bf16) {
    if (!bf16) {
      plain_.emplace(M, W);
      return;
    }
    TORCH_CHECK((std::is_same_v<scalar_t, float>), "rnnkit: precision bf16 needs float32 "
                "tensors, got ", c10::CppTypeToScalarType<scalar_t>::value);
    K_ = W.size(0);
    N_ = W.size(1);
    mode_ = bf16_gemm_mode();
    if (mode_ == Bf16Gemm::kAmx) {
      amx_ = amx::StepProduct(M, W);  // the weight in tile order once per call
    } else if (mode_ == Bf16Gemm::kMkl) {
      wb_ = W.to(at::kBFloat16).contiguous();
      ab_ = at::empty({M, std::max<int64_t>(1, K_)}, W.options().dtype(at::kBFloat16));
    } else {
      wr_ = W.to(at::kBFloat16).to(W.scalar_type()).contiguous();
      ar_ = at::empty({M, std::max<int64_t>(1, K_)}, W.options());
      plain_.emplace(M, wr_);
    }
  }

  void operator()(const scalar_t* A, int64_t lda, scalar_t beta, scalar_t* C, int64_t ldc,
                  int64_t rows) const {
    if (!bf16_) {
      (*plain_)(A, lda, beta, C, ldc, rows);
      return;
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (rows == 0 || N_ == 0) return;
      const int64_t ld = std::max<int64_t>(1, K_);
      if (mode_ == Bf16Gemm::kAmx) {
        amx_(A, lda, beta, C, ldc, rows);
      } else if (mode_ == Bf16Gemm::kMkl) {
        c10::BFloat16* ab = ab_.data_ptr<c10::BFloat16>();
        for (int64_t r = 0; r < rows; ++r) {
          at::vec::convert(A + r * lda, ab + r * ld, K_);  // vectorised, round to nearest even
        }
        mkl_bf16_gemm_rows(rows, N_, K_, ab, ld, wb_.data_ptr<c10::BFloat16>(),
                           row_ld(wb_), beta, C, ldc);
      } else {
        float* ar = ar_.data_ptr<float>();
        for (int64_t r = 0; r < rows; ++r) round_bf16_row(A + r * lda, ar + r * ld, K_);
        (*plain_)(ar, ld, beta, C, ldc, rows);
      }
    }
  }

 private:
  bool bf16_ = false;
  Bf16Gemm mode_ = Bf16Gemm::kEmulated;
  int64_t K_ = 0, N_ = 0;
  std::optional<RecurrentGemm<scalar_t>> plain_;
  amx::StepProduct amx_;
  Tensor wb_, ab_, wr_, ar_;
};

// A tensor's values rounded to bf16 and held in its own dtype (BPTT's operands), or the
// tensor itself when not bf16.
inline Tensor bf16_rounded(const Tensor& t, bool bf16) {
  return bf16 ? t.to(at::kBFloat16).to(t.scalar_type()) : t;
}

// The call's precision flag: absent means float32 (callers of the template that predate it).
inline bool bf16_flag(const std::map<std::string, bool>& flags) {
  const auto it = flags.find("bf16");
  return it != flags.end() && it->second;
}

// The hoisted input projection in bf16: x (M, K) W^T, W (N, K), both float32, rounded to bf16
// here; float32 result (M, N). MKL threads it itself.
inline Tensor bf16_linear(const Tensor& x, const Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "rnnkit bf16_linear: need x (M, K) and w (N, K), got ", x.sizes(), " and ",
              w.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                  x.device().is_cpu() && w.device().is_cpu(),
              "rnnkit bf16_linear: float32 CPU tensors expected, got ", x.scalar_type(), " and ",
              w.scalar_type());
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  if (bf16_gemm_mode() == Bf16Gemm::kEmulated || M == 0 || N == 0 || K == 0) {
    return at::mm(bf16_rounded(x, true), bf16_rounded(w, true).t());
  }
  const Tensor xb = x.to(at::kBFloat16).contiguous();
  const Tensor wb = w.to(at::kBFloat16).contiguous();
  // (T*B, G*H): 64 MB at B=64, T=64, H=1024, fresh pages at every call from at::empty
  Tensor out = BufferCache::instance().empty({M, N}, x.options());
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  TORCH_CHECK(M <= kMaxInt && N <= kMaxInt && K <= kMaxInt, "rnnkit bf16_linear: sizes exceed "
              "the BLAS integer range (M=", M, ", N=", N, ", K=", K, ")");
  // C = xb wb^T: B is W (N, K) read transposed, ldb = K.
  cblas_gemm_bf16bf16f32(cblas::kRowMajor, cblas::kNoTrans, 112 /* CblasTrans */, M, N, K,
                         1.0f, reinterpret_cast<const uint16_t*>(xb.data_ptr<c10::BFloat16>()),
                         K, reinterpret_cast<const uint16_t*>(wb.data_ptr<c10::BFloat16>()), K,
                         0.0f, out.data_ptr<float>(), N);
  return out;
}

}  // namespace rnnkit
