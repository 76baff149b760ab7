// What `kvblock index`, `kvblock worker` and `kvblock demo` open before they run: the model
// (LoadModel), its tokenizer, the block store (an embedded store in a directory, or the cluster
// through CacheClient behind a worker-local memory tier) and the Engine over them. Also
// LayeredStore, the worker's store: a local BlockStore in front of a remote one, with misses
// written to the remote one in the background so an answer never waits for the cluster.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cache/block_store.h"
#include "cache/host_buffer_pool.h"
#include "services/cache_client.h"
#include "worker/engine/backend_factory.h"
#include "worker/service/background_queue.h"
#include "worker/engine/engine.h"
#include "worker/model/model.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {

struct LayeredStoreOptions {
  // Remote Puts queued at most (blocks); beyond it a write-back is dropped and counted.
  // Default: 1024.
  size_t max_pending_writes = 1024;
  // Write misses back to the remote store at all. Default: true.
  bool write_back = true;
  // Remote hits queued for their copy into the local store (blocks; each keeps its bytes, e.g.
  // a pinned receive buffer, until copied); beyond it a hit is not copied. Default: 64.
  size_t max_pending_promotions = 64;

  absl::Status Validate() const;
};

// Reads: local, then remote (a remote hit is copied into local in the background, so the
// answer never waits for that copy, unless it lies in this host's memory already:
// BlockBytes::verified, the same-host shared-memory path). Writes: local now, remote in the
// background (Put returns without waiting for it). Lookup: local, then remote for the keys local
// lacks. Thread-safe; owns neither store (both must outlive it).
class LayeredStore final : public BlockStore {
 public:
  LayeredStore(BlockStore* local, BlockStore* remote, LayeredStoreOptions options = {});
  // Waits for queued remote writes and local copies to finish.
  ~LayeredStore() override;

  // Local Put errors pass through; remote errors are counted (remote_write_errors()).
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override;
  // NOT_FOUND when neither has it; a remote error other than NOT_FOUND passes through.
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override;
  void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) override;
  absl::Status Delete(const BlockKey& key) override;
  absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) override;
  // Local tiers then remote tiers.
  std::vector<TierStats> Stats() const override;

  // Blocks until every queued remote write and local copy of a remote hit has been attempted.
  void WaitForWriteBacks();
  int64_t remote_writes() const;
  int64_t remote_write_errors() const;
  int64_t dropped_writes() const;
  // Remote hits not copied into the local store because max_pending_promotions were queued.
  int64_t skipped_promotions() const;

 private:
  BlockStore* local_;
  BlockStore* remote_;
  const LayeredStoreOptions options_;
  std::atomic<int64_t> remote_writes_{0}, remote_write_errors_{0}, dropped_writes_{0}, skipped_promotions_{0};
  // Declared last: their threads stop (finishing what is queued) before the rest goes.
  BackgroundQueue<std::pair<BlockKey, std::vector<uint8_t>>> writes_;  // to remote_
  BackgroundQueue<std::pair<BlockKey, BlockBytes>> promotions_;         // remote hits to local_
};

struct RuntimeOptions {
  // Hugging Face model directory. Required. Default: empty.
  std::string model_dir;
  // Explicit model id replacing the weight fingerprint. Default: empty.
  std::string model_id;
  // Embedded store directory (memory over RocksDB); used when `cluster` has no members.
  // Default: empty.
  std::string cache_dir;
  // Memory of the embedded store, or of the worker-local tier in front of the cluster (bytes).
  // Default: 256 MiB.
  uint64_t memory_bytes = uint64_t{256} << 20;
  // The cluster; members empty = embedded store. Default: no members.
  CacheClientOptions cluster;
  // Put the worker-local memory tier in front of the cluster. Default: true.
  bool local_tier = true;
  // KV dtype of the payloads. Default: f32.
  KvDtype kv_dtype = KvDtype::kF32;
  // Write missed blocks back. Default: true.
  bool write_back = true;
  // The compute backend. Default: cpu.
  BackendOptions backend;
  // Page-locked host memory that blocks read from the cluster over UCX land in, reused across
  // reads (bytes; CacheClientOptions::buffers, cuda::CreatePinnedBufferPool), when the backend is
  // cuda and the store is a cluster. 0 = off (each read lands in a fresh pageable vector).
  // Default: 4 GiB.
  uint64_t pinned_buffer_bytes = uint64_t{4} << 30;
  // Load the weights and build the backend and engine. False opens the model's config,
  // fingerprint and tokenizer and the store only (Runtime::engine stays null): an indexer whose
  // blocks a remote worker encodes. Default: true.
  bool load_engine = true;

  // INVALID_ARGUMENT when model_dir is empty or neither a cache_dir nor members are given.
  absl::Status Validate() const;
};

// The host regions a cache client maps (a co-located node's arena), handed to a backend
// (Backend::AddHostRegion): the target of the runtime's HostRegionRelay once the backend exists.
class BackendRegions final : public HostRegionListener {
 public:
  explicit BackendRegions(Backend* backend) : backend_(backend) {}
  void OnMapped(absl::Span<const uint8_t> region) override { backend_->AddHostRegion(region); }
  void OnUnmapping(absl::Span<const uint8_t> region) override { backend_->RemoveHostRegion(region); }

 private:
  Backend* backend_;
};

// Everything opened; members are destroyed in reverse order (engine before stores), the relay
// detached from the backend first.
struct Runtime {
  ~Runtime() { relay.Attach(nullptr); }
  HostRegionRelay relay;                    // outlives the cluster client, which tells it
  std::unique_ptr<HostBufferPool> buffers;  // pinned; the cluster client's Get buffers, or null
  std::unique_ptr<BackendRegions> backend_regions;  // the relay's target once the engine exists
  LoadedModel model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<BlockStore> embedded;     // the embedded store, or the worker-local tier
  std::unique_ptr<CacheClient> cluster;     // null for an embedded store
  std::unique_ptr<LayeredStore> layered;    // local tier over the cluster
  BlockStore* store = nullptr;              // what the engine uses
  std::unique_ptr<Engine> engine;           // null unless RuntimeOptions::load_engine
};

// Loads and opens everything. The model's and store's errors pass through (NOT_FOUND for a
// missing model, INVALID_ARGUMENT for bad options, UNAVAILABLE-free: an unreachable cluster
// is only detected on use; see CheckClusterReachable).
absl::StatusOr<std::unique_ptr<Runtime>> OpenRuntime(const RuntimeOptions& options);

// UNAVAILABLE naming the nodes when no cluster node answers Stats; OK otherwise.
absl::Status CheckClusterReachable(CacheClient& client);

}  // namespace kvblock
