// HostRegions: host memory that another component owns (a co-located cache node's payload arena,
// mapped into this process by the same-host data path) and from which blocks are copied to HBM.
// The GPU copies pageable memory through a small staging buffer at a fraction of the link's
// rate; registered (page-locked) memory it reads directly. Registering a whole arena up front
// would pin, and so populate, all of it, so regions are registered lazily in fixed chunks, the
// first time a copy reads from them, and stay registered until the region is removed.
//
// CopyToDevice splits a copy at chunk boundaries (one cudaMemcpyAsync per registered chunk, so
// every piece is a direct DMA); a source outside every region is copied as it is. A chunk that
// someone else in the process registered already (another HostRegions over the same mapping)
// is used as it is and left to them.
//
// Thread safety: all methods are thread-safe. Remove must not race copies from the region: the
// caller removes a region only once nothing reads from it (the owner of the mapping guarantees
// that no block bytes in it are still held).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace kvblock::cuda {

// One host-to-device copy of a batch.
struct CopyPiece {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

// Enqueues the copies on `stream`, in one cudaMemcpyBatchAsync when there are several (one
// submission instead of one per copy; source access in stream order), except on the legacy
// default stream (nullptr), which takes them one by one. INTERNAL with the CUDA error.
absl::Status CopyPiecesToDevice(absl::Span<const CopyPiece> pieces, cudaStream_t stream);

class HostRegions {
 public:
  // Chunk size used for lazy registration: 256 MiB (a few ms of pinning per chunk; a 512-token
  // block of an 8B model, 64 MiB, spans at most two).
  static constexpr uint64_t kDefaultChunkBytes = uint64_t{256} << 20;

  // `chunk_bytes` must be a positive multiple of 4096 (checked: kDefaultChunkBytes otherwise).
  explicit HostRegions(uint64_t chunk_bytes = kDefaultChunkBytes);
  // Unregisters every registered chunk.
  ~HostRegions();
  HostRegions(const HostRegions&) = delete;
  HostRegions& operator=(const HostRegions&) = delete;

  // Starts tracking `region` (nothing is registered yet). A region overlapping a tracked one is
  // ignored. Returns whether it was added.
  bool Add(absl::Span<const uint8_t> region);
  // Unregisters the region's chunks and stops tracking it; unknown regions are ignored.
  void Remove(absl::Span<const uint8_t> region);

  // Enqueues the copy of `bytes` bytes from host `src` to device `dst` on `stream`. Pieces that
  // lie in a tracked region are registered first (synchronously, once per chunk). INTERNAL with
  // the CUDA error for a failed registration or copy.
  absl::Status CopyToDevice(void* dst, const void* src, size_t bytes, cudaStream_t stream);
  // CopyToDevice's pieces, appended to `out` for the caller to enqueue (CopyPiecesToDevice),
  // with the chunks they read registered; nothing is enqueued.
  absl::Status AddPieces(void* dst, const void* src, size_t bytes, std::vector<CopyPiece>& out);

  // Bytes of tracked regions that copies read as registered memory so far, registered here or
  // found registered already (for tests and logs).
  uint64_t registered_bytes() const;

 private:
  struct Region {
    const uint8_t* base = nullptr;
    uint64_t length = 0;
    enum Chunk : uint8_t { kUnregistered, kOurs, kTheirs };
    std::vector<Chunk> chunks;
  };
  // The region holding [p, p + n)'s first byte, or nullptr.
  Region* FindLocked(const uint8_t* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RegisterLocked(Region& r, size_t chunk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t chunk_bytes_;
  mutable absl::Mutex mu_;
  std::vector<Region> regions_ ABSL_GUARDED_BY(mu_);
  uint64_t registered_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvblock::cuda
