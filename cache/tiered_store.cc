#include "cache/tiered_store.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "cache/internal/tsan_mutex.h"
#include "cache/block_payload.h"

namespace kvblock {

absl::Status TieredStoreOptions::Validate() const {
  if (absl::Status s = memory.Validate(); !s.ok()) return s;
  if (absl::Status s = rocks.Validate(); !s.ok()) return s;
  if (write_policy != WritePolicy::kWriteThrough && write_policy != WritePolicy::kWriteBack) {
    return absl::InvalidArgumentError("TieredStoreOptions.write_policy is not a known policy");
  }
  if (write_back_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("TieredStoreOptions.write_back_interval must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Open(const TieredStoreOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<TieredStore> store(new TieredStore(options));
  absl::StatusOr<std::unique_ptr<RocksTier>> rocks = RocksTier::Open(options.rocks);
  if (!rocks.ok()) return rocks.status();
  store->rocks_ = *std::move(rocks);
  absl::StatusOr<std::unique_ptr<MemoryTier>> memory = MemoryTier::Create(options.memory);
  if (!memory.ok()) return memory.status();
  store->memory_ = *std::move(memory);
  if (options.write_policy == WritePolicy::kWriteBack) {
    TieredStore* self = store.get();
    store->memory_->SetEvictionListener(
        [self](const BlockKey& key, const BlockBytes&) { self->OnEvicted(key); });
    store->flusher_ = std::thread([self] { self->FlusherLoop(); });
  }
  return store;
}

TieredStore::~TieredStore() {
  if (flusher_.joinable()) {
    {
      internal::MutexLock lock(&dirty_mu_);
      stop_ = true;
      flush_cv_.Signal();
    }
    flusher_.join();
  }
  if (rocks_ != nullptr) Flush().IgnoreError();  // errors: nothing left to report them to
}

void TieredStore::OnEvicted(const BlockKey& key) {
  internal::MutexLock lock(&dirty_mu_);
  if (dirty_.contains(key)) {
    evicted_dirty_ = true;
    flush_cv_.Signal();
  }
}

void TieredStore::FlusherLoop() {
  while (true) {
    {
      internal::MutexLock lock(&dirty_mu_);
      // Waits on a CondVar (not Mutex::Await) so the condition is read by this thread only.
      const absl::Time deadline = absl::Now() + options_.write_back_interval;
      while (!stop_ && !evicted_dirty_) {
        internal::TsanRelease(&dirty_mu_);
        const bool timed_out = flush_cv_.WaitWithDeadline(&dirty_mu_, deadline);
        internal::TsanAcquire(&dirty_mu_);
        if (timed_out) break;
      }
      if (stop_) return;
      evicted_dirty_ = false;
    }
    Flush().IgnoreError();  // a failed block stays dirty and is retried next round
  }
}

absl::Status TieredStore::FlushOne(const BlockKey& key) {
  internal::MutexLock key_lock(&Stripe(key));
  BlockBytes bytes;
  {
    internal::MutexLock lock(&dirty_mu_);
    auto it = dirty_.find(key);
    if (it == dirty_.end()) return absl::OkStatus();  // deleted or flushed meanwhile
    bytes = it->second;
  }
  if (absl::Status s = rocks_->Put(key, bytes.bytes); !s.ok()) return s;
  internal::MutexLock lock(&dirty_mu_);
  dirty_.erase(key);
  return absl::OkStatus();
}

absl::Status TieredStore::Flush() {
  std::vector<BlockKey> keys;
  {
    internal::MutexLock lock(&dirty_mu_);
    keys.reserve(dirty_.size());
    for (const auto& [key, bytes] : dirty_) keys.push_back(key);
  }
  absl::Status first_error;
  for (const BlockKey& key : keys) {
    absl::Status s = FlushOne(key);
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  return first_error;
}

size_t TieredStore::dirty_blocks() const {
  internal::MutexLock lock(&dirty_mu_);
  return dirty_.size();
}

absl::Status TieredStore::Put(const BlockKey& key, absl::Span<const uint8_t> payload) {
  absl::StatusOr<BlockView> view = BlockView::Parse(payload);
  if (!view.ok()) return view.status();
  if (view->meta().key != key) {
    return absl::InvalidArgumentError(absl::StrCat("Put: payload header names block ",
                                                   view->meta().key.ToHex(),
                                                   " but the key is ", key.ToHex()));
  }
  internal::MutexLock key_lock(&Stripe(key));
  if (options_.write_policy == WritePolicy::kWriteThrough) {
    if (absl::Status s = rocks_->Put(key, payload); !s.ok()) return s;
    memory_->Put(key, payload).IgnoreError();  // best effort: the block is durable already
    return absl::OkStatus();
  }
  // Write-back: present anywhere is a no-op.
  LookupResult where;
  memory_->Lookup({&key, 1}, {&where, 1});
  if (!where.present) rocks_->Lookup({&key, 1}, {&where, 1});
  if (where.present) return absl::OkStatus();
  absl::StatusOr<BlockBytes> stored = memory_->Insert(key, payload);
  if (!stored.ok()) return rocks_->Put(key, payload);  // no room in memory: write through
  internal::MutexLock lock(&dirty_mu_);
  dirty_.emplace(key, *std::move(stored));
  return absl::OkStatus();
}

absl::StatusOr<BlockBytes> TieredStore::Get(const BlockKey& key) {
  absl::StatusOr<BlockBytes> hit = memory_->Get(key);
  if (hit.ok()) return hit;
  internal::ReaderMutexLock key_lock(&Stripe(key));
  {
    internal::MutexLock lock(&dirty_mu_);
    auto it = dirty_.find(key);
    if (it != dirty_.end()) return it->second;
  }
  absl::StatusOr<BlockBytes> disk = rocks_->Get(key);
  if (!disk.ok()) return disk.status();
  // Promote: a concurrent Delete waits for our shared stripe hold, so it cannot be undone.
  absl::StatusOr<BlockBytes> promoted = memory_->Insert(key, disk->bytes);
  if (!promoted.ok()) return disk;
  promoted->tier = StoreTier::kDisk;  // this read was answered by the disk
  return promoted;
}

void TieredStore::Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) {
  const size_t n = std::min(keys.size(), out.size());
  memory_->Lookup(keys.first(n), out.first(n));
  std::vector<BlockKey> missing;
  std::vector<size_t> index;
  for (size_t i = 0; i < n; ++i) {
    if (out[i].present) continue;
    if (options_.write_policy == WritePolicy::kWriteBack) {
      internal::MutexLock lock(&dirty_mu_);
      auto it = dirty_.find(keys[i]);
      if (it != dirty_.end()) {
        out[i] = LookupResult{true, StoreTier::kMemory, it->second.bytes.size()};
        continue;
      }
    }
    missing.push_back(keys[i]);
    index.push_back(i);
  }
  if (missing.empty()) return;
  std::vector<LookupResult> disk(missing.size());
  rocks_->Lookup(missing, absl::MakeSpan(disk));
  for (size_t j = 0; j < missing.size(); ++j) out[index[j]] = disk[j];
}

absl::Status TieredStore::Delete(const BlockKey& key) {
  internal::MutexLock key_lock(&Stripe(key));
  {
    internal::MutexLock lock(&dirty_mu_);
    dirty_.erase(key);
  }
  if (absl::Status s = memory_->Delete(key); !s.ok()) return s;
  return rocks_->Delete(key);
}

absl::StatusOr<uint64_t> TieredStore::DeleteModel(const ModelFingerprint& model) {
  {
    internal::MutexLock lock(&dirty_mu_);
    for (auto it = dirty_.begin(); it != dirty_.end();) {
      absl::StatusOr<BlockHeader> h = DecodeHeader(it->second.bytes);
      if (h.ok() && h->meta.model == model) {
        dirty_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  absl::StatusOr<uint64_t> in_memory = memory_->DeleteModel(model);
  if (!in_memory.ok()) return in_memory.status();
  absl::StatusOr<uint64_t> on_disk = rocks_->DeleteModel(model);
  if (!on_disk.ok()) return on_disk.status();
  return std::max(*in_memory, *on_disk);
}

std::vector<TierStats> TieredStore::Stats() const {
  std::vector<TierStats> out = memory_->Stats();
  std::vector<TierStats> disk = rocks_->Stats();
  out.insert(out.end(), disk.begin(), disk.end());
  return out;
}

absl::StatusOr<std::unique_ptr<BlockStore>> OpenEmbeddedStore(const std::string& dir,
                                                              uint64_t memory_bytes) {
  TieredStoreOptions options;
  options.memory.capacity_bytes = memory_bytes;
  options.memory.num_shards = 8;
  options.rocks.path = dir;
  options.rocks.create_if_missing = true;
  options.rocks.sync = SyncPolicy::kGroupCommit;
  options.write_policy = WritePolicy::kWriteThrough;
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Open(options);
  if (!store.ok()) return store.status();
  return std::unique_ptr<BlockStore>(*std::move(store));
}

}  // namespace kvblock
