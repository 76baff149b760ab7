// TieredStore: a MemoryTier over a RocksTier, the store of a cache node and the engine's
// embedded cache (OpenEmbeddedStore). Reads promote disk hits into memory; writes go through to
// disk before they are acknowledged (kWriteThrough) or are acknowledged from memory and written
// to disk in the background (kWriteBack); memory eviction demotes: under kWriteThrough every
// memory block is already on disk, under kWriteBack an evicted block that is not yet on disk is
// written before its memory is released (it stays readable meanwhile).
//
// Consistency: Put, Delete and the miss path of Get (disk read + promotion) of one key are
// serialized by a striped lock, so a Delete is never undone by a racing promotion or
// write-back, and both tiers agree once calls return. Memory hits take no extra lock.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cache/block_store.h"
#include "cache/memory_tier.h"
#include "cache/rocks_tier.h"

namespace kvblock {

enum class WritePolicy : uint8_t {
  kWriteThrough = 0,  // Put returns after the disk tier has it (durable per its sync policy)
  kWriteBack = 1,     // Put returns once in memory; a crash loses blocks not yet flushed
};

struct TieredStoreOptions {
  // The memory tier. Default: MemoryTierOptions defaults (1 GiB, S3-FIFO).
  MemoryTierOptions memory;
  // The disk tier; `rocks.path` is required. Default: RocksTierOptions defaults.
  RocksTierOptions rocks;
  // When a Put is acknowledged. Default: kWriteThrough (no acknowledged block is lost).
  WritePolicy write_policy = WritePolicy::kWriteThrough;
  // kWriteBack: how often the background flusher writes dirty blocks to disk. Default: 100 ms.
  absl::Duration write_back_interval = absl::Milliseconds(100);

  // INVALID_ARGUMENT naming the bad field (including the tiers' own checks).
  absl::Status Validate() const;
};

class TieredStore : public BlockStore {
 public:
  // Opens the disk tier (its errors pass through unchanged) and creates the memory tier; the
  // memory tier starts empty and warms as blocks are read.
  static absl::StatusOr<std::unique_ptr<TieredStore>> Open(const TieredStoreOptions& options);
  // Under kWriteBack, flushes every dirty block first.
  ~TieredStore() override;

  // kWriteThrough: disk then memory; the memory copy is best effort (a full memory tier does not
  // fail the Put). kWriteBack: memory, falling back to a disk write when memory has no room.
  // A present key is a no-op. Payload errors as BlockStore::Put; disk errors from RocksTier.
  // Thread-safe.
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override;
  // Memory, then (kWriteBack) blocks not yet flushed, then disk; a disk hit is promoted.
  // NOT_FOUND on a miss. Thread-safe.
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override;
  // `tier` is kMemory or kDisk (dirty write-back blocks report kMemory). Thread-safe.
  void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) override;
  // Removes the key from both tiers. Thread-safe.
  absl::Status Delete(const BlockKey& key) override;
  // Both tiers; returns the larger of the two counts (every memory block under kWriteThrough is
  // also on disk). Thread-safe.
  absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) override;
  // {memory, disk}. Thread-safe.
  std::vector<TierStats> Stats() const override;

  // kWriteBack: writes every block not yet on disk and waits for it. OK otherwise. Thread-safe.
  absl::Status Flush();
  // Blocks acknowledged but not yet on disk (kWriteBack). Thread-safe.
  size_t dirty_blocks() const;
  MemoryTier& memory() { return *memory_; }
  RocksTier& disk() { return *rocks_; }

 private:
  static constexpr size_t kStripes = 512;
  explicit TieredStore(const TieredStoreOptions& options) : options_(options) {}
  absl::Mutex& Stripe(const BlockKey& key) { return stripes_[key.lo % kStripes]; }
  void OnEvicted(const BlockKey& key);
  void FlusherLoop();
  // Writes one dirty block to disk if it is still dirty. Takes the key's stripe.
  absl::Status FlushOne(const BlockKey& key);

  const TieredStoreOptions options_;
  std::unique_ptr<MemoryTier> memory_;
  std::unique_ptr<RocksTier> rocks_;
  std::array<absl::Mutex, kStripes> stripes_;

  // kWriteBack: acknowledged blocks not yet on disk; the BlockBytes pins the memory copy even
  // after eviction, so these blocks stay readable.
  mutable absl::Mutex dirty_mu_;
  absl::flat_hash_map<BlockKey, BlockBytes> dirty_ ABSL_GUARDED_BY(dirty_mu_);
  bool evicted_dirty_ ABSL_GUARDED_BY(dirty_mu_) = false;  // wakes the flusher early
  bool stop_ ABSL_GUARDED_BY(dirty_mu_) = false;
  absl::CondVar flush_cv_;  // signalled with dirty_mu_ held
  std::thread flusher_;
};

// The engine's embedded cache (`kvblock generate --cache-dir DIR`): memory_bytes of host memory
// (S3-FIFO) over RocksDB in `dir` (created if missing, its parent must exist), write-through,
// group-commit durability. Errors as TieredStore::Open.
absl::StatusOr<std::unique_ptr<BlockStore>> OpenEmbeddedStore(const std::string& dir,
                                                              uint64_t memory_bytes);

}  // namespace kvblock
