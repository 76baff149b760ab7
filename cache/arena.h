// Arena: the host memory that the memory tier keeps payloads in. A few large regions are mapped
// once at creation and never moved or unmapped while the arena lives, so the data plane can
// register them with UCX (ucp_mem_map) once and then send any payload straight from where it
// lies: Locate() turns a payload pointer into (region, offset) for the remote side.
//
// Allocation is best-fit with coalescing inside each region, in multiples of `alignment`.
// Pages are mapped lazily (MAP_NORESERVE), so an arena costs physical memory only as it fills.
// A shared arena backs each region with a memfd, so another process on the host can map the
// same pages (region_fd, passed over a Unix socket: services/shm_data_plane.h) and read
// payloads where they lie.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace kvblock {

struct ArenaOptions {
  // Total bytes of all regions: the most the arena can ever hand out. Default: 1 GiB.
  uint64_t capacity_bytes = uint64_t{1} << 30;
  // Bytes per region; one allocation never spans regions, so this is also the largest
  // allocation. 0 means one region of `capacity_bytes`. Default: 0.
  uint64_t region_bytes = 0;
  // Allocation granularity and alignment in bytes; a power of two >= 8. Default: 64 (a cache
  // line, and enough for any KV dtype and for DMA engines).
  uint64_t alignment = 64;
  // Back each region with a memfd (memfd_create, MAP_SHARED) instead of anonymous private
  // memory, so other processes can map it through region_fd. Default: false.
  bool shared = false;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

// Where an allocation lives: the index of its region (ForEachRegion order) and the byte offset.
struct ArenaLocation {
  uint32_t region = 0;
  uint64_t offset = 0;
  friend bool operator==(const ArenaLocation&, const ArenaLocation&) = default;
};

class Arena {
 public:
  // Maps every region. INVALID_ARGUMENT for bad options, RESOURCE_EXHAUSTED when the kernel
  // refuses the mapping.
  static absl::StatusOr<std::shared_ptr<Arena>> Create(const ArenaOptions& options);
  // Unmaps every region and closes its memfd.
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Bytes an allocation of `size` really takes (rounded up to the alignment).
  uint64_t RoundUp(uint64_t size) const;
  // Returns `RoundUp(size)` writable bytes owned by the caller until Free. RESOURCE_EXHAUSTED
  // when no free range is large enough (the arena may still have that many bytes free in
  // pieces), INVALID_ARGUMENT for size 0. Thread-safe.
  absl::StatusOr<uint8_t*> Allocate(uint64_t size);
  // Returns an allocation; `size` is the value passed to Allocate. Thread-safe.
  void Free(uint8_t* ptr, uint64_t size);

  // Calls fn(base, length) for every region, in index order. Regions never change, so a caller
  // may register them once. Thread-safe.
  void ForEachRegion(const std::function<void(void* base, size_t length)>& fn) const;
  size_t num_regions() const { return regions_.size(); }
  // The memfd behind region `region` (owned by the arena, valid while it lives; dup it to keep
  // it), or -1 when the arena is not shared or the index is out of range. Thread-safe.
  int region_fd(uint32_t region) const;
  // Length in bytes of region `region` (0 when out of range). Thread-safe.
  uint64_t region_length(uint32_t region) const;
  // Region and offset of a pointer inside the arena; nullopt for a pointer outside it.
  // Thread-safe (regions are immutable).
  std::optional<ArenaLocation> Locate(const void* ptr) const;

  uint64_t capacity_bytes() const { return capacity_; }
  uint64_t allocated_bytes() const;    // bytes handed out and not yet freed
  uint64_t largest_free_range() const;  // bytes

 private:
  struct Region {
    uint8_t* base = nullptr;
    uint64_t length = 0;
    int fd = -1;  // memfd of a shared arena
  };
  explicit Arena(const ArenaOptions& options) : options_(options) {}
  // Maps one region of `length` bytes (a memfd's pages when `shared`).
  static absl::StatusOr<Region> MapRegion(uint64_t length, bool shared);
  void InsertFreeLocked(uint32_t region, uint64_t offset, uint64_t length)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseFreeLocked(uint32_t region, uint64_t offset, uint64_t length)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ArenaOptions options_;
  uint64_t capacity_ = 0;
  std::vector<Region> regions_;  // immutable after Create

  mutable absl::Mutex mu_;
  // Free ranges: by (length, region, offset) for best fit, and per region by offset for
  // coalescing with neighbours.
  std::set<std::tuple<uint64_t, uint32_t, uint64_t>> free_by_size_ ABSL_GUARDED_BY(mu_);
  std::vector<std::map<uint64_t, uint64_t>> free_by_offset_ ABSL_GUARDED_BY(mu_);
  uint64_t allocated_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvblock
