// The per-step bf16 GEMM on AMX tiles with the weight packed once per call.
//
// Why not MKL's cblas_gemm_bf16bf16f32 for the per-step product: MKL re-lays the whole weight
// into its AMX tile order inside every call. At a step of (B, K, N) = (64, 1024, 4096) that
// copy (mkl_blas_avx512_gemm_bf16bf16f32_copy_down32_ea) was ~18% of a peephole-LSTM bf16
// inference call on an Intel Xeon (model 207), as long as the tile products themselves; the
// weight is the same at every step, so here it is laid out once per call (PackedWeight) and
// each step only converts its few state rows to bf16 and runs the tiles.
//
// Tiles (Intel SDM, AMX): tmm0-3 accumulate a 32 x 32 block of C in float32 (four 16 x 16
// tiles), tmm4-5 hold 16 rows x 32 bf16 of A, tmm6-7 hold 32 rows of the weight for 16
// columns in pair-interleaved (VNNI) order: row r of a weight tile holds, for each column c,
// W[k0 + 2r][c] then W[k0 + 2r + 1][c]. tdpbf16ps adds the pairwise products in float32.
#pragma once

#include "common.h"

#include <c10/util/BFloat16.h>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define RNNKIT_AMX_BUILD 1
#else
#define RNNKIT_AMX_BUILD 0
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace rnnkit {
namespace amx {

constexpr int64_t kTileRows = 16;   // rows of every tile
constexpr int64_t kTileK = 32;      // bf16 values of K per tile row (64 bytes)
constexpr int64_t kBlockRows = 32;  // rows of C per block (two A tiles)
constexpr int64_t kBlockCols = 32;  // columns of C per block (two weight tiles)
constexpr int64_t kTileElems = kTileRows * kTileK;  // bf16 values in one A or weight tile

// Whether this process may run AMX-BF16: the CPU says so (CPUID.(7,0):EDX bits 22 and 24)
// and Linux grants the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, as oneDNN asks).
inline bool available() {
#if RNNKIT_AMX_BUILD
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 22) & 1u) || !((d >> 24) & 1u)) return false;  // amx-bf16, amx-tile
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

// The (K, N) weight in tile order: for each pair of 16-column blocks and each 32-row slice of
// K, one 16 x 64-byte tile per column block; K and N padded with zeros (to 32 and to 32).
class PackedWeight {
 public:
  PackedWeight() = default;

  // W[k][n] at data[k * s0 + n * s1], float32, rounded to bf16 (nearest even) here.
  PackedWeight(const float* data, int64_t s0, int64_t s1, int64_t K, int64_t N)
      : K_(K), N_(N), kb_((K + kTileK - 1) / kTileK),
        nb_(((N + kBlockCols - 1) / kBlockCols) * 2) {
    buf_ = at::empty({std::max<int64_t>(1, nb_ * kb_ * kTileElems)},
                     at::TensorOptions().dtype(at::kBFloat16));
    c10::BFloat16* out = buf_.data_ptr<c10::BFloat16>();
    at::parallel_for(0, nb_, 1, [&](int64_t b0, int64_t b1) {
      // one 32 x 16 block of W in bf16, rows k, columns c, then pair-interleaved into the tile
      c10::BFloat16 block[kTileK][kTileRows];
      c10::BFloat16 column[kTileK];
      for (int64_t nb = b0; nb < b1; ++nb) {
        const int64_t n0 = nb * kTileRows;
        const int64_t cols = std::clamp<int64_t>(N - n0, 0, kTileRows);
        for (int64_t kb = 0; kb < kb_; ++kb) {
          const int64_t k0 = kb * kTileK;
          const int64_t ks = std::clamp<int64_t>(K - k0, 0, kTileK);
          std::memset(static_cast<void*>(block), 0, sizeof(block));
          if (s1 == 1) {  // rows of W contiguous: convert 16 columns at a time
            for (int64_t k = 0; k < ks; ++k) {
              at::vec::convert(data + (k0 + k) * s0 + n0, block[k], cols);
            }
          } else if (s0 == 1) {  // a transposed (N, K) weight: columns contiguous
            for (int64_t c = 0; c < cols; ++c) {
              at::vec::convert(data + (n0 + c) * s1 + k0, column, ks);
              for (int64_t k = 0; k < ks; ++k) block[k][c] = column[k];
            }
          } else {
            for (int64_t k = 0; k < ks; ++k) {
              for (int64_t c = 0; c < cols; ++c) {
                block[k][c] = c10::BFloat16(data[(k0 + k) * s0 + (n0 + c) * s1]);
              }
            }
          }
          c10::BFloat16* tile = out + (nb * kb_ + kb) * kTileElems;
          for (int64_t r = 0; r < kTileRows; ++r) {
            for (int64_t c = 0; c < kTileRows; ++c) {
              tile[r * kTileK + 2 * c] = block[2 * r][c];
              tile[r * kTileK + 2 * c + 1] = block[2 * r + 1][c];
            }
          }
        }
      }
    });
  }

  int64_t K() const { return K_; }
  int64_t N() const { return N_; }
  int64_t k_blocks() const { return kb_; }
  int64_t col_blocks() const { return nb_; }  // even
  const c10::BFloat16* tile(int64_t nb, int64_t kb) const {
    return buf_.data_ptr<c10::BFloat16>() + (nb * kb_ + kb) * kTileElems;
  }

 private:
  int64_t K_ = 0, N_ = 0, kb_ = 0, nb_ = 0;
  Tensor buf_;
};

// The rows an A operand needs for gemm(): M rounded up to a block.
inline int64_t padded_rows(int64_t M) { return (M + kBlockRows - 1) / kBlockRows * kBlockRows; }
// Its leading dimension: K rounded up to a tile row (the padding must hold zeros).
inline int64_t padded_k(int64_t K) { return (K + kTileK - 1) / kTileK * kTileK; }

#if RNNKIT_AMX_BUILD
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Column blocks [cb0, cb1) (pairs of 16-column weight tiles) of C (M, N) = A W + beta C.
// A: bf16, padded_rows(M) rows of lda >= padded_k(K) values, the K padding zero.
__attribute__((target("amx-tile,amx-bf16,avx512f"))) inline void gemm_blocks(
    int64_t M, const c10::BFloat16* A, int64_t lda, const PackedWeight& W, float beta,
    float* C, int64_t ldc, int64_t cb0, int64_t cb1) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTileRows;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  alignas(64) float stage[4][kTileRows * kTileRows];
  const int64_t N = W.N(), KB = W.k_blocks();
  const int64_t a_stride = lda * static_cast<int64_t>(sizeof(c10::BFloat16));
  const int64_t c_stride = ldc * static_cast<int64_t>(sizeof(float));
  for (int64_t cb = cb0; cb < cb1; ++cb) {
    const int64_t n0 = cb * kBlockCols;
    for (int64_t m0 = 0; m0 < M; m0 += kBlockRows) {
      // C tile t covers rows m0 + 16 (t / 2), columns n0 + 16 (t % 2)
      int64_t rows[4], cols[4];
      bool whole[4];
      for (int t = 0; t < 4; ++t) {
        rows[t] = std::clamp<int64_t>(M - (m0 + kTileRows * (t / 2)), 0, kTileRows);
        cols[t] = std::clamp<int64_t>(N - (n0 + kTileRows * (t % 2)), 0, kTileRows);
        whole[t] = rows[t] == kTileRows && cols[t] == kTileRows;
      }
      auto c_tile = [&](int t) {  // where C tile t starts
        return C + (m0 + kTileRows * (t / 2)) * ldc + n0 + kTileRows * (t % 2);
      };
      if (beta == 0.0f) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      } else {
        for (int t = 0; t < 4; ++t) {
          if (whole[t]) continue;
          std::fill(stage[t], stage[t] + kTileRows * kTileRows, 0.0f);
          for (int64_t r = 0; r < rows[t]; ++r) {
            std::memcpy(stage[t] + r * kTileRows, c_tile(t) + r * ldc, cols[t] * sizeof(float));
          }
        }
        asm volatile("" ::: "memory");  // the staged values are in memory before the loads
        if (whole[0]) _tile_loadd(0, c_tile(0), c_stride); else _tile_loadd(0, stage[0], 64);
        if (whole[1]) _tile_loadd(1, c_tile(1), c_stride); else _tile_loadd(1, stage[1], 64);
        if (whole[2]) _tile_loadd(2, c_tile(2), c_stride); else _tile_loadd(2, stage[2], 64);
        if (whole[3]) _tile_loadd(3, c_tile(3), c_stride); else _tile_loadd(3, stage[3], 64);
      }
      const c10::BFloat16* a0 = A + m0 * lda;
      const c10::BFloat16* a1 = a0 + kTileRows * lda;
      for (int64_t kb = 0; kb < KB; ++kb) {
        _tile_loadd(4, a0 + kb * kTileK, a_stride);
        _tile_loadd(5, a1 + kb * kTileK, a_stride);
        _tile_loadd(6, W.tile(2 * cb, kb), 64);
        _tile_loadd(7, W.tile(2 * cb + 1, kb), 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      if (whole[0]) _tile_stored(0, c_tile(0), c_stride); else _tile_stored(0, stage[0], 64);
      if (whole[1]) _tile_stored(1, c_tile(1), c_stride); else _tile_stored(1, stage[1], 64);
      if (whole[2]) _tile_stored(2, c_tile(2), c_stride); else _tile_stored(2, stage[2], 64);
      if (whole[3]) _tile_stored(3, c_tile(3), c_stride); else _tile_stored(3, stage[3], 64);
      asm volatile("" ::: "memory");  // the tiles' stores land before the copies below
      for (int t = 0; t < 4; ++t) {
        if (whole[t]) continue;
        for (int64_t r = 0; r < rows[t]; ++r) {
          std::memcpy(c_tile(t) + r * ldc, stage[t] + r * kTileRows, cols[t] * sizeof(float));
        }
      }
    }
  }
  _tile_release();
}
#endif

// C (M, N) = A W + beta C (beta 0 or 1) on AMX, the column blocks split across threads as
// gemm_rows splits a float32 product.
inline void gemm(int64_t M, const c10::BFloat16* A, int64_t lda, const PackedWeight& W,
                 float beta, float* C, int64_t ldc) {
#if RNNKIT_AMX_BUILD
  TORCH_CHECK(available(), "rnnkit: AMX-BF16 is not usable in this process");
  TORCH_CHECK(beta == 0.0f || beta == 1.0f, "rnnkit amx gemm: beta must be 0 or 1");
  TORCH_CHECK(lda >= padded_k(W.K()) && ldc >= W.N(), "rnnkit amx gemm: lda ", lda,
              " or ldc ", ldc, " too small for K ", W.K(), ", N ", W.N());
  if (M == 0 || W.N() == 0) return;
  asm volatile("" ::: "memory");  // the caller's A and C are in memory before the tile loads
  const int64_t blocks = W.col_blocks() / 2;
  const int64_t threads = at::get_num_threads();
  const double flops = 2.0 * M * W.N() * W.K();
  if (threads > 1 && flops >= 2e6 && blocks >= 2 * threads) {
    short_parallel_for(blocks, 1, [&](int64_t c0, int64_t c1) {
      gemm_blocks(M, A, lda, W, beta, C, ldc, c0, c1);
    });
  } else {
    gemm_blocks(M, A, lda, W, beta, C, ldc, 0, blocks);
  }
  asm volatile("" ::: "memory");
#else
  (void)M, (void)A, (void)lda, (void)W, (void)beta, (void)C, (void)ldc;
  TORCH_CHECK(false, "rnnkit: AMX is x86-64 Linux only");
#endif
}

// The per-step product C (rows, N) = A (rows, K) W (K, N) + beta C with float32 A, C and W:
// W laid out in tile order once (per call of a recurrence), A's rows rounded to bf16 into a
// zero-padded buffer at every step (its K padding stays zero: a NaN there would meet the
// weight's zero padding).
class StepProduct {
 public:
  StepProduct() = default;

  // M: the most rows a step will have; W (K, N) float32, any strides.
  StepProduct(int64_t M, const Tensor& W) {
    TORCH_CHECK(W.dim() == 2 && W.scalar_type() == at::kFloat, "rnnkit amx step product: "
                "a 2-D float32 weight expected, got ", W.sizes(), " ", W.scalar_type());
    packed_ = PackedWeight(W.data_ptr<float>(), W.stride(0), W.stride(1), W.size(0),
                           W.size(1));
    ab_ = at::zeros({padded_rows(M), padded_k(W.size(0))}, W.options().dtype(at::kBFloat16));
  }

  void operator()(const float* A, int64_t lda, float beta, float* C, int64_t ldc,
                  int64_t rows) const {
    TORCH_CHECK(rows <= ab_.size(0), "rnnkit amx step product: ", rows, " rows for ",
                ab_.size(0));
    c10::BFloat16* ab = ab_.data_ptr<c10::BFloat16>();
    const int64_t ldab = ab_.size(1);
    for (int64_t r = 0; r < rows; ++r) {
      at::vec::convert(A + r * lda, ab + r * ldab, packed_.K());  // round to nearest even
    }
    gemm(rows, ab, ldab, packed_, beta, C, ldc);
  }

 private:
  PackedWeight packed_;
  Tensor ab_;
};

}  // namespace amx
}  // namespace rnnkit
