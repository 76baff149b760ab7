// HostBufferPool; see host_buffer_pool.h.
#include "cache/host_buffer_pool.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cache/internal/tsan_mutex.h"

namespace kvblock {
namespace {

constexpr std::align_val_t kDefaultAlignment{4096};

uint64_t RoundUp(uint64_t n, uint64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

}  // namespace

HostBufferAllocator DefaultHostBufferAllocator() {
  return {
      .allocate = [](uint64_t bytes) -> absl::StatusOr<void*> {
        void* p = ::operator new(bytes, kDefaultAlignment, std::nothrow);
        if (p == nullptr) {
          return absl::ResourceExhaustedError(
              absl::StrCat("operator new of ", bytes, " bytes failed"));
        }
        return p;
      },
      .deallocate =
          [](void* p) {
            ::operator delete(p, kDefaultAlignment);
            return absl::OkStatus();
          },
  };
}

absl::Status HostBufferPoolOptions::Validate() const {
  if (capacity_bytes == 0) return absl::InvalidArgumentError("capacity_bytes must be > 0");
  if (slab_rounding_bytes < 4096 || (slab_rounding_bytes & (slab_rounding_bytes - 1)) != 0) {
    return absl::InvalidArgumentError("slab_rounding_bytes must be a power of two >= 4096");
  }
  if (!(max_waste_ratio >= 1.0) || !std::isfinite(max_waste_ratio)) {
    return absl::InvalidArgumentError("max_waste_ratio must be finite and >= 1");
  }
  return absl::OkStatus();
}

// The slabs and counters, shared by the pool and every buffer it handed out (a buffer's owner
// gives its slab back here, or frees it once the pool is gone).
struct HostBufferPool::State {
  State(const HostBufferPoolOptions& o, HostBufferAllocator a)
      : options(o), allocator(std::move(a)) {}

  // Frees slabs outside the lock, counting failures.
  void Free(const std::vector<std::pair<void*, uint64_t>>& slabs) {
    uint64_t errors = 0;
    for (const auto& [p, capacity] : slabs) {
      if (!allocator.deallocate(p).ok()) ++errors;
    }
    if (errors == 0) return;
    internal::MutexLock lock(&mu);
    stats.free_errors += errors;
  }

  // A buffer's last owner let go: the slab goes idle, or is freed if the pool is gone.
  void Release(void* p, uint64_t capacity) {
    {
      internal::MutexLock lock(&mu);
      stats.bytes_taken -= capacity;
      if (!closed) {
        idle.emplace(capacity, p);
        return;
      }
      --stats.slabs;
      stats.bytes_held -= capacity;
    }
    Free({{p, capacity}});
  }

  const HostBufferPoolOptions options;
  const HostBufferAllocator allocator;
  mutable absl::Mutex mu;
  std::multimap<uint64_t, void*> idle ABSL_GUARDED_BY(mu);  // capacity -> slab
  bool closed ABSL_GUARDED_BY(mu) = false;                  // the pool object is gone
  HostBufferPoolStats stats ABSL_GUARDED_BY(mu);            // idle_slabs is idle.size()
};

absl::StatusOr<std::unique_ptr<HostBufferPool>> HostBufferPool::Create(
    const HostBufferPoolOptions& options, HostBufferAllocator allocator) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (!allocator.allocate || !allocator.deallocate) {
    return absl::InvalidArgumentError(
        "host buffer pool: the allocator needs allocate and deallocate");
  }
  return std::unique_ptr<HostBufferPool>(
      new HostBufferPool(options, std::make_shared<State>(options, std::move(allocator))));
}

HostBufferPool::HostBufferPool(const HostBufferPoolOptions& options, std::shared_ptr<State> state)
    : options_(options), state_(std::move(state)) {}

HostBufferPool::~HostBufferPool() {
  std::vector<std::pair<void*, uint64_t>> to_free;
  {
    internal::MutexLock lock(&state_->mu);
    state_->closed = true;
    for (const auto& [capacity, p] : state_->idle) to_free.emplace_back(p, capacity);
    state_->idle.clear();
    state_->stats.slabs -= to_free.size();
    for (const auto& [p, capacity] : to_free) state_->stats.bytes_held -= capacity;
  }
  state_->Free(to_free);
}

absl::StatusOr<HostBuffer> HostBufferPool::Take(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("host buffer pool: a buffer of 0 bytes");
  State& s = *state_;
  if (bytes > options_.capacity_bytes) {
    internal::MutexLock lock(&s.mu);
    ++s.stats.exhausted;
    return absl::ResourceExhaustedError(absl::StrCat(
        "host buffer pool: ", bytes, " bytes asked, capacity ", options_.capacity_bytes));
  }
  std::vector<std::pair<void*, uint64_t>> evicted;
  const uint64_t capacity =
      std::min(RoundUp(bytes, options_.slab_rounding_bytes), options_.capacity_bytes);
  void* reused = nullptr;
  uint64_t reused_capacity = 0;
  uint64_t taken = 0;  // when there is no room: the bytes taken, for the message
  bool room = true;
  {
    internal::MutexLock lock(&s.mu);
    // Best fit: the smallest idle slab that holds `bytes`, if it is not much larger than the
    // slab a new one would be.
    if (auto it = s.idle.lower_bound(bytes);
        it != s.idle.end() && static_cast<double>(it->first) <=
                                  options_.max_waste_ratio * static_cast<double>(capacity)) {
      reused_capacity = it->first;
      reused = it->second;
      s.idle.erase(it);
      ++s.stats.takes;
      ++s.stats.reuses;
      s.stats.bytes_taken += reused_capacity;
    } else {
      // A new slab: make room by freeing idle slabs, largest first.
      while (s.stats.bytes_held + capacity > options_.capacity_bytes && !s.idle.empty()) {
        auto largest = std::prev(s.idle.end());
        evicted.emplace_back(largest->second, largest->first);
        s.stats.bytes_held -= largest->first;
        --s.stats.slabs;
        ++s.stats.evictions;
        s.idle.erase(largest);
      }
      room = s.stats.bytes_held + capacity <= options_.capacity_bytes;
      if (room) {
        // Reserved now, allocated outside the lock.
        s.stats.bytes_held += capacity;
        ++s.stats.slabs;
      } else {
        ++s.stats.exhausted;
        taken = s.stats.bytes_taken;
      }
    }
  }
  if (reused != nullptr) return Wrap(reused, reused_capacity, bytes);
  s.Free(evicted);
  if (!room) {
    return absl::ResourceExhaustedError(
        absl::StrCat("host buffer pool: ", taken, " of ", options_.capacity_bytes,
                     " bytes are taken; no room for a slab of ", capacity));
  }
  absl::StatusOr<void*> p = s.allocator.allocate(capacity);
  {
    internal::MutexLock lock(&s.mu);
    if (p.ok() && *p != nullptr) {
      ++s.stats.allocations;
      ++s.stats.takes;
      s.stats.bytes_taken += capacity;
    } else {
      s.stats.bytes_held -= capacity;
      --s.stats.slabs;
      ++s.stats.exhausted;
    }
  }
  if (!p.ok() || *p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "host buffer pool: allocating ", capacity,
        " bytes failed: ", p.ok() ? std::string("null") : std::string(p.status().message())));
  }
  return Wrap(*p, capacity, bytes);
}

HostBuffer HostBufferPool::Wrap(void* slab, uint64_t capacity, uint64_t bytes) const {
  HostBuffer b;
  b.bytes = absl::MakeSpan(static_cast<uint8_t*>(slab), bytes);
  b.owner = std::shared_ptr<const void>(slab, [state = state_, capacity](const void* p) {
    state->Release(const_cast<void*>(p), capacity);
  });
  return b;
}

HostBufferPoolStats HostBufferPool::Stats() const {
  internal::MutexLock lock(&state_->mu);
  HostBufferPoolStats out = state_->stats;
  out.idle_slabs = state_->idle.size();
  return out;
}

}  // namespace kvblock
