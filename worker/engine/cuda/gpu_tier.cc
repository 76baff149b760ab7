// GpuTier; see gpu_tier.h.
#include "worker/engine/cuda/gpu_tier.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace kvblock::cuda {

absl::Status GpuTierOptions::Validate() const {
  if (capacity_bytes <= 0) return absl::InvalidArgumentError("GpuTierOptions: capacity_bytes must be > 0");
  return absl::OkStatus();
}

GpuTier::GpuTier(const GpuTierOptions& options) : options_(options) {
  stats_.tier = StoreTier::kGpu;
  stats_.capacity_bytes = static_cast<uint64_t>(options.capacity_bytes);
}

absl::Status GpuTier::Insert(const BlockKey& key, GpuBlock block) {
  return Insert(key, std::make_shared<const GpuBlock>(std::move(block)));
}

absl::Status GpuTier::Insert(const BlockKey& key, Handle block) {
  if (block == nullptr) return absl::InvalidArgumentError("GpuTier: null block");
  const int64_t bytes = static_cast<int64_t>(block->memory.bytes());
  if (ValidateMeta(block->meta).ok() && static_cast<uint64_t>(bytes) < DataBytes(block->meta)) {
    return absl::InvalidArgumentError("GpuTier: block memory smaller than its meta says");
  }
  if (bytes > options_.capacity_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("GpuTier: block of ", bytes, " bytes exceeds the budget ", options_.capacity_bytes));
  }
  absl::MutexLock lock(&mu_);
  if (map_.contains(key)) return absl::OkStatus();
  EvictUntil(bytes);
  lru_.push_front(key);
  map_.emplace(key, Entry{std::move(block), lru_.begin(), bytes});
  stats_.blocks = map_.size();
  stats_.bytes += bytes;
  ++stats_.inserts;
  return absl::OkStatus();
}

GpuTier::Handle GpuTier::Get(const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  Handle h = FindLocked(key);
  ++(h != nullptr ? stats_.hits : stats_.misses);
  return h;
}

GpuTier::Handle GpuTier::Find(const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  return FindLocked(key);
}

GpuTier::Handle GpuTier::FindLocked(const BlockKey& key) {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.block;
}

TierStats GpuTier::Stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void GpuTier::EvictUntil(int64_t needed) {
  while (!lru_.empty() && static_cast<int64_t>(stats_.bytes) + needed > options_.capacity_bytes) {
    const BlockKey victim = lru_.back();
    lru_.pop_back();
    auto it = map_.find(victim);
    stats_.bytes -= it->second.bytes;
    map_.erase(it);
    ++stats_.evictions;
  }
  stats_.blocks = map_.size();
}

}  // namespace kvblock::cuda
