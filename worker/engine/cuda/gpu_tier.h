// GpuTier: cached blocks kept in HBM across requests, LRU under a byte budget, so a hot passage
// costs no transfer at all. A block's bytes are the payload's layer-major data (per layer K
// [kv_heads][tokens][head_dim], then V) in the model's dtype, which the attention kernel reads in
// place and re-encodes as it loads K (no copy into the request's KV).
//
// Get hands out a shared handle: eviction only drops the tier's reference, so a block in use by
// a running request stays valid until the request releases it (its bytes are then no longer
// counted against the budget).
// Thread safety: all methods are thread-safe (one mutex; the map holds few thousand entries).
#pragma once

#include <cstdint>
#include <list>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "cache/block_key.h"
#include "cache/block_payload.h"
#include "cache/block_store.h"
#include "worker/engine/cuda/device_memory.h"

namespace kvblock::cuda {

struct GpuTierOptions {
  // HBM budget for cached blocks, bytes. Default: 8 GiB.
  int64_t capacity_bytes = int64_t{8} << 30;

  // INVALID_ARGUMENT unless capacity_bytes > 0.
  absl::Status Validate() const;
};

struct GpuBlock {
  BlockMeta meta;       // geometry and dtype of the data
  DeviceMemory memory;  // layer-major K/V, meta.num_tokens tokens
};

class GpuTier {
 public:
  using Handle = std::shared_ptr<const GpuBlock>;

  explicit GpuTier(const GpuTierOptions& options);

  // Takes ownership of `block` (already on the device) under `key`, evicting least recently
  // used blocks until it fits. OK if the key is present (the new copy is dropped).
  // INVALID_ARGUMENT if the block alone exceeds the budget or its memory is smaller than its
  // meta says.
  absl::Status Insert(const BlockKey& key, GpuBlock block);
  // As above, for a block others may hold already (whose memory they finished writing).
  absl::Status Insert(const BlockKey& key, Handle block);
  // The block, refreshed as most recently used; nullptr on a miss. Counted in the stats.
  Handle Get(const BlockKey& key);
  // As Get, not counted: for a lookup that an earlier Get already counted.
  Handle Find(const BlockKey& key);
  TierStats Stats() const;

 private:
  struct Entry {
    Handle block;
    std::list<BlockKey>::iterator lru;
    int64_t bytes;
  };
  void EvictUntil(int64_t needed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The block, refreshed as most recently used, not counted; nullptr on a miss.
  Handle FindLocked(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const GpuTierOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<BlockKey, Entry> map_ ABSL_GUARDED_BY(mu_);
  std::list<BlockKey> lru_ ABSL_GUARDED_BY(mu_);  // front = most recent
  TierStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvblock::cuda
