#include "worker/service/runtime.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cache/memory_tier.h"
#include "cache/tiered_store.h"
#ifdef KVBLOCK_WITH_CUDA
#include "worker/engine/cuda/pinned_memory.h"
#endif

namespace kvblock {

absl::Status LayeredStoreOptions::Validate() const {
  if (max_pending_writes == 0) return absl::InvalidArgumentError("max_pending_writes must be > 0");
  if (max_pending_promotions == 0) return absl::InvalidArgumentError("max_pending_promotions must be > 0");
  return absl::OkStatus();
}

LayeredStore::LayeredStore(BlockStore* local, BlockStore* remote, LayeredStoreOptions options)
    : local_(local),
      remote_(remote),
      options_(options),
      writes_(options.max_pending_writes,
              [this](std::pair<BlockKey, std::vector<uint8_t>>& w) {
                const bool ok = remote_->Put(w.first, w.second).ok();
                ++remote_writes_;
                if (!ok) ++remote_write_errors_;
              }),
      promotions_(options.max_pending_promotions, [this](std::pair<BlockKey, BlockBytes>& p) {
        local_->Put(p.first, p.second.bytes).IgnoreError();  // best effort: a full tier keeps its blocks
      }) {}

LayeredStore::~LayeredStore() = default;

void LayeredStore::WaitForWriteBacks() {
  writes_.Wait();
  promotions_.Wait();
}

int64_t LayeredStore::remote_writes() const { return remote_writes_.load(); }
int64_t LayeredStore::remote_write_errors() const { return remote_write_errors_.load(); }
int64_t LayeredStore::dropped_writes() const { return dropped_writes_.load(); }
int64_t LayeredStore::skipped_promotions() const { return skipped_promotions_.load(); }

absl::Status LayeredStore::Put(const BlockKey& key, absl::Span<const uint8_t> payload) {
  absl::Status local = local_->Put(key, payload);
  if (!options_.write_back) return local;
  if (!writes_.Push({key, std::vector<uint8_t>(payload.begin(), payload.end())})) ++dropped_writes_;
  // A full local tier is not the request's problem: the block is still going to the remote.
  return local.code() == absl::StatusCode::kResourceExhausted ? absl::OkStatus() : local;
}

absl::StatusOr<BlockBytes> LayeredStore::Get(const BlockKey& key) {
  absl::StatusOr<BlockBytes> local = local_->Get(key);
  if (local.ok() || local.status().code() != absl::StatusCode::kNotFound) return local;
  absl::StatusOr<BlockBytes> remote = remote_->Get(key);
  // Best-effort promotion in the background, except for bytes read in place from this host's
  // memory (a co-located node's arena, BlockBytes::verified): a local copy would only duplicate
  // them.
  if (remote.ok() && !remote->verified && !promotions_.Push({key, *remote})) ++skipped_promotions_;
  return remote;
}

void LayeredStore::Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) {
  local_->Lookup(keys, out);
  std::vector<BlockKey> missing;
  std::vector<size_t> where;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!out[i].present) {
      missing.push_back(keys[i]);
      where.push_back(i);
    }
  }
  if (missing.empty()) return;
  std::vector<LookupResult> remote(missing.size());
  remote_->Lookup(missing, absl::MakeSpan(remote));
  for (size_t j = 0; j < missing.size(); ++j) out[where[j]] = remote[j];
}

absl::Status LayeredStore::Delete(const BlockKey& key) {
  absl::Status a = local_->Delete(key);
  absl::Status b = remote_->Delete(key);
  if (!a.ok() && a.code() != absl::StatusCode::kNotFound) return a;
  return b;
}

absl::StatusOr<uint64_t> LayeredStore::DeleteModel(const ModelFingerprint& model) {
  absl::StatusOr<uint64_t> a = local_->DeleteModel(model);
  if (!a.ok()) return a.status();
  return remote_->DeleteModel(model);
}

std::vector<TierStats> LayeredStore::Stats() const {
  std::vector<TierStats> out = local_->Stats();
  for (TierStats& s : remote_->Stats()) out.push_back(s);
  return out;
}

absl::Status RuntimeOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("a model directory is required");
  if (cache_dir.empty() && cluster.members.empty()) {
    return absl::InvalidArgumentError("give a cache directory or cluster members");
  }
  if (memory_bytes == 0) return absl::InvalidArgumentError("memory_bytes must be > 0");
  return backend.Validate();
}

namespace {

// The pinned pool for the cluster client's reads when the engine computes on the GPU (nothing
// otherwise, and nothing in a build without CUDA, where the cuda backend fails to open anyway).
absl::Status OpenPinnedBuffers(const RuntimeOptions& options, Runtime& rt) {
  if (!options.load_engine || options.backend.name != "cuda" || options.pinned_buffer_bytes == 0) {
    return absl::OkStatus();
  }
#ifdef KVBLOCK_WITH_CUDA
  HostBufferPoolOptions po;
  po.capacity_bytes = options.pinned_buffer_bytes;
  absl::StatusOr<std::unique_ptr<HostBufferPool>> pool = cuda::CreatePinnedBufferPool(po);
  if (!pool.ok()) return pool.status();
  rt.buffers = *std::move(pool);
#endif
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Runtime>> OpenRuntime(const RuntimeOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  auto rt = std::make_unique<Runtime>();
  ModelLoadOptions mo;
  mo.model_id = options.model_id;
  mo.load_weights = options.load_engine;
  absl::StatusOr<LoadedModel> model = LoadModel(options.model_dir, mo);
  if (!model.ok()) return model.status();
  rt->model = std::move(*model);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(options.model_dir);
  if (!tok.ok()) return tok.status();
  rt->tokenizer = std::move(*tok);

  MemoryTier* local_memory = nullptr;  // the worker-local tier in front of a cluster
  if (options.cluster.members.empty()) {
    absl::StatusOr<std::unique_ptr<BlockStore>> store =
        OpenEmbeddedStore(options.cache_dir, options.memory_bytes);
    if (!store.ok()) return store.status();
    rt->embedded = std::move(*store);
    rt->store = rt->embedded.get();
  } else {
    CacheClientOptions cluster = options.cluster;
    cluster.region_listener = &rt->relay;
    if (absl::Status s = OpenPinnedBuffers(options, *rt); !s.ok()) return s;
    cluster.buffers = rt->buffers.get();
    absl::StatusOr<std::unique_ptr<CacheClient>> client = CacheClient::Create(cluster);
    if (!client.ok()) return client.status();
    rt->cluster = std::move(*client);
    rt->store = rt->cluster.get();
    if (options.local_tier) {
      MemoryTierOptions mt;
      mt.capacity_bytes = options.memory_bytes;
      absl::StatusOr<std::unique_ptr<MemoryTier>> local = MemoryTier::Create(mt);
      if (!local.ok()) return local.status();
      local_memory = local->get();
      rt->embedded = std::move(*local);
      LayeredStoreOptions lo;
      lo.write_back = options.write_back;
      rt->layered = std::make_unique<LayeredStore>(rt->embedded.get(), rt->cluster.get(), lo);
      rt->store = rt->layered.get();
    }
  }
  if (!options.load_engine) return rt;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(rt->model, options.backend);
  if (!backend.ok()) return backend.status();
  Backend* placing = backend->get();  // owned by the engine from here on
  EngineOptions eo;
  eo.kv_dtype = options.kv_dtype;
  eo.write_back = options.write_back;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(std::move(*backend), rt->store, rt->model.fingerprint, eo);
  if (!engine.ok()) return engine.status();
  rt->engine = std::move(*engine);
  rt->backend_regions = std::make_unique<BackendRegions>(placing);
  rt->relay.Attach(rt->backend_regions.get());
  // Blocks read again from the worker-local tier go to the device from registered memory too
  // (the CUDA backend registers the arena chunk by chunk as copies first read it). The engine,
  // and with it the backend, goes before the tier.
  if (local_memory != nullptr) {
    local_memory->arena().ForEachRegion([&](void* base, size_t length) {
      placing->AddHostRegion({static_cast<const uint8_t*>(base), length});
    });
  }
  return rt;
}

absl::Status CheckClusterReachable(CacheClient& client) {
  std::vector<absl::StatusOr<v1::StatsResponse>> stats = client.NodeStats();
  std::vector<std::string> errors;
  for (size_t i = 0; i < stats.size(); ++i) {
    if (stats[i].ok()) return absl::OkStatus();
    errors.push_back(absl::StrCat(client.options().members[i], ": ", stats[i].status().message()));
  }
  return absl::UnavailableError(
      absl::StrCat("no cache node is reachable (", absl::StrJoin(errors, "; "), ")"));
}

}  // namespace kvblock
