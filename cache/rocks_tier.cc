#include "cache/rocks_tier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cache/internal/tsan_mutex.h"
#include "cache/block_payload.h"
#include "cache/internal/rocks_records.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/statistics.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace kvblock {
namespace {

using internal::kDataRecord;
using internal::kMetaRecord;
using internal::RecordKey;

// Record keys (2 x 17 bytes) and the header copy stored per block, beyond the payload.
constexpr uint64_t kRecordOverheadBytes = 2 * 17 + kBlockHeaderBytes;

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The one place rocksdb::Status becomes absl::Status.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat(AbslView(what), ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  // A full disk shows up as NoSpace, as an IOError from the Env, or (once a background flush
  // failed) as Incomplete wrapping that IOError: all are "disk full".
  const std::string text = s.ToString();
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kNoSpace ||
      absl::StrContains(text, "No space left")) {
    return absl::ResourceExhaustedError(absl::StrCat(msg, " (disk full)"));
  }
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsNotSupported()) return absl::UnimplementedError(msg);
  if (s.IsIOError()) {
    if (absl::StrContains(text, "Read-only file system") ||
        absl::StrContains(text, "Permission denied")) {
      return absl::PermissionDeniedError(msg);
    }
    if (absl::StrContains(text, "lock")) {
      return absl::FailedPreconditionError(
          absl::StrCat(msg, " (is another process using this data dir?)"));
    }
    return absl::UnavailableError(msg);
  }
  if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut()) return absl::UnavailableError(msg);
  if (s.IsAborted()) return absl::AbortedError(msg);
  return absl::InternalError(msg);
}

absl::Status FromErrno(int err, const std::string& what) {
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(absl::StrCat(msg, " (the data dir is read-only)"));
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(absl::StrCat(msg, " (disk full)"));
    default:
      return absl::UnavailableError(msg);
  }
}

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& what) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FromErrno(errno, what);
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Missing, not a dir, read-only or full: each a clear status before RocksDB sees the dir.
absl::Status PrepareDir(const RocksTierOptions& o) {
  struct stat st;
  if (stat(o.path.c_str(), &st) != 0) {
    if (errno != ENOENT) return FromErrno(errno, absl::StrCat("data dir ", o.path));
    if (!o.create_if_missing) {
      return absl::NotFoundError(absl::StrCat("data dir ", o.path, " does not exist"));
    }
    if (mkdir(o.path.c_str(), 0755) != 0) {
      return FromErrno(errno, absl::StrCat("creating data dir ", o.path));
    }
  } else if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("data dir ", o.path, " is not a directory"));
  }
  // Probe: create, fill and fsync a small file. access(W_OK) would lie for root and on
  // read-only mounts checked lazily; ENOSPC only shows when bytes are really written.
  const std::string probe = absl::StrCat(o.path, "/.kvblock-write-probe");
  int fd = open(probe.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return FromErrno(errno, absl::StrCat("data dir ", o.path, " is not writable"));
  std::vector<uint8_t> bytes(64 << 10, 0x5a);
  absl::Status s = WriteAll(fd, bytes.data(), bytes.size(), absl::StrCat("writing to ", o.path));
  if (s.ok() && fsync(fd) != 0) s = FromErrno(errno, absl::StrCat("fsync in ", o.path));
  close(fd);
  unlink(probe.c_str());
  return s;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Reads the format marker, or writes it into a dir that holds no database yet.
absl::Status CheckFormatMarker(const RocksTierOptions& o) {
  const std::string marker = absl::StrCat(o.path, "/", AbslView(internal::kFormatMarkerFile));
  if (FileExists(marker)) {
    std::ifstream in(marker);
    std::string name;
    int version = -1;
    in >> name >> version;
    if (name != internal::kFormatMarkerName) {
      return absl::FailedPreconditionError(
          absl::StrCat("data dir ", o.path, " has an unreadable format marker ", marker));
    }
    if (version != internal::kRocksFormatVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data dir ", o.path, " holds kvblock format version ", version,
          "; this build reads version ", internal::kRocksFormatVersion,
          " (migrate the data or use another dir)"));
    }
    return absl::OkStatus();
  }
  if (FileExists(absl::StrCat(o.path, "/CURRENT"))) {
    return absl::FailedPreconditionError(
        absl::StrCat("data dir ", o.path,
                     " holds a RocksDB database that is not a kvblock store (no ",
                     AbslView(internal::kFormatMarkerFile), ")"));
  }
  const std::string tmp = marker + ".tmp";
  const std::string text = absl::StrCat(AbslView(internal::kFormatMarkerName), " ",
                                        internal::kRocksFormatVersion, "\n");
  int fd = open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return FromErrno(errno, absl::StrCat("creating ", tmp));
  absl::Status s = WriteAll(fd, text.data(), text.size(), absl::StrCat("writing ", tmp));
  if (s.ok() && fsync(fd) != 0) s = FromErrno(errno, absl::StrCat("fsync ", tmp));
  close(fd);
  if (s.ok() && rename(tmp.c_str(), marker.c_str()) != 0) {
    s = FromErrno(errno, absl::StrCat("renaming ", tmp));
  }
  if (!s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  int dir = open(o.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    fsync(dir);
    close(dir);
  }
  return absl::OkStatus();
}

// RocksDB's own LOG file lives in the data dir, and on a full disk RocksDB trips over its
// failed LOG writes; warnings and errors go to stderr instead, tagged with the dir.
class StderrLogger final : public rocksdb::Logger {
 public:
  explicit StderrLogger(std::string path)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), path_(std::move(path)) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    std::fprintf(stderr, "rocksdb[%s]: %s\n", path_.c_str(), line);
  }

 private:
  const std::string path_;
};

}  // namespace

// A value read by Get. The slice may pin an entry of the blob cache, which is kept alive with
// it, so the bytes stay valid after the tier is closed. Members are released bottom-up.
struct RocksTier::PinnedValue {
  std::shared_ptr<rocksdb::Cache> blob_cache;
  rocksdb::PinnableSlice slice;
};

std::string_view SyncPolicyName(SyncPolicy policy) {
  switch (policy) {
    case SyncPolicy::kPerWrite:
      return "per-write";
    case SyncPolicy::kGroupCommit:
      return "group-commit";
    case SyncPolicy::kNone:
      return "none";
  }
  return "unknown";
}

absl::StatusOr<SyncPolicy> ParseSyncPolicy(std::string_view name) {
  if (name == "per-write") return SyncPolicy::kPerWrite;
  if (name == "group-commit") return SyncPolicy::kGroupCommit;
  if (name == "none") return SyncPolicy::kNone;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown sync policy '", AbslView(name), "' (want per-write, group-commit or none)"));
}

absl::Status RocksTierOptions::Validate() const {
  if (path.empty()) return absl::InvalidArgumentError("RocksTierOptions.path is empty");
  if (sync != SyncPolicy::kPerWrite && sync != SyncPolicy::kGroupCommit &&
      sync != SyncPolicy::kNone) {
    return absl::InvalidArgumentError("RocksTierOptions.sync is not a known policy");
  }
  if (min_blob_bytes == 0) return absl::InvalidArgumentError("RocksTierOptions.min_blob_bytes is 0");
  if (blob_file_bytes < (1 << 20)) {
    return absl::InvalidArgumentError("RocksTierOptions.blob_file_bytes is below 1 MiB");
  }
  if (!(blob_gc_age_cutoff >= 0 && blob_gc_age_cutoff <= 1)) {
    return absl::InvalidArgumentError("RocksTierOptions.blob_gc_age_cutoff is outside [0, 1]");
  }
  if (write_buffer_bytes < (1 << 20)) {
    return absl::InvalidArgumentError("RocksTierOptions.write_buffer_bytes is below 1 MiB");
  }
  if (max_background_jobs < 1) {
    return absl::InvalidArgumentError("RocksTierOptions.max_background_jobs is below 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RocksTier>> RocksTier::Open(const RocksTierOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (absl::Status s = PrepareDir(options); !s.ok()) return s;
  if (absl::Status s = CheckFormatMarker(options); !s.ok()) return s;
  std::unique_ptr<RocksTier> tier(new RocksTier(options));
  if (absl::Status s = tier->OpenDb(); !s.ok()) return s;
  return tier;
}

absl::Status RocksTier::OpenDb() {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  // RocksDB's default. A full disk then fails writes at once with NoSpace instead of stalling
  // them forever. Cost: a corrupt SST block met by a compaction stops writes (DATA_LOSS naming
  // the file) until the dir is rebuilt; reads stay correct either way.
  db_options.paranoid_checks = true;
  db_options.info_log = std::make_shared<StderrLogger>(options_.path);
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.max_background_jobs = options_.max_background_jobs;
  // A SIGKILL can leave a torn last WAL record: recover the consistent prefix.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  if (options_.env != nullptr) db_options.env = options_.env;
  // Tickers only (no histograms or timers): a few per-core atomic adds per operation.
  statistics_ = rocksdb::CreateDBStatistics();
  statistics_->set_stats_level(rocksdb::StatsLevel::kExceptHistogramOrTimers);
  db_options.statistics = statistics_;

  auto cf = std::make_shared<rocksdb::ColumnFamilyOptions>();
  cf->enable_blob_files = true;
  cf->min_blob_size = options_.min_blob_bytes;
  cf->blob_file_size = options_.blob_file_bytes;
  cf->blob_compression_type = rocksdb::kNoCompression;  // KV values do not compress
  cf->compression = rocksdb::kNoCompression;
  cf->enable_blob_garbage_collection = options_.blob_garbage_collection;
  cf->blob_garbage_collection_age_cutoff = options_.blob_gc_age_cutoff;
  cf->write_buffer_size = options_.write_buffer_bytes;
  if (options_.blob_cache_bytes > 0) {
    // Each shard must hold several payloads of tens of MiB: an entry larger than its shard is
    // dropped as soon as it is released, so RocksDB's default of 64 shards would cache nothing.
    int shard_bits = 0;
    while (shard_bits < 4 &&
           (options_.blob_cache_bytes >> (shard_bits + 1)) >= (uint64_t{64} << 20)) {
      ++shard_bits;
    }
    blob_cache_ = rocksdb::NewLRUCache(options_.blob_cache_bytes, shard_bits);
    cf->blob_cache = blob_cache_;
    // A block just written is the likeliest to be read next (a worker encodes, then fetches).
    cf->prepopulate_blob_cache = rocksdb::PrepopulateBlobCache::kFlushOnly;
  }
  rocksdb::BlockBasedTableOptions table;
  block_cache_ = rocksdb::NewLRUCache(options_.block_cache_bytes);
  table.block_cache = block_cache_;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  cf->table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  cf_options_ = cf;

  std::vector<std::string> names;
  rocksdb::Status listed = rocksdb::DB::ListColumnFamilies(db_options, options_.path, &names);
  if (!listed.ok()) names = {rocksdb::kDefaultColumnFamilyName};  // a new database
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) descriptors.emplace_back(name, *cf);
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options_.path, descriptors, &handles, &db_);
  if (!s.ok()) return FromRocks(s, absl::StrCat("opening RocksDB in ", options_.path));

  internal::MutexLock lock(&cf_mu_);
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    if (name == rocksdb::kDefaultColumnFamilyName) {
      default_cf_ = handles[i];
      continue;
    }
    absl::StatusOr<Hash128> model =
        absl::StartsWith(name, AbslView(internal::kModelCfPrefix))
            ? Hash128::FromHex(name.substr(internal::kModelCfPrefix.size()))
            : absl::InvalidArgumentError("not a model column family");
    if (!model.ok()) {
      db_->DestroyColumnFamilyHandle(handles[i]);  // not ours: left alone
      continue;
    }
    auto state = std::make_unique<ModelCf>();
    state->model = *model;
    state->handle = handles[i];
    cfs_[*model] = std::move(state);
  }
  for (auto& [model, cf] : cfs_) {
    if (absl::Status c = CountBlocks(*cf); !c.ok()) return c;
  }
  return absl::OkStatus();
}

absl::Status RocksTier::CountBlocks(ModelCf& cf) {
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf.handle));
  const std::string first(1, kMetaRecord);
  uint64_t blocks = 0, bytes = 0;
  for (it->Seek(first); it->Valid() && it->key().starts_with(first); it->Next()) {
    ++blocks;
    absl::StatusOr<BlockHeader> h = DecodeHeader(
        absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(it->value().data()),
                                  it->value().size()));
    bytes += kRecordOverheadBytes + (h.ok() ? kBlockHeaderBytes + h->data_bytes : 0);
  }
  // A corrupt SST block ends the scan early: the counts are then a lower bound, and the
  // corrupt records surface (and are dropped) when read. Other errors fail the open.
  if (!it->status().ok() && !it->status().IsCorruption()) {
    return FromRocks(it->status(), absl::StrCat("counting blocks in ", options_.path));
  }
  cf.blocks = blocks;
  cf.bytes = bytes;
  return absl::OkStatus();
}

RocksTier::~RocksTier() {
  if (db_ == nullptr) return;
  {
    internal::MutexLock lock(&cf_mu_);
    for (auto& [model, cf] : cfs_) db_->DestroyColumnFamilyHandle(cf->handle);
    cfs_.clear();
  }
  if (default_cf_ != nullptr) db_->DestroyColumnFamilyHandle(default_cf_);
  db_->Close();
  delete db_;
}

RocksTier::ModelCf* RocksTier::FindCf(const ModelFingerprint& model) {
  auto it = cfs_.find(model);
  return it == cfs_.end() ? nullptr : it->second.get();
}

absl::Status RocksTier::GroupSync() {
  // Leader/follower: whoever finds no fsync running syncs for everyone who wrote before it.
  sync_mu_.Lock();
  internal::TsanAcquire(&sync_mu_);
  const uint64_t mine = ++written_ticket_;
  absl::Status result;
  while (synced_ticket_ < mine) {
    if (syncing_) {
      internal::TsanRelease(&sync_mu_);
      sync_cv_.Wait(&sync_mu_);
      internal::TsanAcquire(&sync_mu_);
      continue;
    }
    syncing_ = true;
    const uint64_t target = written_ticket_;
    internal::TsanRelease(&sync_mu_);
    sync_mu_.Unlock();
    rocksdb::Status s = db_->SyncWAL();
    sync_mu_.Lock();
    internal::TsanAcquire(&sync_mu_);
    syncing_ = false;
    sync_cv_.SignalAll();
    if (!s.ok()) {
      result = FromRocks(s, "syncing the WAL");
      break;
    }
    synced_ticket_ = std::max(synced_ticket_, target);
  }
  internal::TsanRelease(&sync_mu_);
  sync_mu_.Unlock();
  return result;
}

absl::Status RocksTier::Commit(void* write_batch) {
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync == SyncPolicy::kPerWrite;
#ifdef KVBLOCK_TSAN
  // RocksDB's write-group leader reads the other writers' batches and hands them back through
  // uninstrumented atomics; TSan builds write one batch at a time so that handoff is visible.
  internal::MutexLock tsan_lock(&tsan_write_mu_);
#endif
  rocksdb::Status s = db_->Write(wo, static_cast<rocksdb::WriteBatch*>(write_batch));
  if (!s.ok()) return FromRocks(s, absl::StrCat("writing to ", options_.path));
  if (options_.sync == SyncPolicy::kGroupCommit) return GroupSync();
  return absl::OkStatus();
}

absl::Status RocksTier::Put(const BlockKey& key, absl::Span<const uint8_t> payload) {
  absl::StatusOr<BlockView> view = BlockView::Parse(payload);
  if (!view.ok()) return view.status();
  const BlockMeta& meta = view->meta();
  if (meta.key != key) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Put: payload header names block ", meta.key.ToHex(), " but the key is ", key.ToHex()));
  }
  // Find or create the model's column family, then write under a shared hold of cf_mu_.
  for (int attempt = 0; attempt < 3; ++attempt) {
    {
      internal::ReaderMutexLock cf_lock(&cf_mu_);
      if (ModelCf* cf = FindCf(meta.model); cf != nullptr) {
        const std::string mkey = RecordKey(kMetaRecord, key);
        const rocksdb::Slice header(reinterpret_cast<const char*>(payload.data()),
                                    kBlockHeaderBytes);
        const rocksdb::Slice data(reinterpret_cast<const char*>(payload.data()), payload.size());
        internal::MutexLock key_lock(&Stripe(key));
        std::string existing;
        rocksdb::Status found = db_->Get(rocksdb::ReadOptions(), cf->handle, mkey, &existing);
        if (found.ok()) return absl::OkStatus();  // present: no-op
        rocksdb::WriteBatch batch;
        batch.Put(cf->handle, mkey, header);
        batch.Put(cf->handle, RecordKey(kDataRecord, key), data);
        if (absl::Status s = Commit(&batch); !s.ok()) return s;
        if (!found.IsCorruption()) {  // a corrupt 'm' record was already counted
          cf->blocks.fetch_add(1, std::memory_order_relaxed);
          cf->bytes.fetch_add(payload.size() + kRecordOverheadBytes, std::memory_order_relaxed);
        }
        inserts_.fetch_add(1, std::memory_order_relaxed);
        return absl::OkStatus();
      }
    }
    internal::MutexLock cf_lock(&cf_mu_);
    if (FindCf(meta.model) != nullptr) continue;
    rocksdb::ColumnFamilyHandle* handle = nullptr;
    rocksdb::Status s = db_->CreateColumnFamily(
        *static_cast<rocksdb::ColumnFamilyOptions*>(cf_options_.get()),
        internal::ModelCfName(meta.model), &handle);
    if (!s.ok()) return FromRocks(s, "creating the model's column family");
    auto state = std::make_unique<ModelCf>();
    state->model = meta.model;
    state->handle = handle;
    cfs_[meta.model] = std::move(state);
  }
  return absl::AbortedError("Put: the model's column family was dropped repeatedly meanwhile");
}

void RocksTier::DropCorrupt(ModelCf& cf, const BlockKey& key) {
  internal::MutexLock key_lock(&Stripe(key));
  const std::string mkey = RecordKey(kMetaRecord, key);
  std::string meta;
  rocksdb::Status found = db_->Get(rocksdb::ReadOptions(), cf.handle, mkey, &meta);
  if (found.IsNotFound()) return;  // another reader already dropped it
  rocksdb::WriteBatch batch;
  batch.Delete(cf.handle, mkey);
  batch.Delete(cf.handle, RecordKey(kDataRecord, key));
  // Best effort: if the delete fails the record stays, and every read still refuses it.
  if (Commit(&batch).ok()) {
    cf.blocks.fetch_sub(1, std::memory_order_relaxed);
    uint64_t size = kRecordOverheadBytes;
    absl::StatusOr<BlockHeader> h = DecodeHeader(absl::Span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(meta.data()), meta.size()));
    if (found.ok() && h.ok()) size += kBlockHeaderBytes + h->data_bytes;
    cf.bytes.fetch_sub(std::min<uint64_t>(size, cf.bytes.load()), std::memory_order_relaxed);
  }
  corrupt_.fetch_add(1, std::memory_order_relaxed);
}

absl::StatusOr<BlockBytes> RocksTier::Get(const BlockKey& key) {
  internal::ReaderMutexLock cf_lock(&cf_mu_);
  const std::string dkey = RecordKey(kDataRecord, key);
  rocksdb::ReadOptions ro;
  // The payload's own XXH3 checksums (BlockView::Parse below, plus the key and model checks)
  // cover every byte returned, end to end. RocksDB's CRC32c over the same bytes runs in
  // software in Debian's build (no SSE4.2) and cost 4-5x Get throughput (docs/benchmarks.md);
  // a corrupt SST block or blob index still fails to decode or yields bytes that fail Parse.
  ro.verify_checksums = false;
  for (auto& [model, cf] : cfs_) {
    auto pinned = std::make_shared<PinnedValue>();
    pinned->blob_cache = blob_cache_;
    rocksdb::PinnableSlice* value = &pinned->slice;
    rocksdb::Status s = db_->Get(ro, cf->handle, dkey, value);
    if (s.IsNotFound()) continue;
    if (s.ok()) {
      absl::Span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(value->data()),
                                      value->size());
      absl::StatusOr<BlockView> view = BlockView::Parse(bytes);
      if (view.ok() && view->meta().key == key && view->meta().model == model) {
        hits_.fetch_add(1, std::memory_order_relaxed);
        return BlockBytes{bytes, std::move(pinned), StoreTier::kDisk};
      }
    } else if (!s.IsCorruption()) {
      return FromRocks(s, absl::StrCat("reading block ", key.ToHex()));
    }
    DropCorrupt(*cf, key);
    misses_.fetch_add(1, std::memory_order_relaxed);
    return absl::NotFoundError(absl::StrCat("block ", key.ToHex(),
                                            " was corrupt on disk; it was deleted"));
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  return absl::NotFoundError(absl::StrCat("block ", key.ToHex(), " is not on disk"));
}

void RocksTier::Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) {
  const size_t n = std::min(keys.size(), out.size());
  for (size_t i = 0; i < n; ++i) out[i] = LookupResult{};
  internal::ReaderMutexLock cf_lock(&cf_mu_);
  std::vector<std::string> mkeys;
  std::vector<size_t> index;
  for (auto& [model, cf] : cfs_) {
    mkeys.clear();
    index.clear();
    for (size_t i = 0; i < n; ++i) {
      if (!out[i].present) {
        mkeys.push_back(RecordKey(kMetaRecord, keys[i]));
        index.push_back(i);
      }
    }
    if (mkeys.empty()) break;
    std::vector<rocksdb::Slice> slices(mkeys.begin(), mkeys.end());
    std::vector<rocksdb::PinnableSlice> values(slices.size());
    std::vector<rocksdb::Status> statuses(slices.size());
    db_->MultiGet(rocksdb::ReadOptions(), cf->handle, slices.size(), slices.data(), values.data(),
                  statuses.data());
    for (size_t j = 0; j < slices.size(); ++j) {
      if (!statuses[j].ok()) continue;
      absl::StatusOr<BlockHeader> h = DecodeHeader(absl::Span<const uint8_t>(
          reinterpret_cast<const uint8_t*>(values[j].data()), values[j].size()));
      if (!h.ok() || h->meta.key != keys[index[j]]) continue;  // Get will drop it
      out[index[j]] = LookupResult{true, StoreTier::kDisk, kBlockHeaderBytes + h->data_bytes};
    }
  }
}

absl::Status RocksTier::Delete(const BlockKey& key) {
  internal::ReaderMutexLock cf_lock(&cf_mu_);
  const std::string mkey = RecordKey(kMetaRecord, key);
  internal::MutexLock key_lock(&Stripe(key));
  for (auto& [model, cf] : cfs_) {
    std::string meta;
    rocksdb::Status found = db_->Get(rocksdb::ReadOptions(), cf->handle, mkey, &meta);
    if (found.IsNotFound()) continue;
    rocksdb::WriteBatch batch;
    batch.Delete(cf->handle, mkey);
    batch.Delete(cf->handle, RecordKey(kDataRecord, key));
    if (absl::Status s = Commit(&batch); !s.ok()) return s;
    cf->blocks.fetch_sub(1, std::memory_order_relaxed);
    uint64_t size = kRecordOverheadBytes;
    absl::StatusOr<BlockHeader> h = DecodeHeader(absl::Span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(meta.data()), meta.size()));
    if (found.ok() && h.ok()) size += kBlockHeaderBytes + h->data_bytes;
    cf->bytes.fetch_sub(std::min<uint64_t>(size, cf->bytes.load()), std::memory_order_relaxed);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RocksTier::DeleteModel(const ModelFingerprint& model) {
  internal::MutexLock cf_lock(&cf_mu_);
  auto it = cfs_.find(model);
  if (it == cfs_.end()) return 0;
  ModelCf& cf = *it->second;
  rocksdb::Status s = db_->DropColumnFamily(cf.handle);
  if (!s.ok()) return FromRocks(s, absl::StrCat("dropping model ", model.ToHex()));
  const uint64_t blocks = cf.blocks.load();
  db_->DestroyColumnFamilyHandle(cf.handle);
  cfs_.erase(it);
  return blocks;
}

std::vector<TierStats> RocksTier::Stats() const {
  TierStats s;
  s.tier = StoreTier::kDisk;
  {
    internal::ReaderMutexLock lock(&cf_mu_);
    for (const auto& [model, cf] : cfs_) {
      s.blocks += cf->blocks.load(std::memory_order_relaxed);
      s.bytes += cf->bytes.load(std::memory_order_relaxed);
    }
  }
  s.hits = hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.inserts = inserts_.load(std::memory_order_relaxed);
  s.corrupt_records = corrupt_.load(std::memory_order_relaxed);
  s.engine = EngineStats();
  return {s};
}

std::vector<EngineStat> RocksTier::EngineStats() const {
  struct Ticker {
    rocksdb::Tickers ticker;
    const char* name;
    const char* help;
    double scale;
  };
  static constexpr Ticker kTickers[] = {
      {rocksdb::BLOCK_CACHE_HIT, "rocksdb_block_cache_hits_total",
       "RocksDB block cache hits (SST index, filter and record blocks).", 1},
      {rocksdb::BLOCK_CACHE_MISS, "rocksdb_block_cache_misses_total",
       "RocksDB block cache misses.", 1},
      {rocksdb::BLOB_DB_CACHE_HIT, "rocksdb_blob_cache_hits_total",
       "RocksDB blob cache hits (payloads served without reading a blob file).", 1},
      {rocksdb::BLOB_DB_CACHE_MISS, "rocksdb_blob_cache_misses_total",
       "RocksDB blob cache misses (payloads read from a blob file).", 1},
      {rocksdb::BYTES_WRITTEN, "rocksdb_written_bytes_total",
       "Bytes written to RocksDB by Put and Delete (keys and values).", 1},
      {rocksdb::BYTES_READ, "rocksdb_read_bytes_total",
       "Bytes returned by RocksDB point reads (values).", 1},
      {rocksdb::WAL_FILE_BYTES, "rocksdb_wal_written_bytes_total",
       "Bytes written to RocksDB's write-ahead log.", 1},
      {rocksdb::BLOB_DB_BLOB_FILE_BYTES_WRITTEN, "rocksdb_blob_file_written_bytes_total",
       "Bytes written to blob files (flushes and garbage collection).", 1},
      {rocksdb::BLOB_DB_BLOB_FILE_BYTES_READ, "rocksdb_blob_file_read_bytes_total",
       "Bytes read from blob files.", 1},
      {rocksdb::COMPACT_WRITE_BYTES, "rocksdb_compaction_written_bytes_total",
       "Bytes written by compactions.", 1},
      {rocksdb::STALL_MICROS, "rocksdb_stall_seconds_total",
       "Time writers spent stalled by RocksDB (memtable or compaction backlog), in seconds.",
       1e-6},
  };
  struct Property {
    const std::string& property;
    const char* name;
    const char* help;
  };
  const Property kProperties[] = {
      {rocksdb::DB::Properties::kEstimatePendingCompactionBytes,
       "rocksdb_compaction_pending_bytes",
       "Bytes RocksDB estimates compaction still has to rewrite."},
      {rocksdb::DB::Properties::kTotalSstFilesSize, "rocksdb_sst_files_bytes",
       "Bytes in SST files (all versions)."},
      {rocksdb::DB::Properties::kTotalBlobFileSize, "rocksdb_blob_files_bytes",
       "Bytes in blob files (all versions)."},
      {rocksdb::DB::Properties::kLiveBlobFileGarbageSize, "rocksdb_blob_files_garbage_bytes",
       "Bytes of deleted payloads in live blob files, not yet reclaimed."},
      {rocksdb::DB::Properties::kCurSizeAllMemTables, "rocksdb_memtables_bytes",
       "Bytes in memtables (active and immutable)."},
  };
  std::vector<EngineStat> out;
  for (const Ticker& t : kTickers) {
    out.push_back({t.name, t.help, true,
                   static_cast<double>(statistics_->getTickerCount(t.ticker)) * t.scale});
  }
  {
    internal::ReaderMutexLock lock(&cf_mu_);
    for (const Property& p : kProperties) {
      uint64_t sum = 0;
      for (const auto& [model, cf] : cfs_) {
        uint64_t v = 0;
        if (db_->GetIntProperty(cf->handle, p.property, &v)) sum += v;
      }
      out.push_back({p.name, p.help, false, static_cast<double>(sum)});
    }
  }
  out.push_back({"rocksdb_block_cache_usage_bytes", "Bytes held by RocksDB's block cache.", false,
                 static_cast<double>(block_cache_->GetUsage())});
  out.push_back({"rocksdb_blob_cache_usage_bytes", "Bytes held by RocksDB's blob cache.", false,
                 blob_cache_ ? static_cast<double>(blob_cache_->GetUsage()) : 0.0});
  return out;
}

absl::Status RocksTier::FlushMemtables() {
  internal::ReaderMutexLock lock(&cf_mu_);
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  for (auto& [model, cf] : cfs_) handles.push_back(cf->handle);
  if (handles.empty()) return absl::OkStatus();
  return FromRocks(db_->Flush(rocksdb::FlushOptions(), handles), "flushing memtables");
}

std::vector<ModelFingerprint> RocksTier::Models() const {
  internal::ReaderMutexLock lock(&cf_mu_);
  std::vector<ModelFingerprint> out;
  for (const auto& [model, cf] : cfs_) out.push_back(model);
  return out;
}

}  // namespace kvblock
