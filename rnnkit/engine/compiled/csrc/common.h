// Shared helpers for rnnkit's compiled recurrences.
//
// Every kernel follows the same plan (docs/engine-compiled.md):
//   * the input projection xp = W_ih x + b (T, B, G*H) is computed by the caller over all
//     time steps at once (one GEMM, autograd handles its backward);
//   * the C++ loop runs step s = 0 .. S-1 (S = longest sequence). Row b is active at step s
//     when s < len[b]; it then reads time position t = s (or len[b]-1-s when reverse).
//     Inactive rows keep their state and produce no output (outputs stay zero there);
//   * everything saved for backward is stored in *step* order (S, B, .) with zero rows for
//     inactive (s, b), so the weight gradients are one GEMM each over all S*B rows.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

// On a lambda handed to a hot loop (after its parameter list): GCC otherwise leaves it as a
// call per row once a file's inlining budget runs out (inline-unit-growth).
#define RNNKIT_ALWAYS_INLINE __attribute__((always_inline))

namespace rnnkit {

using at::Tensor;

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// Load/store `cnt` lanes at p + j (cnt < Vec::size() only in a row's tail).
template <typename scalar_t>
inline Vec<scalar_t> ld(const scalar_t* p, int64_t j, int64_t cnt) {
  return cnt == Vec<scalar_t>::size() ? Vec<scalar_t>::loadu(p + j)
                                      : Vec<scalar_t>::loadu(p + j, cnt);
}
template <typename scalar_t>
inline void st(const Vec<scalar_t>& v, scalar_t* p, int64_t j, int64_t cnt) {
  if (cnt == Vec<scalar_t>::size()) {
    v.store(p + j);
  } else {
    v.store(p + j, cnt);
  }
}

// Call f(j, cnt) over [0, n) in vector-sized chunks.
template <typename scalar_t, typename F>
inline void vloop(int64_t n, const F& f) {
  constexpr int64_t W = Vec<scalar_t>::size();
  int64_t j = 0;
  for (; j + W <= n; j += W) f(j, W);
  if (j < n) f(j, n - j);
}

template <typename scalar_t>
inline Vec<scalar_t> vsigmoid(const Vec<scalar_t>& x) {
  const Vec<scalar_t> one(scalar_t(1));
  return one / (one + x.neg().exp());
}

template <typename scalar_t>
inline Vec<scalar_t> vtanh(const Vec<scalar_t>& x) {
  return x.tanh();
}

// tanh where it dominates a step (Elman; NAS: 9 per unit and step, 2.8-3.1x -> 2.6-2.8x
// nn.LSTM in row 13; in the LSTM kernel it measured slower than Sleef, 1.29-1.35x vs
// 1.20-1.22x in row 4, so LSTM keeps vtanh). float: Eigen's rational approximation (odd
// degree-13 numerator, degree-6 denominator in x^2, input clamped to +-7.905; max error
// 3.4e-7 absolute, <= 6 ulp, checked against float64 tanh on a dense grid over [-12, 12]).
// Sleef's 1-ulp tanhf cost ~3.7 ns per element here, a large part of a ~19 us Elman step at
// B=16, H=128. double: Sleef.
// NaN propagates (minimum/maximum propagate it, and the tiny-input select is false for it).
template <typename scalar_t>
inline Vec<scalar_t> fast_tanh(const Vec<scalar_t>& a) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    using V = Vec<float>;
    const V clamp(7.90531110763549805f), tiny(0.0004f);
    const V x = at::vec::maximum(at::vec::minimum(a, clamp), V(-7.90531110763549805f));
    const V x2 = x * x;
    V p = at::vec::fmadd(x2, V(-2.76076847742355e-16f), V(2.00018790482477e-13f));
    p = at::vec::fmadd(x2, p, V(-8.60467152213735e-11f));
    p = at::vec::fmadd(x2, p, V(5.12229709037114e-08f));
    p = at::vec::fmadd(x2, p, V(1.48572235717979e-05f));
    p = at::vec::fmadd(x2, p, V(6.37261928875436e-04f));
    p = at::vec::fmadd(x2, p, V(4.89352455891786e-03f));
    p = p * x;
    V q = at::vec::fmadd(x2, V(1.19825839466702e-06f), V(1.18534705686654e-04f));
    q = at::vec::fmadd(x2, q, V(2.26843463243900e-03f));
    q = at::vec::fmadd(x2, q, V(4.89352518554385e-03f));
    return V::blendv(p / q, a, a.abs() < tiny);
  } else {
    return vtanh(a);
  }
}

// Sum of a row, vectorised over full vectors, accumulated in scalar_t lanes.
template <typename scalar_t>
inline scalar_t row_sum(const scalar_t* p, int64_t n) {
  constexpr int64_t W = Vec<scalar_t>::size();
  Vec<scalar_t> acc(scalar_t(0));
  int64_t j = 0;
  for (; j + W <= n; j += W) acc = acc + Vec<scalar_t>::loadu(p + j);
  scalar_t buf[W];
  acc.store(buf);
  scalar_t s = 0;
  for (int64_t k = 0; k < W; ++k) s += buf[k];
  for (; j < n; ++j) s += p[j];
  return s;
}

// Sum of p[j] * q[j].
template <typename scalar_t>
inline scalar_t row_dot(const scalar_t* p, const scalar_t* q, int64_t n) {
  constexpr int64_t W = Vec<scalar_t>::size();
  Vec<scalar_t> acc(scalar_t(0));
  int64_t j = 0;
  for (; j + W <= n; j += W) acc = at::vec::fmadd(Vec<scalar_t>::loadu(p + j), Vec<scalar_t>::loadu(q + j), acc);
  scalar_t buf[W];
  acc.store(buf);
  scalar_t s = 0;
  for (int64_t k = 0; k < W; ++k) s += buf[k];
  for (; j < n; ++j) s += p[j] * q[j];
  return s;
}

// Layer normalisation of one row x (n), as torch.nn.LayerNorm (biased variance):
//   xhat = (x - mean) * rstd,  y = xhat * gamma + beta   (gamma/beta may be null)
// Writes xhat (may alias x) and y, returns rstd.
template <typename scalar_t>
inline scalar_t ln_row_forward(const scalar_t* x, scalar_t* xhat, scalar_t* y, const scalar_t* gamma,
                               const scalar_t* beta, int64_t n, double eps) {
  const scalar_t mean = row_sum(x, n) / scalar_t(n);
  // Two passes for the variance: cheap next to the GEMM and as stable as torch's.
  const Vec<scalar_t> vmean(mean);
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) { st(ld(x, j, c) - vmean, xhat, j, c); });
  const scalar_t var = row_dot(xhat, xhat, n) / scalar_t(n);
  const scalar_t rstd = scalar_t(1) / std::sqrt(var + scalar_t(eps));
  const Vec<scalar_t> vr(rstd);
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) {
    Vec<scalar_t> xh = ld(xhat, j, c) * vr;
    st(xh, xhat, j, c);
    if (gamma != nullptr) xh = xh * ld(gamma, j, c);
    if (beta != nullptr) xh = xh + ld(beta, j, c);
    st(xh, y, j, c);
  });
  return rstd;
}

// Backward of ln_row_forward: dy -> dx (may alias dy); accumulates dgamma += dy*xhat and
// dbeta += dy when those are non-null. `tmp` is scratch of n elements.
template <typename scalar_t>
inline void ln_row_backward(const scalar_t* dy, const scalar_t* xhat, scalar_t rstd,
                            const scalar_t* gamma, scalar_t* dx, scalar_t* dgamma,
                            scalar_t* dbeta, scalar_t* tmp, int64_t n) {
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) {
    const Vec<scalar_t> g = ld(dy, j, c);
    if (dgamma != nullptr) st(at::vec::fmadd(g, ld(xhat, j, c), ld(dgamma, j, c)), dgamma, j, c);
    if (dbeta != nullptr) st(ld(dbeta, j, c) + g, dbeta, j, c);
    st(gamma != nullptr ? g * ld(gamma, j, c) : g, tmp, j, c);
  });
  const scalar_t mean_g = row_sum(tmp, n) / scalar_t(n);
  const scalar_t mean_gx = row_dot(tmp, xhat, n) / scalar_t(n);
  const Vec<scalar_t> vmg(mean_g), vmgx(mean_gx), vr(rstd);
  vloop<scalar_t>(n, [&](int64_t j, int64_t c) {
    st((ld(tmp, j, c) - vmg - ld(xhat, j, c) * vmgx) * vr, dx, j, c);
  });
}

// ---- GEMM for the per-step recurrent products -------------------------------------
// The BLAS that torch links (MKL in the x86 wheels) exports the Fortran gemm symbols; they
// are declared weak so that a torch without them still loads this extension (at::mm then).
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
// MKL's C entry point (the lowercase name is the Fortran one, which takes an int*).
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

// Tests switch the Fortran BLAS path off to exercise the ATen fallback.
inline std::atomic<bool>& use_blas() {
  static std::atomic<bool> flag{true};
  return flag;
}

// ---- Threads under load: the gate of the short per-step parallel regions ---------------
// A step's GEMM split across threads ends at a barrier that waits for every thread. When a
// neighbour process holds a core, the thread that lost its core reaches it up to a scheduler
// slice late, and the region takes longer than one thread alone would have: Recurrence(LSTMCell)
// training (B=32, H=256, T=128) on a 2-core Zen 3 went from 164 ms to 640 ms on 2 threads
// beside a one-thread busy loop, and took 311 ms on 1 thread beside the same loop. So each short
// region times itself: its wall time against the sum of its chunks' busy times (what the calling
// thread alone would have taken). A region that took longer than that "lost". When half of the
// last kWindow regions lost, the gate closes: the short regions run on the calling thread (BLAS
// held to one thread). While closed, a probe of kProbe regions runs on the threads once per
// interval: if at most kProbeLost of them lose, the gate opens; else the interval doubles (10 ms
// up to 1 s). A lost region can cost a scheduler slice, hence short probes that need a clear
// win, and a gate that closes again within kFlap of opening keeps its last interval (doubled)
// instead of starting over at 10 ms. On an idle machine no region loses (0-2 of 1536 per LSTM
// training step measured). Long regions (one per call: IndRNN, the min scan, independent
// groups) do not use the gate: a late thread costs them one slice, not one per step.
class ThreadGate {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int kWindow = 16, kProbe = 8, kProbeLost = 1;
  static constexpr int64_t kFlap = 2000000000;  // ns

  // Whether the next short region may use the threads (always while open; while closed, only
  // the kProbe regions of a due probe).
  bool open() {
    if (!enabled_.load(std::memory_order_relaxed) || !closed_.load(std::memory_order_relaxed)) {
      return true;
    }
    if (probe_left_.load(std::memory_order_relaxed) > 0) {
      return probe_left_.fetch_sub(1, std::memory_order_relaxed) > 0;
    }
    int64_t due = probe_due_ns_.load(std::memory_order_relaxed);
    if (now_ns() < due) return false;
    // One caller starts the probe; its regions report to probe_done_/probe_lost_.
    if (!probe_due_ns_.compare_exchange_strong(due, std::numeric_limits<int64_t>::max(),
                                               std::memory_order_relaxed)) {
      return false;
    }
    probe_done_.store(0);
    probe_lost_.store(0);
    probe_left_.store(kProbe - 1);
    return true;
  }
  // While closed, BLAS calls outside the split regions are held to one thread too.
  bool closed() const {
    return enabled_.load(std::memory_order_relaxed) && closed_.load(std::memory_order_relaxed);
  }

  // A region that ran on the threads: its wall time and the sum of its chunks' busy times.
  void report(int64_t wall_ns, int64_t busy_ns) {
    const bool lost = wall_ns > busy_ns;
    regions_.fetch_add(1, std::memory_order_relaxed);
    if (lost) lost_.fetch_add(1, std::memory_order_relaxed);
    if (!enabled_.load(std::memory_order_relaxed)) return;
    if (closed_.load(std::memory_order_relaxed)) {  // a probe's region
      const int lost_now = probe_lost_.fetch_add(lost ? 1 : 0) + (lost ? 1 : 0);
      if (probe_done_.fetch_add(1) + 1 < kProbe) return;
      if (lost_now > kProbeLost) {
        const int64_t next = std::min<int64_t>(2 * interval_ns_.load(), max_interval_ns_.load());
        interval_ns_.store(next);
        probe_due_ns_.store(now_ns() + next);
      } else {
        open_again(/*keep_interval=*/true);
      }
      return;
    }
    const uint32_t window = (1u << kWindow) - 1u;
    uint32_t history = history_.load(std::memory_order_relaxed);
    uint32_t next = ((history << 1) | (lost ? 1u : 0u)) & window;
    while (!history_.compare_exchange_weak(history, next, std::memory_order_relaxed)) {
      next = ((history << 1) | (lost ? 1u : 0u)) & window;
    }
    if (2 * __builtin_popcount(next) >= kWindow) close();
  }

  // Tests and measurements (bindings: thread_gate / set_thread_gate). Without `reset` the
  // gate keeps its state (switching it off and on between interleaved timings).
  void configure(bool enabled, int64_t min_interval_ns, int64_t max_interval_ns, bool reset) {
    enabled_.store(enabled);
    min_interval_ns_.store(min_interval_ns);
    max_interval_ns_.store(std::max(min_interval_ns, max_interval_ns));
    if (reset) open_again();
  }
  bool enabled() const { return enabled_.load(); }
  int64_t regions() const { return regions_.load(); }
  int64_t lost() const { return lost_.load(); }
  int64_t closings() const { return closings_.load(); }
  int64_t interval_ns() const { return interval_ns_.load(); }
  int64_t min_interval_ns() const { return min_interval_ns_.load(); }
  int64_t max_interval_ns() const { return max_interval_ns_.load(); }

  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
  }

 private:
  void close() {
    if (closed_.exchange(true)) return;
    const int64_t now = now_ns();
    const int64_t interval =
        now - opened_ns_.load() < kFlap
            ? std::min<int64_t>(2 * interval_ns_.load(), max_interval_ns_.load())
            : min_interval_ns_.load();
    interval_ns_.store(interval);
    probe_left_.store(0);
    probe_due_ns_.store(now + interval);
    closings_.fetch_add(1, std::memory_order_relaxed);
  }
  // After a probe's win the interval is kept for close() to judge flapping.
  void open_again(bool keep_interval = false) {
    history_.store(0);
    probe_left_.store(0);
    if (!keep_interval) interval_ns_.store(min_interval_ns_.load());
    opened_ns_.store(keep_interval ? now_ns() : std::numeric_limits<int64_t>::min() / 2);
    closed_.store(false);
  }

  std::atomic<bool> enabled_{true}, closed_{false};
  std::atomic<uint32_t> history_{0};  // the last kWindow open-gate regions, 1 = lost
  std::atomic<int> probe_left_{0}, probe_done_{0}, probe_lost_{0};
  std::atomic<int64_t> probe_due_ns_{0}, interval_ns_{10000000};
  std::atomic<int64_t> opened_ns_{std::numeric_limits<int64_t>::min() / 2};
  std::atomic<int64_t> min_interval_ns_{10000000}, max_interval_ns_{1000000000};
  std::atomic<int64_t> regions_{0}, lost_{0}, closings_{0};
};

inline ThreadGate& thread_gate() {
  static ThreadGate gate;
  return gate;
}

// Holds MKL to one thread on the calling thread for the scope (no-op without MKL's symbol).
class OneBlasThread {
 public:
  explicit OneBlasThread(bool hold) {
    if (hold && at::get_num_threads() > 1 && MKL_Set_Num_Threads_Local != nullptr) {
      previous_ = MKL_Set_Num_Threads_Local(1);
    }
  }
  ~OneBlasThread() {
    if (previous_ >= 0) MKL_Set_Num_Threads_Local(previous_);
  }
  OneBlasThread(const OneBlasThread&) = delete;
  OneBlasThread& operator=(const OneBlasThread&) = delete;

 private:
  int previous_ = -1;
};

// fn(i0, i1) over [0, n) in chunks of at least `grain`: a short per-step region. On the threads
// while the gate is open (timed, reported to the gate), else on the calling thread with BLAS
// held to one thread. The caller has already decided that threads would pay on an idle machine.
template <typename F>
inline void short_parallel_for(int64_t n, int64_t grain, const F& fn) {
  if (n <= grain || at::get_num_threads() == 1 || at::in_parallel_region()) {
    fn(0, n);  // one chunk: parallel_for would run it inline, nothing to time
    return;
  }
  ThreadGate& gate = thread_gate();
  if (!gate.open()) {
    OneBlasThread one(true);
    fn(0, n);
    return;
  }
  std::atomic<int64_t> busy{0};
  const int64_t start = ThreadGate::now_ns();
  at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
    const int64_t t0 = ThreadGate::now_ns();
    fn(i0, i1);
    busy.fetch_add(ThreadGate::now_ns() - t0, std::memory_order_relaxed);
  });
  gate.report(ThreadGate::now_ns() - start, busy.load(std::memory_order_relaxed));
}

// Whether the CPU is Intel's (CPUID leaf 0 vendor "GenuineIntel").
inline bool cpu_is_intel() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  char vendor[13];
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  vendor[12] = '\0';
  return std::strcmp(vendor, "GenuineIntel") == 0;
#else
  return false;
#endif
}

// Packed recurrent weights (RecurrentGemm): on by default on Intel CPUs, where MKL's packed
// GEMM pays, off elsewhere (set_packing changes it; see the packed GEMM's comment below).
inline std::atomic<bool>& use_packing() {
  static std::atomic<bool> flag{cpu_is_intel()};
  return flag;
}

// Row stride ("leading dimension") of a 2-D view whose rows are contiguous, computed from the
// shape wherever the stride carries no information: torch calls a tensor with one row (or one
// column) contiguous whatever that dimension's stride is, so `w.t().contiguous()` of a
// (G*H, 1) weight keeps stride(0) == 1 for its single row of G*H elements. Handed to BLAS as
// a leading dimension that is smaller than the row, MKL rejects the call ("Parameter 8 was
// incorrect on entry to SGEMM"), prints to stderr and leaves C untouched.
inline int64_t row_ld(const Tensor& t) {
  TORCH_CHECK(t.dim() == 2, "rnnkit gemm: expected a 2-D operand, got ", t.dim(), " dimensions");
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1,
              "rnnkit gemm: operand rows must be contiguous, got strides ", t.strides());
  const int64_t width = std::max<int64_t>(1, t.size(1));
  if (t.size(0) <= 1) return width;  // one row: its stride is never used to step
  TORCH_CHECK(t.stride(0) >= width, "rnnkit gemm: operand of shape ", t.sizes(),
              " has row stride ", t.stride(0), " < its width (overlapping rows)");
  return t.stride(0);
}

// The BLAS rules for row-major C (M, N) = A (M, K) Bm (K, N) + beta C as passed to the
// column-major gemm (C^T = Bm^T A^T): lda >= max(1, K), ldb >= max(1, N), ldc >= max(1, N),
// and every size fits the Fortran int. Checked before any BLAS (or ATen) call, so a bad
// stride is an error that says so instead of a skipped product and a line on stderr.
inline void check_gemm_args(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                            int64_t ldc) {
  const int64_t need_a = std::max<int64_t>(1, K), need_bc = std::max<int64_t>(1, N);
  TORCH_CHECK(M >= 0 && N >= 0 && K >= 0 && lda >= need_a && ldb >= need_bc && ldc >= need_bc,
              "rnnkit gemm: leading dimensions break the BLAS rules for C(M, N) = A(M, K) "
              "B(K, N): need lda >= max(1, K), ldb >= max(1, N), ldc >= max(1, N); got M=", M,
              ", N=", N, ", K=", K, ", lda=", lda, ", ldb=", ldb, ", ldc=", ldc);
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  TORCH_CHECK(M <= kMaxInt && N <= kMaxInt && K <= kMaxInt && lda <= kMaxInt &&
                  ldb <= kMaxInt && ldc <= kMaxInt,
              "rnnkit gemm: sizes exceed the BLAS integer range (M=", M, ", N=", N, ", K=", K,
              ", lda=", lda, ", ldb=", ldb, ", ldc=", ldc, ")");
}

template <typename scalar_t>
inline bool blas_gemm(int M, int N, int K, const scalar_t* A, int lda, const scalar_t* Bm,
                      int ldb, scalar_t beta, scalar_t* C, int ldc) {
  if (!use_blas().load(std::memory_order_relaxed)) return false;
  // Row-major C = A Bm is column-major C^T = Bm^T A^T: swap the operands.
  const char n = 'N';
  const scalar_t one = 1;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (sgemm_ == nullptr) return false;
    sgemm_(&n, &n, &N, &M, &K, &one, Bm, &ldb, A, &lda, &beta, C, &ldc);
  } else {
    if (dgemm_ == nullptr) return false;
    dgemm_(&n, &n, &N, &M, &K, &one, Bm, &ldb, A, &lda, &beta, C, &ldc);
  }
  return true;
}

// Row-major C (M, N) = A (M, K) Bm (K, N) + beta C, with leading dimensions (row strides).
//
// Measured on AMD EPYC Zen 3 with MKL and 2 threads, the recurrent products of one step
// (M = batch, 16..64 rows) ran 1.3-1.6x faster when each thread computes its own slice of
// columns with a single-threaded GEMM than with MKL's own threading (which splits small-M
// problems poorly), and tiny products (16x128x128) ran fastest on one thread.
template <typename scalar_t>
inline void gemm_rows(int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda,
                      const scalar_t* Bm, int64_t ldb, scalar_t beta, scalar_t* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  check_gemm_args(M, N, K, lda, ldb, ldc);
  const int64_t threads = at::get_num_threads();
  const double flops = 2.0 * M * N * K;
  if (threads > 1 && flops >= 2e6 && N >= 64 * threads && !at::in_parallel_region()) {
    // Column slices, multiples of 16 elements (whole cache lines / vectors).
    const int64_t per = ((N + threads - 1) / threads + 15) / 16 * 16;
    const int64_t chunks = (N + per - 1) / per;
    std::atomic<bool> ok{true};
    short_parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t q = c0; q < c1; ++q) {
        const int64_t n0 = q * per, n1 = std::min(N, n0 + per);
        if (!blas_gemm<scalar_t>(M, n1 - n0, K, A, lda, Bm + n0, ldb, beta, C + n0, ldc)) {
          ok = false;
        }
      }
    });
    if (ok) return;
  } else {
    OneBlasThread one(flops < 2e6 || thread_gate().closed());
    const bool ok = blas_gemm<scalar_t>(M, N, K, A, lda, Bm, ldb, beta, C, ldc);
    if (ok) return;
  }
  // No Fortran BLAS symbols: ATen's GEMM on strided views.
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  Tensor a = at::from_blob(const_cast<scalar_t*>(A), {M, K}, {lda, 1}, opts);
  Tensor b = at::from_blob(const_cast<scalar_t*>(Bm), {K, N}, {ldb, 1}, opts);
  Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == scalar_t(0)) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b, beta, 1);
  }
}

// ---- Packed recurrent weights (on by default on Intel) ----------------------------------
// MKL's packed GEMM (also exported by libtorch_cpu; weak, as above) packs the weights once
// per sequence instead of at every step. A profile of the LSTM step GEMM (64 x 1024 @
// 1024 x 4096, Zen 3) showed ~10-30% of its time in MKL's copy routines, but end to end the
// packed path was no faster there (LSTM forward T64: 338 vs 340 ms on 2 threads, 761 vs
// 665 ms on 1). On an Intel Xeon (family 6 model 207, 2 threads, interleaved, median of 8)
// it was 7-10% faster: GRU training B32 H512 T128 232 -> 215 ms, LayerNorm-LSTM training
// B16 H256 T256 121 -> 110 ms, peephole LSTM inference B64 H1024 T64 361 -> 333 ms, UGRNN
// training 44.9 -> 41.5 ms (nn.LSTM, untouched, moved 2.6%). Hence on for Intel only.
extern "C" {
size_t cblas_sgemm_pack_get_size(int, int, int, int) __attribute__((weak));
void cblas_sgemm_pack(int, int, int, int, int, int, float, const float*, int, float*)
    __attribute__((weak));
void cblas_sgemm_compute(int, int, int, int, int, int, const float*, int, const float*, int,
                         float, float*, int) __attribute__((weak));
size_t cblas_dgemm_pack_get_size(int, int, int, int) __attribute__((weak));
void cblas_dgemm_pack(int, int, int, int, int, int, double, const double*, int, double*)
    __attribute__((weak));
void cblas_dgemm_compute(int, int, int, int, int, int, const double*, int, const double*, int,
                         double, double*, int) __attribute__((weak));
}

namespace cblas {
constexpr int kRowMajor = 101, kNoTrans = 111, kPacked = 151, kBMatrix = 162;
}

// C (M, N) = A (M, K) Bm (K, N) + beta C for a fixed Bm used at every step of a sequence:
// Bm is split into per-thread column slices (see gemm_rows) and each slice is packed once.
template <typename scalar_t>
class RecurrentGemm {
 public:
  RecurrentGemm(int64_t M, const Tensor& Bm) : M_(M), K_(Bm.size(0)), N_(Bm.size(1)) {
    B_ = Bm.data_ptr<scalar_t>();
    ldb_ = row_ld(Bm);  // from the shape for a one-row weight (hidden size 1)
    check_gemm_args(M_, N_, K_, std::max<int64_t>(1, K_), ldb_, std::max<int64_t>(1, N_));
    const int64_t threads = at::get_num_threads();
    const double flops = 2.0 * M_ * N_ * K_;
    per_ = N_;
    if (threads > 1 && flops >= 2e6 && N_ >= 64 * threads) {
      per_ = ((N_ + threads - 1) / threads + 15) / 16 * 16;
    }
    chunks_ = per_ > 0 ? (N_ + per_ - 1) / per_ : 0;
    if (M_ == 0 || N_ == 0 || K_ == 0 || !use_blas().load() || !use_packing().load()) return;
    const bool have = std::is_same_v<scalar_t, float>
                          ? (cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr &&
                             cblas_sgemm_pack_get_size != nullptr)
                          : (cblas_dgemm_pack != nullptr && cblas_dgemm_compute != nullptr &&
                             cblas_dgemm_pack_get_size != nullptr);
    if (!have) return;
    auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
    for (int64_t q = 0; q < chunks_; ++q) {
      const int n0 = q * per_, n = std::min(N_, n0 + per_) - n0;
      size_t bytes;
      if constexpr (std::is_same_v<scalar_t, float>) {
        bytes = cblas_sgemm_pack_get_size(cblas::kBMatrix, M_, n, K_);
      } else {
        bytes = cblas_dgemm_pack_get_size(cblas::kBMatrix, M_, n, K_);
      }
      Tensor buf = at::empty({static_cast<int64_t>(bytes / sizeof(scalar_t)) + 64}, opts);
      if constexpr (std::is_same_v<scalar_t, float>) {
        cblas_sgemm_pack(cblas::kRowMajor, cblas::kBMatrix, cblas::kNoTrans, M_, n, K_, 1.0f,
                         B_ + n0, ldb_, buf.data_ptr<float>());
      } else {
        cblas_dgemm_pack(cblas::kRowMajor, cblas::kBMatrix, cblas::kNoTrans, M_, n, K_, 1.0,
                         B_ + n0, ldb_, buf.data_ptr<double>());
      }
      packed_.push_back(buf);
    }
  }

  // The first `rows` (<= M) rows of A and C: the sequences still running.
  void operator()(const scalar_t* A, int64_t lda, scalar_t beta, scalar_t* C, int64_t ldc,
                  int64_t rows) const {
    if (rows == 0 || N_ == 0) return;
    check_gemm_args(rows, N_, K_, lda, ldb_, ldc);
    if (packed_.empty() || rows != M_) {  // packed for M rows; fewer rows: plain GEMM
      gemm_rows<scalar_t>(rows, N_, K_, A, lda, B_, ldb_, beta, C, ldc);
      return;
    }
    auto slice = [&](int64_t q) {
      const int n0 = q * per_, n = std::min(N_, n0 + per_) - n0;
      const scalar_t* pb = packed_[q].data_ptr<scalar_t>();
      if constexpr (std::is_same_v<scalar_t, float>) {
        cblas_sgemm_compute(cblas::kRowMajor, cblas::kNoTrans, cblas::kPacked, M_, n, K_, A,
                            lda, pb, n, beta, C + n0, ldc);
      } else {
        cblas_dgemm_compute(cblas::kRowMajor, cblas::kNoTrans, cblas::kPacked, M_, n, K_, A,
                            lda, pb, n, beta, C + n0, ldc);
      }
    };
    if (chunks_ > 1 && !at::in_parallel_region()) {
      short_parallel_for(chunks_, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t q = c0; q < c1; ++q) slice(q);
      });
      return;
    }
    OneBlasThread one(2.0 * M_ * N_ * K_ < 2e6 || thread_gate().closed());
    for (int64_t q = 0; q < chunks_; ++q) slice(q);
  }

  // Tensor form: A and C are 2-D views with contiguous rows.
  void operator()(const Tensor& A, scalar_t beta, const Tensor& C, int64_t rows) const {
    (*this)(A.data_ptr<scalar_t>(), row_ld(A), beta, C.data_ptr<scalar_t>(), row_ld(C), rows);
  }

 private:
  int64_t M_, K_, N_;
  const scalar_t* B_ = nullptr;
  int64_t ldb_ = 0, per_ = 0, chunks_ = 0;
  std::vector<Tensor> packed_;
};

// gemm_rows on 2-D tensor views whose rows are contiguous: C = A Bm + beta C.
template <typename scalar_t>
inline void gemm_t(const Tensor& C, const Tensor& A, const Tensor& Bm, scalar_t beta) {
  gemm_rows<scalar_t>(A.size(0), Bm.size(1), A.size(1), A.data_ptr<scalar_t>(), row_ld(A),
                      Bm.data_ptr<scalar_t>(), row_ld(Bm), beta, C.data_ptr<scalar_t>(),
                      row_ld(C));
}

// Per-step row schedule. Internally the rows are ordered by decreasing length (a stable
// sort, so equal lengths keep their order and a full batch is not permuted): at step s the
// active rows are then a prefix of n_active(s) rows, and the recurrent GEMMs skip finished
// sequences, as cuDNN's packed sequences do. Every state/saved buffer uses this sorted
// order ("position" p); time-major tensors (xp, outputs and their gradients) are indexed by
// the caller's row, row(p). The caller never sorts anything.
struct Schedule {
  int64_t T, B, S;
  bool reverse;
  std::vector<int64_t> len;     // (B) by position, decreasing
  std::vector<int64_t> order;   // (B) position -> caller's row
  std::vector<int64_t> active_rows;  // (S) rows active at each step
  bool permuted = false;

  Schedule(const Tensor& lengths, int64_t T_, int64_t B_, bool reverse_)
      : T(T_), B(B_), S(0), reverse(reverse_), len(B_, T_), order(B_) {
    for (int64_t b = 0; b < B; ++b) order[b] = b;
    if (lengths.defined() && lengths.numel() > 0) {
      auto l = lengths.contiguous();
      const int64_t* p = l.data_ptr<int64_t>();
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return p[a] > p[b]; });
      for (int64_t q = 0; q < B; ++q) {
        len[q] = p[order[q]];
        permuted = permuted || order[q] != q;
      }
    }
    S = B > 0 ? len[0] : 0;
    active_rows.assign(S, 0);
    for (int64_t q = 0; q < B; ++q)
      for (int64_t s = 0; s < len[q]; ++s) active_rows[s] += 1;
  }
  inline bool active(int64_t s, int64_t p) const { return s < len[p]; }
  inline int64_t time(int64_t s, int64_t p) const { return reverse ? len[p] - 1 - s : s; }
  inline int64_t row(int64_t p) const { return order[p]; }
  // True when every row reads time s at step s: saved buffers can alias time-major ones.
  bool identity() const {
    if (reverse) return false;
    for (int64_t p = 0; p < B; ++p)
      if (len[p] != T) return false;
    return true;
  }
  // (B) caller-order tensor -> position order, and back.
  // Always contiguous: the kernels step through these buffers with computed offsets, and a
  // gradient can arrive transposed or expanded (clone() would keep such strides).
  Tensor to_positions(const Tensor& t) const {
    if (!permuted) return t.clone(at::MemoryFormat::Contiguous);
    return t.index_select(0, perm_tensor(t.device())).contiguous();
  }
  Tensor to_rows(const Tensor& t) const {
    if (!permuted) return t.clone(at::MemoryFormat::Contiguous);
    return at::empty_like(t).index_copy_(0, perm_tensor(t.device()), t);
  }

 private:
  Tensor perm_tensor(const at::Device& device) const {
    return at::tensor(order, at::TensorOptions().dtype(at::kLong)).to(device);
  }
};

// A step's pointwise block is split across threads only when each chunk gets at least this
// many values. Below it the pass runs on the calling thread: an OpenMP barrier per step is
// cheap on an idle machine but waits a whole scheduler slice when a neighbour process holds
// the other core (LayerNorm-LSTM training went from 1.2x to 3.1x nn.LSTM beside one).
inline std::atomic<int64_t>& pointwise_parallel_elems() {
  static std::atomic<int64_t> value{1 << 16};
  return value;
}

// Rows per parallel chunk for a pass of row_elems values per row (see above).
inline int64_t row_grain(int64_t row_elems) {
  return std::max<int64_t>(1, pointwise_parallel_elems().load(std::memory_order_relaxed) /
                                  std::max<int64_t>(1, row_elems));
}

// Entry check of a tensor a kernel reads: defined, strided, on the CPU, `dtype`, exactly
// `shape`, and (when the kernel steps through it with computed offsets) contiguous. The
// Python entry (rnnkit/engine/compiled/__init__.py) names the cell and parameter first; this
// is the last line of defence before raw pointers are taken.
inline void check_arg(const char* kernel, const char* name, const Tensor& t,
                      at::IntArrayRef shape, at::ScalarType dtype, bool contiguous = true) {
  TORCH_CHECK(t.defined(), kernel, ": ", name, " is missing");
  TORCH_CHECK(t.layout() == at::kStrided, kernel, ": ", name, " must be a dense (strided) tensor, got ",
              t.layout());
  TORCH_CHECK(t.device().is_cpu(), kernel, ": ", name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, kernel, ": ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.sizes() == shape, kernel, ": ", name, " has shape ", t.sizes(), ", expected ",
              shape);
  TORCH_CHECK(!contiguous || t.is_contiguous(), kernel, ": ", name, " must be contiguous");
}

// Lengths: empty (all T) or (B) int64 on the CPU.
inline void check_lengths_arg(const char* kernel, const Tensor& lengths, int64_t B) {
  if (!lengths.defined() || lengths.numel() == 0) return;
  check_arg(kernel, "lengths", lengths, {B}, at::kLong, false);
}

// Optional tensors arrive from Python as empty (numel 0) tensors.
inline bool present(const Tensor& t) { return t.defined() && t.numel() > 0; }

template <typename scalar_t>
inline const scalar_t* ptr_or_null(const Tensor& t) {
  return present(t) ? t.data_ptr<scalar_t>() : nullptr;
}

}  // namespace rnnkit
