#include "cache/memory_tier.h"

#include <cstring>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "cache/internal/tsan_mutex.h"
#include "cache/block_payload.h"

namespace kvblock {

// Shared by the tier and every live allocation, so BlockBytes outlive the tier safely.
struct MemoryTier::Core {
  std::shared_ptr<Arena> arena;
  uint64_t capacity = 0;
  std::atomic<uint64_t> used{0};  // sum of charges of live allocations

  bool TryCharge(uint64_t charge) {
    uint64_t cur = used.load(std::memory_order_relaxed);
    while (cur + charge <= capacity) {
      if (used.compare_exchange_weak(cur, cur + charge, std::memory_order_acq_rel)) return true;
    }
    return false;
  }
};

struct MemoryTier::Allocation {
  Allocation(std::shared_ptr<Core> c, uint8_t* d, uint64_t s, uint64_t ch)
      : core(std::move(c)), data(d), size(s), charge(ch) {}
  ~Allocation() {
    core->arena->Free(data, size);
    core->used.fetch_sub(charge, std::memory_order_acq_rel);
  }
  std::shared_ptr<Core> core;
  uint8_t* data;
  uint64_t size;
  uint64_t charge;
};

// Index slot + key/entry, policy node with its own index slot, allocation record and its
// shared_ptr control block.
const uint64_t MemoryTier::kBlockMetadataBytes =
    sizeof(std::pair<const BlockKey, Entry>) + 1 +  // flat_hash_map slot + control byte
    96 +                                            // policy list node + policy index slot
    sizeof(Allocation) + 32;                        // allocation + shared_ptr control block

absl::Status MemoryTierOptions::Validate() const {
  if (capacity_bytes == 0) {
    return absl::InvalidArgumentError("MemoryTierOptions.capacity_bytes is 0");
  }
  if (num_shards == 0 || num_shards > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("MemoryTierOptions.num_shards = ", num_shards, " is outside [1, 4096]"));
  }
  if (eviction != EvictionPolicyKind::kLru && eviction != EvictionPolicyKind::kS3Fifo) {
    return absl::InvalidArgumentError("MemoryTierOptions.eviction is not a known policy");
  }
  if (!(s3fifo.small_fraction > 0 && s3fifo.small_fraction < 1)) {
    return absl::InvalidArgumentError("MemoryTierOptions.s3fifo.small_fraction not in (0, 1)");
  }
  if (!(s3fifo.ghost_factor >= 0)) {
    return absl::InvalidArgumentError("MemoryTierOptions.s3fifo.ghost_factor is negative");
  }
  ArenaOptions arena;
  arena.capacity_bytes = capacity_bytes;
  arena.region_bytes = arena_region_bytes;
  arena.alignment = arena_alignment;
  if (absl::Status s = arena.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("MemoryTierOptions: ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MemoryTier>> MemoryTier::Create(const MemoryTierOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  ArenaOptions arena_options;
  arena_options.capacity_bytes = options.capacity_bytes;
  arena_options.region_bytes = options.arena_region_bytes;
  arena_options.alignment = options.arena_alignment;
  arena_options.shared = options.shared_arena;
  absl::StatusOr<std::shared_ptr<Arena>> arena = Arena::Create(arena_options);
  if (!arena.ok()) return arena.status();
  auto core = std::make_shared<Core>();
  core->arena = *std::move(arena);
  core->capacity = options.capacity_bytes;
  return std::unique_ptr<MemoryTier>(new MemoryTier(options, std::move(core)));
}

MemoryTier::MemoryTier(const MemoryTierOptions& options, std::shared_ptr<Core> core)
    : options_(options), core_(std::move(core)) {
  shards_.reserve(options.num_shards);
  for (uint32_t i = 0; i < options.num_shards; ++i) {
    auto shard = std::make_unique<Shard>();
    internal::MutexLock lock(&shard->mu);
    shard->policy = MakeEvictionPolicy(options.eviction, options.s3fifo);
    shards_.push_back(std::move(shard));
  }
}

MemoryTier::~MemoryTier() = default;

const Arena& MemoryTier::arena() const { return *core_->arena; }

uint64_t MemoryTier::ChargeFor(uint64_t payload_bytes) const {
  return core_->arena->RoundUp(payload_bytes) + kBlockMetadataBytes;
}

size_t MemoryTier::ShardIndex(const BlockKey& key) const {
  // The key is already a uniform hash; its low bits pick the shard.
  return static_cast<size_t>(key.lo % shards_.size());
}

BlockBytes MemoryTier::ToBytes(const std::shared_ptr<const Allocation>& alloc) {
  return BlockBytes{absl::Span<const uint8_t>(alloc->data, alloc->size),
                    std::shared_ptr<const void>(alloc, alloc->data), StoreTier::kMemory};
}

bool MemoryTier::EvictOne(size_t start_shard) {
  for (size_t i = 0; i < shards_.size(); ++i) {
    Shard& shard = *shards_[(start_shard + i) % shards_.size()];
    std::shared_ptr<const Allocation> victim_alloc;
    BlockKey victim;
    {
      internal::MutexLock lock(&shard.mu);
      std::optional<BlockKey> k = shard.policy->Evict();
      if (!k.has_value()) continue;
      victim = *k;
      auto it = shard.map.find(victim);
      victim_alloc = std::move(it->second.alloc);
      shard.map.erase(it);
    }
    blocks_.fetch_sub(1, std::memory_order_relaxed);
    evictions_.fetch_add(1, std::memory_order_relaxed);
    if (listener_) listener_(victim, ToBytes(victim_alloc));
    return true;  // victim_alloc released here unless a reader or the listener kept it
  }
  return false;
}

absl::StatusOr<std::shared_ptr<MemoryTier::Allocation>> MemoryTier::Reserve(uint64_t size,
                                                                            size_t start_shard) {
  const uint64_t charge = ChargeFor(size);
  if (charge > core_->capacity) {
    return absl::ResourceExhaustedError(absl::StrCat("memory tier: a block of ", size,
                                                     " bytes (charged ", charge,
                                                     ") exceeds the budget of ", core_->capacity));
  }
  // Each failed attempt evicts one block; concurrent Puts can refill, so the count is bounded.
  constexpr int kMaxAttempts = 1 << 20;
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    if (core_->TryCharge(charge)) {
      absl::StatusOr<uint8_t*> ptr = core_->arena->Allocate(size);
      if (ptr.ok()) return std::make_shared<Allocation>(core_, *ptr, size, charge);
      core_->used.fetch_sub(charge, std::memory_order_acq_rel);  // fragmented: evict and retry
    }
    if (!EvictOne(start_shard)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "memory tier: no room for ", size, " bytes: ",
          core_->used.load(std::memory_order_relaxed),
          " bytes of the budget are held by readers of evicted blocks (or fragmented)"));
    }
  }
  return absl::ResourceExhaustedError("memory tier: eviction did not make room (contention)");
}

absl::Status MemoryTier::Put(const BlockKey& key, absl::Span<const uint8_t> payload) {
  return Insert(key, payload).status();
}

absl::StatusOr<BlockBytes> MemoryTier::Insert(const BlockKey& key,
                                              absl::Span<const uint8_t> payload) {
  absl::StatusOr<BlockView> view = BlockView::Parse(payload);
  if (!view.ok()) return view.status();
  if (view->meta().key != key) {
    return absl::InvalidArgumentError(absl::StrCat("Put: payload header names block ",
                                                   view->meta().key.ToHex(),
                                                   " but the key is ", key.ToHex()));
  }
  const size_t shard_index = ShardIndex(key);
  Shard& shard = *shards_[shard_index];
  {
    internal::MutexLock lock(&shard.mu);
    auto it = shard.map.find(key);
    if (it != shard.map.end()) return ToBytes(it->second.alloc);
  }
  absl::StatusOr<std::shared_ptr<Allocation>> alloc = Reserve(payload.size(), shard_index);
  if (!alloc.ok()) return alloc.status();
  std::memcpy((*alloc)->data, payload.data(), payload.size());
  std::shared_ptr<const Allocation> stored = *std::move(alloc);
  internal::MutexLock lock(&shard.mu);
  auto [it, inserted] = shard.map.try_emplace(key, Entry{stored, view->meta().model});
  if (inserted) {
    shard.policy->Insert(key, stored->charge);
    blocks_.fetch_add(1, std::memory_order_relaxed);
    inserts_.fetch_add(1, std::memory_order_relaxed);
  }
  // A concurrent Put of the same key won: ours is released when `stored` goes.
  return ToBytes(it->second.alloc);
}

absl::StatusOr<BlockBytes> MemoryTier::Get(const BlockKey& key) {
  Shard& shard = *shards_[ShardIndex(key)];
  std::shared_ptr<const Allocation> alloc;
  {
    internal::MutexLock lock(&shard.mu);
    auto it = shard.map.find(key);
    if (it == shard.map.end()) {
      misses_.fetch_add(1, std::memory_order_relaxed);
      return absl::NotFoundError(absl::StrCat("block ", key.ToHex(), " is not in memory"));
    }
    shard.policy->Touch(key);
    alloc = it->second.alloc;
  }
  if (options_.verify_on_get) {
    absl::StatusOr<BlockView> view = BlockView::Parse({alloc->data, alloc->size});
    if (!view.ok() || view->meta().key != key) {
      {
        internal::MutexLock lock(&shard.mu);
        auto it = shard.map.find(key);
        if (it != shard.map.end() && it->second.alloc == alloc) {
          shard.map.erase(it);
          shard.policy->Erase(key);
          blocks_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      corrupt_.fetch_add(1, std::memory_order_relaxed);
      misses_.fetch_add(1, std::memory_order_relaxed);
      return absl::NotFoundError(absl::StrCat("block ", key.ToHex(),
                                              " was corrupt in memory and was dropped"));
    }
  }
  hits_.fetch_add(1, std::memory_order_relaxed);
  return ToBytes(alloc);
}

void MemoryTier::Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) {
  for (size_t i = 0; i < keys.size() && i < out.size(); ++i) {
    Shard& shard = *shards_[ShardIndex(keys[i])];
    internal::ReaderMutexLock lock(&shard.mu);
    auto it = shard.map.find(keys[i]);
    if (it == shard.map.end()) {
      out[i] = LookupResult{};
    } else {
      out[i] = LookupResult{true, StoreTier::kMemory, it->second.alloc->size};
    }
  }
}

absl::Status MemoryTier::Delete(const BlockKey& key) {
  Shard& shard = *shards_[ShardIndex(key)];
  std::shared_ptr<const Allocation> dropped;  // released after the lock
  internal::MutexLock lock(&shard.mu);
  auto it = shard.map.find(key);
  if (it == shard.map.end()) return absl::OkStatus();
  dropped = std::move(it->second.alloc);
  shard.map.erase(it);
  shard.policy->Erase(key);
  blocks_.fetch_sub(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> MemoryTier::DeleteModel(const ModelFingerprint& model) {
  uint64_t dropped = 0;
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    std::vector<std::shared_ptr<const Allocation>> released;
    internal::MutexLock lock(&shard.mu);
    for (auto it = shard.map.begin(); it != shard.map.end();) {
      if (it->second.model == model) {
        shard.policy->Erase(it->first);
        released.push_back(std::move(it->second.alloc));
        shard.map.erase(it++);
      } else {
        ++it;
      }
    }
    dropped += released.size();
    blocks_.fetch_sub(released.size(), std::memory_order_relaxed);
  }
  return dropped;
}

std::vector<TierStats> MemoryTier::Stats() const {
  TierStats s;
  s.tier = StoreTier::kMemory;
  s.blocks = blocks_.load(std::memory_order_relaxed);
  s.bytes = core_->used.load(std::memory_order_relaxed);
  s.capacity_bytes = core_->capacity;
  s.hits = hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.inserts = inserts_.load(std::memory_order_relaxed);
  s.evictions = evictions_.load(std::memory_order_relaxed);
  s.corrupt_records = corrupt_.load(std::memory_order_relaxed);
  return {s};
}

}  // namespace kvblock
