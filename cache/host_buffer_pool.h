// Host buffers that block reads land in, reused across reads: HostBufferSource is what a reader
// (the cluster client's Get over UCX, services/cache_client.h) takes a buffer from, and
// HostBufferPool the implementation that keeps freed buffers (slabs) for the next read instead
// of giving them back to the allocator. The memory comes from an allocator given at creation:
// aligned operator new by default, page-locked CUDA memory on a GPU worker
// (worker/engine/cuda/pinned_memory.h), where allocating and freeing are slow (pinning a
// 64 MiB block's pages costs milliseconds) and a fresh pageable buffer would also be copied to
// the GPU at a fraction of the link rate.
//
// Reuse: a Take of n bytes gets the smallest idle slab of capacity >= n if that capacity is at
// most max_waste_ratio times the size of a new slab for n (best fit within bounded waste);
// otherwise a new slab: n rounded up to slab_rounding_bytes. The pool holds at most capacity_bytes
// of slabs (taken and idle); a new slab that would not fit first frees idle slabs, largest first,
// and then fails with RESOURCE_EXHAUSTED. Idle slabs are kept until the pool needs their room or is
// destroyed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvblock {

// A writable host buffer of exactly the size asked for. The memory stays valid, and out of the
// pool it came from, while `owner` (or a copy of it) lives; it may outlive the pool object.
struct HostBuffer {
  absl::Span<uint8_t> bytes;
  std::shared_ptr<const void> owner;
};

class HostBufferSource {
 public:
  virtual ~HostBufferSource() = default;
  // A buffer of `bytes` bytes (contents unspecified). INVALID_ARGUMENT for 0 bytes;
  // RESOURCE_EXHAUSTED when the source cannot serve it now. Thread-safe.
  virtual absl::StatusOr<HostBuffer> Take(uint64_t bytes) = 0;
};

// Where a pool's slabs come from. Both functions may be called from any thread, also after the
// pool object is gone (by the last owner of a buffer), so they must not refer to the pool.
struct HostBufferAllocator {
  // Memory of `bytes` bytes, aligned for any use (at least 4096 bytes); an error (usually
  // RESOURCE_EXHAUSTED, with the cause) when it cannot be had.
  std::function<absl::StatusOr<void*>(uint64_t bytes)> allocate;
  // Gives back what `allocate` returned; an error is counted (HostBufferPoolStats::free_errors).
  std::function<absl::Status(void* p)> deallocate;
};

// Page-aligned (4096) memory from operator new.
HostBufferAllocator DefaultHostBufferAllocator();

struct HostBufferPoolOptions {
  // Slabs the pool holds at most, taken and idle together (bytes). Default: 4 GiB.
  uint64_t capacity_bytes = uint64_t{4} << 30;
  // New slabs are rounded up to a multiple of this (bytes; a power of two >= 4096), so slightly
  // different sizes share slabs. Default: 2 MiB.
  uint64_t slab_rounding_bytes = uint64_t{2} << 20;
  // An idle slab serves a Take of n bytes only if its capacity is at most this times n rounded
  // up to slab_rounding_bytes (>= 1). Default: 2.
  double max_waste_ratio = 2.0;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

// Counters of a pool (current values unless marked as monotonic).
struct HostBufferPoolStats {
  uint64_t slabs = 0;        // allocated slabs, taken or idle
  uint64_t idle_slabs = 0;   // slabs waiting for a Take
  uint64_t bytes_held = 0;   // capacity of all slabs, including ones being allocated
  uint64_t bytes_taken = 0;  // capacity of the slabs handed out
  uint64_t takes = 0;        // successful Takes (monotonic)
  uint64_t reuses = 0;       // Takes served by an idle slab (monotonic)
  uint64_t allocations = 0;  // slabs allocated (monotonic)
  uint64_t evictions = 0;    // idle slabs freed to make room (monotonic)
  uint64_t exhausted = 0;    // Takes answered RESOURCE_EXHAUSTED (monotonic)
  uint64_t free_errors = 0;  // deallocate calls that failed (monotonic)
};

class HostBufferPool final : public HostBufferSource {
 public:
  // INVALID_ARGUMENT for bad options or an allocator without both functions.
  static absl::StatusOr<std::unique_ptr<HostBufferPool>> Create(
      const HostBufferPoolOptions& options,
      HostBufferAllocator allocator = DefaultHostBufferAllocator());
  // Frees the idle slabs; taken ones are freed when their last owner lets go.
  ~HostBufferPool() override;
  HostBufferPool(const HostBufferPool&) = delete;
  HostBufferPool& operator=(const HostBufferPool&) = delete;

  // HostBufferSource. The buffer starts at the start of its slab. INVALID_ARGUMENT for 0 bytes;
  // RESOURCE_EXHAUSTED for more than capacity_bytes, when the taken slabs leave no room, or when
  // the allocator fails (its message included). Allocation and freeing run outside the pool's
  // lock. Thread-safe.
  absl::StatusOr<HostBuffer> Take(uint64_t bytes) override;

  // Thread-safe.
  HostBufferPoolStats Stats() const;
  const HostBufferPoolOptions& options() const { return options_; }

 private:
  struct State;  // shared with every buffer's owner
  HostBufferPool(const HostBufferPoolOptions& options, std::shared_ptr<State> state);
  // The first `bytes` bytes of a taken slab, owned by a handle that gives the slab back.
  HostBuffer Wrap(void* slab, uint64_t capacity, uint64_t bytes) const;

  const HostBufferPoolOptions options_;
  std::shared_ptr<State> state_;
};

}  // namespace kvblock
