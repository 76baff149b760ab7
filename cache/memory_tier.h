// MemoryTier: blocks in host memory under a byte budget. Sharded (one lock per shard), payloads
// in one Arena (cache/arena.h) that the data plane registers with UCX once, eviction by a
// pluggable policy (cache/eviction_policy.h).
//
// Byte budget: every block is charged Arena::RoundUp(payload bytes) + kBlockMetadataBytes, and
// the sum of charges of all live allocations never exceeds capacity_bytes. A block that was
// evicted or deleted while a reader still holds its BlockBytes stays charged until the last
// holder lets go (its bytes are still in use), so the budget bounds real memory, not just the
// index. Get is zero-copy: BlockBytes points into the arena and pins the allocation.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cache/arena.h"
#include "cache/block_store.h"
#include "cache/eviction_policy.h"

namespace kvblock {

struct MemoryTierOptions {
  // Byte budget: payload allocations plus per-block metadata. Default: 1 GiB.
  uint64_t capacity_bytes = uint64_t{1} << 30;
  // Independent shards, each with its own lock, map and eviction order. Default: 16.
  uint32_t num_shards = 16;
  // Who is evicted when a Put needs room. Default: kS3Fifo (wins on the RAG trace in
  // docs/benchmarks.md; kLru is the classic alternative).
  EvictionPolicyKind eviction = EvictionPolicyKind::kS3Fifo;
  // Tuning of kS3Fifo. Default: the paper's values (see S3FifoOptions).
  S3FifoOptions s3fifo;
  // Arena region size in bytes; 0 = one region of the whole capacity (one UCX registration).
  // A payload larger than a region cannot be stored. Default: 0.
  uint64_t arena_region_bytes = 0;
  // Arena allocation alignment in bytes. Default: 64.
  uint64_t arena_alignment = 64;
  // Back the arena with memfds another process can map (ArenaOptions::shared; the cache server
  // turns it on for the same-host shared-memory data plane). Default: false.
  bool shared_arena = false;
  // Re-verify payload checksums on every Get (payloads are always verified on Put). Costs about
  // one extra pass over the bytes per read. Default: false.
  bool verify_on_get = false;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

class MemoryTier : public BlockStore {
 public:
  // Metadata charged per block on top of its payload allocation (index entry, policy node,
  // allocation record), in bytes.
  static const uint64_t kBlockMetadataBytes;

  // Called once for every block evicted to make room (not for Delete/DeleteModel), outside all
  // tier locks, on the thread whose Put caused the eviction. Must not call back into the tier's
  // Put (it may Get).
  using EvictionListener = std::function<void(const BlockKey& key, const BlockBytes& bytes)>;

  // INVALID_ARGUMENT for bad options; RESOURCE_EXHAUSTED if the arena cannot be mapped.
  static absl::StatusOr<std::unique_ptr<MemoryTier>> Create(const MemoryTierOptions& options);
  ~MemoryTier() override;

  // Copies the payload into the arena, evicting as needed. OK if the key is already present
  // (no-op). INVALID_ARGUMENT / DATA_LOSS for a malformed payload or one whose header names
  // another key; RESOURCE_EXHAUSTED when the block is larger than the budget or the budget is
  // held by readers of evicted blocks. Thread-safe.
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override;
  // Put that also returns the stored bytes (the existing ones if the key was present).
  absl::StatusOr<BlockBytes> Insert(const BlockKey& key, absl::Span<const uint8_t> payload);
  // Zero-copy: the returned bytes stay valid and unchanged while the caller holds them, even if
  // the block is evicted or deleted meanwhile. NOT_FOUND on a miss (or a block found corrupt
  // when verify_on_get). Thread-safe.
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override;
  // Presence only; does not count as a hit for eviction. Thread-safe.
  void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) override;
  // OK whether or not the key was present. Thread-safe.
  absl::Status Delete(const BlockKey& key) override;
  // Removes every block of `model`; returns how many. Thread-safe.
  absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) override;
  // One entry (kMemory). `bytes` includes evicted blocks still held by readers. Thread-safe.
  std::vector<TierStats> Stats() const override;

  // Set before the tier is shared between threads; not thread-safe.
  void SetEvictionListener(EvictionListener listener) { listener_ = std::move(listener); }
  // Bytes a payload of `payload_bytes` is charged.
  uint64_t ChargeFor(uint64_t payload_bytes) const;
  // The arena holding every payload (for UCX registration and Arena::Locate). Lives as long as
  // the tier or any BlockBytes it returned.
  const Arena& arena() const;
  const MemoryTierOptions& options() const { return options_; }

 private:
  struct Core;
  struct Allocation;
  struct Entry {
    std::shared_ptr<const Allocation> alloc;
    ModelFingerprint model;
  };
  struct Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<BlockKey, Entry> map ABSL_GUARDED_BY(mu);
    std::unique_ptr<EvictionPolicy> policy ABSL_GUARDED_BY(mu);
  };

  MemoryTier(const MemoryTierOptions& options, std::shared_ptr<Core> core);
  size_t ShardIndex(const BlockKey& key) const;
  static BlockBytes ToBytes(const std::shared_ptr<const Allocation>& alloc);
  // Reserves budget and arena space for `size` payload bytes, evicting as needed.
  absl::StatusOr<std::shared_ptr<Allocation>> Reserve(uint64_t size, size_t start_shard);
  // Evicts one block, trying shards from `start_shard` on. False when every shard is empty.
  bool EvictOne(size_t start_shard);

  const MemoryTierOptions options_;
  const std::shared_ptr<Core> core_;
  std::vector<std::unique_ptr<Shard>> shards_;
  EvictionListener listener_;

  std::atomic<uint64_t> blocks_{0};
  std::atomic<uint64_t> hits_{0}, misses_{0}, inserts_{0}, evictions_{0}, corrupt_{0};
};

}  // namespace kvblock
