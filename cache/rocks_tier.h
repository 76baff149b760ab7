// RocksTier: blocks on local SSD in RocksDB, with BlobDB (integrated blob files) holding the
// payloads so that the LSM tree only moves small records. One column family per model
// fingerprint (DeleteModel drops it: O(1) however many blocks), WAL always on.
//
// Durability (SyncPolicy): a Put returns only after its records are committed to the WAL and
// the memtable; what the WAL write guarantees depends on the policy:
//  - kPerWrite: each Put fsyncs the WAL before returning (RocksDB sync writes; concurrent
//    writers in one write group share an fsync). Survives power loss.
//  - kGroupCommit: Puts write the WAL without fsync and then wait for a shared WAL fsync that
//    covers them; one fsync serves every Put that arrived while the previous one ran. Survives
//    power loss like kPerWrite, with fewer fsyncs under concurrency.
//  - kNone: the WAL is written to the OS but never fsynced by kvblock. Survives a process crash
//    (SIGKILL), not power loss or a kernel crash.
//
// Integrity: every read verifies the payload's own checksums (BlockView::Parse: header and
// data XXH3, end to end from the writer) and that its header names the requested key and the
// column family's model; RocksDB's per-block CRC32c is left off on the payload read path (it
// guards the same bytes, at a quarter of the speed). Small records are read with RocksDB checks. A record failing any check is deleted, counted (TierStats::corrupt_records) and
// reported as NOT_FOUND: wrong bytes are never returned.
//
// The data dir holds a format marker (KVBLOCK_FORMAT); Open refuses a dir of another format
// version, a foreign RocksDB, a missing dir (unless create_if_missing), a read-only dir and a
// full disk with a clear status.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cache/block_store.h"

namespace rocksdb {
class Cache;
class ColumnFamilyHandle;
class DB;
class Env;
class Statistics;
}  // namespace rocksdb

namespace kvblock {

enum class SyncPolicy : uint8_t { kPerWrite = 0, kGroupCommit = 1, kNone = 2 };
std::string_view SyncPolicyName(SyncPolicy policy);  // "per-write", "group-commit", "none"
absl::StatusOr<SyncPolicy> ParseSyncPolicy(std::string_view name);

struct RocksTierOptions {
  // Data directory. Required. Default: "".
  std::string path;
  // Create `path` (not its parents) when it does not exist; otherwise Open fails NOT_FOUND.
  // Default: false.
  bool create_if_missing = false;
  // When a Put counts as durable (see the file comment). Default: kPerWrite.
  SyncPolicy sync = SyncPolicy::kPerWrite;
  // Values of at least this many bytes go to blob files. Default: 4096.
  uint64_t min_blob_bytes = 4096;
  // Size at which a blob file is closed and a new one started, in bytes. Default: 256 MiB.
  uint64_t blob_file_bytes = uint64_t{256} << 20;
  // Relocate live blobs out of old blob files during compaction so deleted blocks free disk.
  // Default: true.
  bool blob_garbage_collection = true;
  // Share of the oldest blob files that garbage collection relocates from. Default: 0.25.
  double blob_gc_age_cutoff = 0.25;
  // Memtable size per column family in bytes (payloads pass through it before a flush).
  // Default: 64 MiB.
  uint64_t write_buffer_bytes = uint64_t{64} << 20;
  // Block cache for SST blocks (records and indexes, not payloads), shared by all column
  // families, in bytes. Default: 32 MiB.
  uint64_t block_cache_bytes = uint64_t{32} << 20;
  // Blob cache (payloads, read back zero-copy: a Get pins the cached blob instead of reading
  // it into a fresh buffer), in bytes; blobs enter it when read and when a memtable is flushed.
  // 0 disables it (every Get reads the blob file). Default: 64 MiB.
  uint64_t blob_cache_bytes = uint64_t{64} << 20;
  // RocksDB background flush + compaction threads. Default: 2.
  int max_background_jobs = 2;
  // RocksDB environment (tests inject file-system faults). Not owned; must outlive the tier.
  // Default: nullptr (the default POSIX environment).
  rocksdb::Env* env = nullptr;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

class RocksTier : public BlockStore {
 public:
  // Opens (and creates, for an empty dir) the store. Errors, each naming the path:
  // INVALID_ARGUMENT (options), NOT_FOUND (missing dir), PERMISSION_DENIED (read-only dir),
  // RESOURCE_EXHAUSTED (disk full), FAILED_PRECONDITION (other format version, a foreign
  // database, a dir locked by another process), DATA_LOSS (unreadable database files),
  // UNAVAILABLE (other I/O errors).
  static absl::StatusOr<std::unique_ptr<RocksTier>> Open(const RocksTierOptions& options);
  // Closes the database; in-flight calls must have returned.
  ~RocksTier() override;

  // Durable per the sync policy when it returns OK; a present key is a no-op. INVALID_ARGUMENT /
  // DATA_LOSS for a bad payload or key mismatch, RESOURCE_EXHAUSTED when the disk is full,
  // UNAVAILABLE for other I/O errors. Thread-safe.
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override;
  // The bytes are owned by the returned BlockBytes (read from disk; no further copy).
  // NOT_FOUND on a miss or a corrupt record (deleted and counted); UNAVAILABLE for I/O errors.
  // Thread-safe.
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override;
  // Reads only the small per-block records. Thread-safe.
  void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) override;
  // OK whether or not the key was present; durable per the sync policy. Thread-safe.
  absl::Status Delete(const BlockKey& key) override;
  // Drops the model's column family; returns how many blocks it held. Thread-safe; waits for
  // in-flight calls.
  absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) override;
  // One entry (kDisk). `bytes` counts payloads plus record keys and headers (logical bytes, not
  // file sizes). `engine` holds RocksDB's own numbers (rocksdb_*: block and blob cache hits,
  // bytes written and read, WAL and blob file bytes, compaction bytes pending, SST / blob file
  // bytes, memtable bytes, write stall seconds), summed over the model column families.
  // Thread-safe.
  std::vector<TierStats> Stats() const override;

  // Writes every memtable to SST/blob files (tests, orderly shutdown). Thread-safe.
  absl::Status FlushMemtables();
  // Models that have a column family. Thread-safe.
  std::vector<ModelFingerprint> Models() const;
  const RocksTierOptions& options() const { return options_; }

 private:
  struct ModelCf {
    ModelFingerprint model;
    rocksdb::ColumnFamilyHandle* handle = nullptr;
    std::atomic<uint64_t> blocks{0};
    std::atomic<uint64_t> bytes{0};
  };
  struct PinnedValue;
  static constexpr size_t kStripes = 256;

  explicit RocksTier(const RocksTierOptions& options) : options_(options) {}
  absl::Status OpenDb();
  std::vector<EngineStat> EngineStats() const;
  absl::Status CountBlocks(ModelCf& cf);
  // Waits for a WAL fsync that covers writes completed before the call (kGroupCommit).
  absl::Status GroupSync();
  absl::Status Commit(void* write_batch);
  absl::Mutex& Stripe(const BlockKey& key) { return stripes_[key.hi % kStripes]; }
  // Deletes a block found corrupt in `cf` (if still there) and counts it. Needs cf_mu_ held.
  void DropCorrupt(ModelCf& cf, const BlockKey& key) ABSL_SHARED_LOCKS_REQUIRED(cf_mu_);
  ModelCf* FindCf(const ModelFingerprint& model) ABSL_SHARED_LOCKS_REQUIRED(cf_mu_);

  const RocksTierOptions options_;
  rocksdb::DB* db_ = nullptr;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
  std::shared_ptr<void> cf_options_;  // rocksdb::ColumnFamilyOptions for new model families
  std::shared_ptr<rocksdb::Cache> block_cache_;
  std::shared_ptr<rocksdb::Cache> blob_cache_;  // null when options_.blob_cache_bytes == 0
  std::shared_ptr<rocksdb::Statistics> statistics_;  // RocksDB's tickers (TierStats::engine)

  // Readers (Put/Get/Lookup/Delete) share it; DeleteModel and column family creation take it
  // exclusively, so a handle is never dropped under a running call.
  mutable absl::Mutex cf_mu_;
  absl::flat_hash_map<ModelFingerprint, std::unique_ptr<ModelCf>> cfs_ ABSL_GUARDED_BY(cf_mu_);
  // Serializes Put/Delete/corruption handling of one key (keeps counts exact and a present key
  // a no-op). Taken after cf_mu_.
  std::array<absl::Mutex, kStripes> stripes_;

  absl::Mutex sync_mu_;
  absl::CondVar sync_cv_;
  uint64_t written_ticket_ ABSL_GUARDED_BY(sync_mu_) = 0;
  uint64_t synced_ticket_ ABSL_GUARDED_BY(sync_mu_) = 0;
  bool syncing_ ABSL_GUARDED_BY(sync_mu_) = false;

  std::atomic<uint64_t> hits_{0}, misses_{0}, inserts_{0}, corrupt_{0};
  absl::Mutex tsan_write_mu_;  // used in ThreadSanitizer builds only (see Commit)
};

}  // namespace kvblock
