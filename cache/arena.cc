#include "cache/arena.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cache/internal/tsan_mutex.h"

namespace kvblock {

absl::Status ArenaOptions::Validate() const {
  if (capacity_bytes == 0) return absl::InvalidArgumentError("ArenaOptions.capacity_bytes is 0");
  if (alignment < 8 || (alignment & (alignment - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ArenaOptions.alignment = ", alignment, " is not a power of two >= 8"));
  }
  if (region_bytes != 0 && region_bytes < alignment) {
    return absl::InvalidArgumentError(absl::StrCat("ArenaOptions.region_bytes = ", region_bytes,
                                                   " is below the alignment ", alignment));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Arena>> Arena::Create(const ArenaOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::shared_ptr<Arena> arena(new Arena(options));
  const uint64_t a = options.alignment;
  const uint64_t capacity = (options.capacity_bytes + a - 1) / a * a;
  uint64_t region = options.region_bytes == 0 ? capacity : (options.region_bytes + a - 1) / a * a;
  arena->free_by_offset_.reserve((capacity + region - 1) / region);
  for (uint64_t done = 0; done < capacity; done += region) {
    const uint64_t length = std::min(region, capacity - done);
    absl::StatusOr<Region> r = MapRegion(length, options.shared);
    if (!r.ok()) return r.status();
    arena->regions_.push_back(*r);
    internal::MutexLock lock(&arena->mu_);
    arena->free_by_offset_.emplace_back();
    arena->InsertFreeLocked(static_cast<uint32_t>(arena->regions_.size() - 1), 0, length);
  }
  arena->capacity_ = capacity;
  return arena;
}

absl::StatusOr<Arena::Region> Arena::MapRegion(uint64_t length, bool shared) {
  int fd = -1;
  if (shared) {
    fd = memfd_create("kvblock-arena", MFD_CLOEXEC);
    if (fd < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("arena: memfd_create failed: ", std::strerror(errno)));
    }
    // Sparse: pages are allocated when first written, like the anonymous mapping.
    if (ftruncate(fd, static_cast<off_t>(length)) != 0) {
      const int err = errno;
      close(fd);
      return absl::ResourceExhaustedError(absl::StrCat("arena: ftruncate of a memfd to ", length,
                                                       " bytes failed: ", std::strerror(err)));
    }
  }
  const int flags = shared ? MAP_SHARED | MAP_NORESERVE : MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    if (fd >= 0) close(fd);
    return absl::ResourceExhaustedError(
        absl::StrCat("arena: mmap of ", length, " bytes failed: ", std::strerror(err)));
  }
  return Region{static_cast<uint8_t*>(base), length, fd};
}

Arena::~Arena() {
  for (const Region& r : regions_) {
    munmap(r.base, r.length);
    if (r.fd >= 0) close(r.fd);
  }
}

int Arena::region_fd(uint32_t region) const {
  return region < regions_.size() ? regions_[region].fd : -1;
}

uint64_t Arena::region_length(uint32_t region) const {
  return region < regions_.size() ? regions_[region].length : 0;
}

uint64_t Arena::RoundUp(uint64_t size) const {
  const uint64_t a = options_.alignment;
  return (size + a - 1) / a * a;
}

void Arena::InsertFreeLocked(uint32_t region, uint64_t offset, uint64_t length) {
  free_by_size_.emplace(length, region, offset);
  free_by_offset_[region].emplace(offset, length);
}

void Arena::EraseFreeLocked(uint32_t region, uint64_t offset, uint64_t length) {
  free_by_size_.erase({length, region, offset});
  free_by_offset_[region].erase(offset);
}

absl::StatusOr<uint8_t*> Arena::Allocate(uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("arena: allocation of 0 bytes");
  const uint64_t need = RoundUp(size);
  internal::MutexLock lock(&mu_);
  auto it = free_by_size_.lower_bound({need, 0, 0});
  if (it == free_by_size_.end()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("arena: no free range of ", need, " bytes (", capacity_ - allocated_,
                     " bytes free in pieces)"));
  }
  const auto [length, region, offset] = *it;
  EraseFreeLocked(region, offset, length);
  if (length > need) InsertFreeLocked(region, offset + need, length - need);
  allocated_ += need;
  return regions_[region].base + offset;
}

void Arena::Free(uint8_t* ptr, uint64_t size) {
  std::optional<ArenaLocation> loc = Locate(ptr);
  if (!loc.has_value() || size == 0) return;
  uint64_t offset = loc->offset;
  uint64_t length = RoundUp(size);
  internal::MutexLock lock(&mu_);
  allocated_ -= length;
  std::map<uint64_t, uint64_t>& by_offset = free_by_offset_[loc->region];
  // Coalesce with the free range after, then the one before.
  auto next = by_offset.lower_bound(offset);
  if (next != by_offset.end() && next->first == offset + length) {
    const uint64_t next_length = next->second;
    EraseFreeLocked(loc->region, next->first, next_length);
    length += next_length;
  }
  auto after = by_offset.lower_bound(offset);
  if (after != by_offset.begin()) {
    auto prev = std::prev(after);
    if (prev->first + prev->second == offset) {
      const uint64_t prev_offset = prev->first, prev_length = prev->second;
      EraseFreeLocked(loc->region, prev_offset, prev_length);
      offset = prev_offset;
      length += prev_length;
    }
  }
  InsertFreeLocked(loc->region, offset, length);
}

void Arena::ForEachRegion(const std::function<void(void* base, size_t length)>& fn) const {
  for (const Region& r : regions_) fn(r.base, r.length);
}

std::optional<ArenaLocation> Arena::Locate(const void* ptr) const {
  const auto* p = static_cast<const uint8_t*>(ptr);
  for (uint32_t i = 0; i < regions_.size(); ++i) {
    const Region& r = regions_[i];
    if (p >= r.base && p < r.base + r.length) {
      return ArenaLocation{i, static_cast<uint64_t>(p - r.base)};
    }
  }
  return std::nullopt;
}

uint64_t Arena::allocated_bytes() const {
  internal::MutexLock lock(&mu_);
  return allocated_;
}

uint64_t Arena::largest_free_range() const {
  internal::MutexLock lock(&mu_);
  return free_by_size_.empty() ? 0 : std::get<0>(*free_by_size_.rbegin());
}

}  // namespace kvblock
