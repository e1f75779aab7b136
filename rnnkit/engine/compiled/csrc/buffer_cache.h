// Large buffers kept across calls, so that a call reuses pages the last one touched.
#pragma once

#include "common.h"

#include <mutex>
#include <vector>

namespace rnnkit {

// ---- Buffers kept across calls (StepLayout::reuse_buffers) --------------------------------
// A training call's large buffers (saved values, d rec, d xp: 34-38 MB each for NAS at B=32,
// H=256, T=128) lie above glibc's 32 MiB mmap threshold, so a fresh at::empty maps new pages
// at every call and the first write to each 4 KiB page faults: a NAS training forward there
// took 9200 page faults (about 40% more CPU time than the same forward without saving, on
// the 2-core EPYC box); from this cache, 85. A family that sets reuse_buffers (NAS, LSTM,
// GRU) takes them from here, and so does the bf16 input projection's result (bf16.h). A
// storage is handed out again only when the cache holds its last reference (every tensor
// and view of it released: the autograd node that saved it, the gradient handed back), so
// nothing still in use is ever overwritten; buffers come back
// uninitialised, as from at::empty. Idle storages above the limit (256 MiB; 0: no cache)
// are dropped, largest first, at every request; clear() drops all idle ones (bindings:
// set_buffer_cache_limit, set_buffer_cache_min_bytes, clear_buffer_cache,
// buffer_cache_bytes).
class BufferCache {
 public:
  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache();  // never destroyed: no exit-order issue
    return *cache;
  }

  Tensor empty(at::IntArrayRef shape, const at::TensorOptions& opts) {
    const int64_t bytes = c10::multiply_integers(shape) *
                          static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(
                              opts.dtype())));
    if (bytes == 0 || !opts.device().is_cpu()) return at::empty(shape, opts);
    std::lock_guard<std::mutex> lock(mu_);
    // off (limit 0), or small: glibc's heap reuses those without new pages
    if (limit_ == 0 || bytes < min_bytes_) return at::empty(shape, opts);
    int64_t best = -1;  // the smallest idle storage of [bytes, 2 bytes]
    for (int64_t i = 0; i < static_cast<int64_t>(held_.size()); ++i) {
      const int64_t n = static_cast<int64_t>(held_[i].nbytes());
      if (held_[i].use_count() == 1 && n >= bytes && n <= 2 * bytes &&
          (best < 0 || n < static_cast<int64_t>(held_[best].nbytes()))) {
        best = i;
      }
    }
    c10::Storage storage;
    if (best >= 0) {
      storage = held_[best];
    } else {
      storage = at::empty({bytes}, opts.dtype(at::kByte)).storage();
      held_.push_back(storage);
    }
    Tensor out = at::empty({0}, opts).set_(storage, 0, shape);
    storage = c10::Storage();  // out and the cache hold it now
    trim(limit_);
    return out;
  }
  int64_t set_limit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t previous = limit_;
    limit_ = bytes;
    trim(limit_);
    return previous;
  }
  // Requests below this many bytes bypass the cache (1 MiB; tests lower it).
  int64_t set_min_bytes(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t previous = min_bytes_;
    min_bytes_ = bytes;
    return previous;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    trim(0);
  }
  // (bytes held in all, bytes idle)
  std::pair<int64_t, int64_t> bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t all = 0, idle = 0;
    for (const c10::Storage& s : held_) {
      all += static_cast<int64_t>(s.nbytes());
      if (s.use_count() == 1) idle += static_cast<int64_t>(s.nbytes());
    }
    return {all, idle};
  }

 private:
  // Drops idle storages, largest first, until at most `limit` idle bytes remain (mu_ held).
  void trim(int64_t limit) {
    while (true) {
      int64_t idle = 0, largest = -1;
      for (int64_t i = 0; i < static_cast<int64_t>(held_.size()); ++i) {
        if (held_[i].use_count() != 1) continue;
        idle += static_cast<int64_t>(held_[i].nbytes());
        if (largest < 0 || held_[i].nbytes() > held_[largest].nbytes()) largest = i;
      }
      if (largest < 0 || idle <= limit) return;
      held_.erase(held_.begin() + largest);
    }
  }

  std::mutex mu_;
  std::vector<c10::Storage> held_;
  int64_t limit_ = int64_t(256) << 20;
  int64_t min_bytes_ = int64_t(1) << 20;
};

}  // namespace rnnkit
