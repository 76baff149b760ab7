// BlockStore: the one interface every storage tier implements (memory, RocksDB, tiered, and the
// cluster client on the worker side), so tiers compose and callers never care which one they hold.
//
// Contract shared by all implementations:
//  - Keys map to complete, verified block payloads (cache/block_payload.h). A payload becomes
//    visible only after it is fully committed; readers never see a partial payload.
//  - Put verifies the payload (header and data checksums) and that its header names the same
//    key; INVALID_ARGUMENT / DATA_LOSS otherwise. Putting a key that is present is a no-op (OK).
//  - Get returns NOT_FOUND on a miss. A record found corrupt is deleted, counted in Stats, and
//    reported as NOT_FOUND: wrong bytes are never returned.
//  - All methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/block_key.h"

namespace kvblock {

enum class StoreTier : uint8_t { kNone = 0, kGpu = 1, kMemory = 2, kDisk = 3, kRemote = 4 };
std::string_view StoreTierName(StoreTier tier);

// Immutable payload bytes plus whatever keeps them alive and in place. While a BlockBytes is
// held the bytes neither move nor change (a memory tier pins its allocation; eviction only drops
// the tier's reference). Copying a BlockBytes is cheap (shares ownership).
struct BlockBytes {
  absl::Span<const uint8_t> bytes;
  std::shared_ptr<const void> owner;
  // The tier that answered the Get (a TieredStore reports kDisk for a block it had to read
  // from disk, even though it then promoted it). kNone where the producer does not say.
  StoreTier tier = StoreTier::kNone;
  // The payload was verified (header and data checksum) when the store took it, and these bytes
  // have stayed in this host's memory since: a cache node's arena read in place over the
  // same-host data path. A consumer may then skip re-hashing the data
  // (BlockView::Parse(bytes, DataCheck::kTrusted)). False wherever the bytes crossed a network
  // or a disk after their last check, or the producer does not say.
  bool verified = false;
};

struct LookupResult {
  bool present = false;
  StoreTier tier = StoreTier::kNone;  // fastest tier holding the block
  uint64_t payload_bytes = 0;         // whole payload, header included
};

// Counters of one tier (monotonic unless noted).
// A storage engine's own number (for RocksDB: statistics tickers and DB properties), exported
// by the metrics as `kvblock_<name>{tier}` so the metrics code needs no engine headers.
struct EngineStat {
  // snake_case, base units, `_total` suffix for counters; e.g. "rocksdb_stall_seconds_total".
  std::string name;
  std::string help;       // one line
  bool counter = false;   // monotonic counter; otherwise a gauge
  double value = 0;
};

struct TierStats {
  StoreTier tier = StoreTier::kNone;
  uint64_t blocks = 0;          // current
  uint64_t bytes = 0;           // current, metadata included
  uint64_t capacity_bytes = 0;  // budget; 0 = unbounded
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t inserts = 0;
  uint64_t evictions = 0;
  uint64_t corrupt_records = 0;
  // Engine-specific numbers; a tier reports the same names, in the same order, on every call.
  std::vector<EngineStat> engine;
};

class BlockStore {
 public:
  virtual ~BlockStore() = default;

  virtual absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) = 0;
  virtual absl::StatusOr<BlockBytes> Get(const BlockKey& key) = 0;
  // Presence without reading data. `out` has keys.size() entries.
  virtual void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) = 0;
  // Absent keys are not an error.
  virtual absl::Status Delete(const BlockKey& key) = 0;
  // Drops every block of one model; returns how many were dropped.
  virtual absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) = 0;
  // One entry per tier, fastest first.
  virtual std::vector<TierStats> Stats() const = 0;
};

}  // namespace kvblock
