// CacheClient: the cluster client every worker, indexer and `kvblock cache-ctl` uses. It places
// block keys on the member list by rendezvous hashing with replication factor R, writes each block
// to R nodes, reads from the first healthy replica, fans batch Lookups out per node in parallel,
// and survives node failures: per-attempt deadlines, retries with jittered exponential backoff, a
// failing node is ejected and a background prober brings it back. It implements BlockStore (tier
// kRemote), so a worker stacks it under its own tiers.
//
// Data path: a node on the same host that offers the shared-memory data plane
// (shm_data_plane.h) is read through its mapped memory: Get() returns bytes pointing into the
// client's read-only mapping of the node's arena (zero copy; the node keeps them until the
// BlockBytes is gone), FetchInto() copies from there. Otherwise, and for blocks the node holds
// only outside its shared memory, FetchInto() reads into a caller-provided buffer over the UCX
// data plane when the node offers one (ucx_data_plane.h; concurrent calls spread over
// data_plane_lanes lanes per node), else over the gRPC Get stream; Get() does the same into a
// buffer of its own: over UCX one sized by a Lookup and taken from CacheClientOptions::buffers
// when that is set (a GPU worker's pool of pinned, reused host buffers: no page faults per read,
// and the copy to the device runs at the link rate), else a fresh vector; over gRPC a vector.
//
// Status codes: as the nodes return them (cache_service_core.h) for non-retriable errors;
// UNAVAILABLE when no replica could be reached within the attempts; NOT_FOUND when every
// reachable replica answered that the block is absent; DEADLINE_EXCEEDED from per-call deadlines.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "cache/block_store.h"
#include "cache/host_buffer_pool.h"
#include "kvblock/v1/cache.grpc.pb.h"
#include "services/host_region_listener.h"
#include "services/rendezvous.h"

namespace kvblock {

class ShmClient;
class UcxClient;

struct CacheClientOptions {
  // gRPC addresses (host:port) of the cluster's nodes; also their rendezvous names. Default: none.
  std::vector<std::string> members;
  // Replicas per block (count, <= members). Default: 2.
  uint32_t replication = 2;
  // Bearer token sent on every call; empty sends none. Default: "".
  std::string auth_token;
  // TLS: when true, channels use TLS with the PEM roots below (system roots if empty). Default: false.
  bool use_tls = false;
  // PEM of the CA that signed the nodes' certificates. Default: "".
  std::string tls_root_ca_pem;
  // PEM client certificate chain and key for mTLS; both or neither. Default: "".
  std::string tls_client_cert_pem;
  std::string tls_client_key_pem;
  // Deadline of one RPC attempt on one node. Default: 5 s.
  absl::Duration rpc_timeout = absl::Seconds(5);
  // Rounds over the replicas before giving up with UNAVAILABLE (count). Default: 3.
  uint32_t max_attempts = 3;
  // Backoff before the second round; doubles per round, jittered ±50 %. Default: 50 ms.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  // Cap of the backoff. Default: 500 ms.
  absl::Duration max_backoff = absl::Milliseconds(500);
  // How long a node that failed stays ejected before the first probe; doubles per failed probe.
  // Default: 200 ms.
  absl::Duration eject_duration = absl::Milliseconds(200);
  // Cap of the ejection time. Default: 10 s.
  absl::Duration max_eject_duration = absl::Seconds(10);
  // gRPC channels (TCP connections) per node, used round-robin (count). Default: 2.
  uint32_t channels_per_node = 2;
  // Put chunk size (bytes). Default: 1 MiB.
  uint32_t chunk_bytes = 1u << 20;
  // Keys per Lookup RPC; bigger batches are split (count). Default: 4096.
  uint32_t max_keys_per_call = 4096;
  // Nodes beyond the R replicas a read also asks before reporting a miss (count). Covers blocks
  // written while a replica was ejected (they went to the next node in rank). Default: 1.
  uint32_t read_extra_candidates = 1;
  // Replicas that must acknowledge a Put for it to succeed (count, 1..R). Default: 1.
  uint32_t min_write_replicas = 1;
  // Use the UCX data plane for FetchInto when a node offers one. Default: true.
  bool use_data_plane = true;
  // Data-plane lanes per node (UcxClientOptions::lanes: workers with their own progress thread
  // that concurrent FetchInto calls spread over; one OpenDataPlane per lane), 1..64.
  // Default: 8.
  uint32_t data_plane_lanes = 8;
  // Read through a node's shared memory when it offers it and its socket is reachable (the node
  // is on this host). Default: true.
  bool use_shared_memory = true;
  // Blocks read through shared memory come marked verified (BlockBytes::verified: the node's
  // memory tier checked them on Put and they never left this host's memory), so consumers skip
  // re-hashing them, as a memory tier's own reads do. True clears the mark. Default: false.
  bool verify_shared_memory = false;
  // Told when the client maps a node's shared region and before it unmaps it (borrowed,
  // nullable, must outlive the client and every BlockBytes it returned; called from client
  // threads). Default: none.
  HostRegionListener* region_listener = nullptr;
  // Where Get's reads over UCX land (borrowed, nullable, must outlive the client; the buffers
  // it hands out may outlive both, held by the returned BlockBytes). When its Take fails the
  // read lands in a vector instead (counted: buffer_fallbacks()). Reads over gRPC and through
  // shared memory do not use it. Default: none (a fresh vector per read).
  HostBufferSource* buffers = nullptr;

  absl::Status Validate() const;
};

// Where and how a key was found by LookupCluster.
struct ClusterLookupResult {
  bool present = false;
  v1::Tier tier = v1::TIER_NONE;  // the node's tier
  uint64_t payload_bytes = 0;
  int node = -1;  // index into options().members
};

class CacheClient final : public BlockStore {
 public:
  // Builds channels (connections are made lazily) and starts the prober. INVALID_ARGUMENT for
  // bad options.
  static absl::StatusOr<std::unique_ptr<CacheClient>> Create(CacheClientOptions options);
  ~CacheClient() override;

  const CacheClientOptions& options() const { return options_; }

  // BlockStore. Thread-safe. Put verifies the payload locally first (INVALID_ARGUMENT /
  // DATA_LOSS), then writes to R replicas in parallel (ejected or draining nodes are replaced by
  // the next ones in rank); OK when min_write_replicas acknowledged.
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override;
  // Zero copy from a node's shared memory when possible (the returned bytes point into the
  // mapping and pin the block on the node while held), else reads the whole payload into memory
  // owned by the returned BlockBytes: over UCX when the node has a session (a Lookup sizes the
  // buffer first; taken from options().buffers when set), else over gRPC. Its tier is kRemote
  // either way.
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override;
  // Present if any replica has it; tier kRemote.
  void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) override;
  // Deletes on every replica candidate (R + read_extra_candidates nodes).
  absl::Status Delete(const BlockKey& key) override;
  // Broadcast to every member; returns the sum dropped. UNAVAILABLE if a node was unreachable.
  absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) override;
  // Sums of the reachable nodes' memory and disk tiers.
  std::vector<TierStats> Stats() const override;

  // Reads the payload into `buffer` (the caller's, e.g. pinned and registered) and returns its
  // size: a copy from shared memory, else UCX when available, else gRPC. OUT_OF_RANGE if the buffer is smaller than the payload.
  // Thread-safe.
  absl::StatusOr<uint64_t> FetchInto(const BlockKey& key, absl::Span<uint8_t> buffer);
  // Lookup with the node and its tier per key; unanswered keys are absent. Thread-safe.
  std::vector<ClusterLookupResult> LookupCluster(absl::Span<const BlockKey> keys);
  // Every member's Stats, in member order (errors per node). Thread-safe.
  std::vector<absl::StatusOr<v1::StatsResponse>> NodeStats() const;
  // Drains (or undrains) one member by index. Thread-safe.
  absl::StatusOr<v1::DrainResponse> DrainNode(size_t node, bool undrain);
  // Node ranking for a key (indices into members), best first; for tests and tools.
  std::vector<uint32_t> Rank(const BlockKey& key) const { return ring_.Rank(key); }
  // Whether a node is currently ejected (for tests and tools).
  bool IsEjected(size_t node) const;
  // Whether a node's data plane session is open (UCX).
  bool HasDataPlane(size_t node) const;
  // Whether a node's shared-memory session is open and healthy.
  bool HasSharedMemory(size_t node) const;
  // Get reads over UCX that landed in a vector because options().buffers could not serve them
  // (monotonic). Thread-safe.
  uint64_t buffer_fallbacks() const { return buffer_fallbacks_.load(std::memory_order_relaxed); }

 private:
  struct Node;
  explicit CacheClient(CacheClientOptions options);
  absl::Status Init();

  v1::CacheService::Stub* StubFor(Node& node) const;
  void PrepareContext(grpc::ClientContext* ctx, absl::Time deadline) const;
  // Outcome bookkeeping: node failures (UNAVAILABLE, DEADLINE_EXCEEDED) eject the node.
  void RecordResult(size_t node, const absl::Status& status) const;
  bool Usable(size_t node, bool for_write) const;
  // Ranked candidates for a key: usable nodes first in rank order, then ejected ones.
  std::vector<uint32_t> Candidates(const BlockKey& key, bool for_write) const;
  absl::Duration Backoff(uint32_t attempt) const;

  absl::Status PutOnNode(size_t node, const BlockKey& key, absl::Span<const uint8_t> payload);
  // Get's read from one node that is not read through shared memory: over UCX into a buffer
  // sized by a Lookup (TakeBuffer) when the node has a session, else the gRPC stream into a
  // vector. On success `out` holds the bytes and their owner.
  absl::StatusOr<uint64_t> GetOverDataPlane(size_t node, const BlockKey& key, BlockBytes& out);
  // A buffer of `bytes` bytes for a Get over UCX: from options_.buffers, else a vector.
  HostBuffer TakeBuffer(uint64_t bytes);
  // Reads into `buffer` (or, when `grow` is set, into *grow resized to fit).
  absl::StatusOr<uint64_t> GetOnNode(size_t node, const BlockKey& key, absl::Span<uint8_t> buffer,
                                     std::vector<uint8_t>* grow);
  // Shared read loop: calls `read(node)` over the candidates until one succeeds.
  template <typename Fn>
  absl::StatusOr<uint64_t> ReadFromReplicas(const BlockKey& key, Fn&& read);
  absl::StatusOr<std::vector<v1::LookupResult>> LookupOnNode(size_t node,
                                                             absl::Span<const BlockKey> keys);
  // The node's block through its shared memory: nullopt when there is no usable session or the
  // node answered "not local" or refused a lease (read another way); NOT_FOUND is the node's
  // answer. A broken session is dropped (the prober opens a new one).
  std::optional<absl::StatusOr<BlockBytes>> AcquireLocal(size_t node, const BlockKey& key);
  // Connects to the node's shared-memory socket named in an OpenDataPlane answer.
  void ConnectSharedMemory(Node& node, const v1::OpenDataPlaneResponse& response);
  // Opens the missing UCX and shared-memory sessions.
  void OpenDataPlanes();
  void ProbeLoop();

  const CacheClientOptions options_;
  RendezvousHash ring_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unique_ptr<UcxClient> ucx_;
  std::atomic<uint64_t> buffer_fallbacks_{0};
  absl::Notification stop_;
  std::thread prober_;
};

// True for the codes that mean "this node did not answer" (as opposed to a request error).
bool IsNodeFailure(const absl::Status& status);

}  // namespace kvblock
