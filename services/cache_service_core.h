// CacheServiceCore: everything a cache node does for a kvblock.v1.CacheService call, without a
// network. The gRPC reactors (cache_grpc_service.h) only move messages between the wire and this
// class, so the request handling (auth, limits, Put assembly, chunked Get, drain) is tested and
// fuzzed directly (tests/services/cache_service_core_test.cc).
//
// Status codes (the gRPC status of each call, 1:1):
//  - UNAUTHENTICATED: missing or wrong bearer token (when the node has one).
//  - INVALID_ARGUMENT: malformed requests: missing key, too many keys per call, a Put stream that
//    does not start with its header or whose bytes do not match the header, a bad block header.
//  - RESOURCE_EXHAUSTED: a block larger than max_block_bytes, a chunk larger than
//    max_chunk_bytes, or more bytes in open Put streams than max_put_buffer_bytes.
//  - DATA_LOSS: payload checksum mismatch. NOT_FOUND: Get of an absent key.
//  - UNAVAILABLE: Put / OpenDataPlane on a draining node.
//  - FAILED_PRECONDITION: OpenDataPlane on a node without a data plane (neither UCX nor, when
//    asked for, shared memory).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/block_store.h"
#include "kvblock/v1/cache.pb.h"

namespace kvblock {

struct CacheServiceOptions {
  // Name reported by Stats. Default: "" (the server sets its listen address).
  std::string node_id;
  // Bearer token every call must present; empty disables authentication. Default: "".
  std::string auth_token;
  // Most keys in one Lookup or Delete call (count). Default: 4096.
  uint32_t max_keys_per_call = 4096;
  // Largest block payload accepted by Put, header included (bytes). Default: 64 MiB.
  uint64_t max_block_bytes = 64ull << 20;
  // Bytes all open Put streams may buffer together before new ones are refused (bytes).
  // Default: 1 GiB.
  uint64_t max_put_buffer_bytes = 1ull << 30;
  // Chunk size of Get streams when the request asks for 0 (bytes). Default: 1 MiB.
  uint32_t default_chunk_bytes = 1u << 20;
  // Largest chunk in either direction; Get requests asking for more get this (bytes).
  // Default: 4 MiB - 64 KiB (leaves room under gRPC's default 4 MiB message limit).
  uint32_t max_chunk_bytes = (4u << 20) - (64u << 10);

  // INVALID_ARGUMENT naming the field when a value is out of range.
  absl::Status Validate() const;
};

// Hands out data-plane sessions (the UCX server implements it). Thread-safe.
class DataPlaneSessions {
 public:
  virtual ~DataPlaneSessions() = default;
  // Registers a session for a client whose UCX worker address is given; returns the listener
  // address, a fresh session token and the in-flight limit.
  virtual absl::StatusOr<v1::OpenDataPlaneResponse> OpenSession(
      std::string_view client_worker_address) = 0;
};

// Hands out same-host shared-memory sessions (the shm server implements it). Thread-safe.
class LocalSessions {
 public:
  virtual ~LocalSessions() = default;
  // Fills shm_socket_path and a fresh one-use shm_token into `response`.
  virtual absl::Status OpenLocalSession(v1::OpenDataPlaneResponse* response) = 0;
};

// Receives one event per finished call and per byte flow (the server wires it to the metrics
// registry). Implementations must be thread-safe.
class CacheServiceObserver {
 public:
  virtual ~CacheServiceObserver() = default;
  virtual void OnCall(std::string_view method, absl::StatusCode code, absl::Duration latency) = 0;
  // plane: "grpc" | "ucx" | "shm"; direction: "in" | "out".
  virtual void OnBytes(std::string_view plane, std::string_view direction, uint64_t bytes) = 0;
  // The store's answer to a client's Lookup (hits by tier, misses).
  virtual void OnLookup(absl::Span<const LookupResult> results) = 0;
  // The store's answer to a client's Get, over gRPC, UCX or shared memory: the tier that served the block, or
  // kNone for a miss.
  virtual void OnGet(StoreTier served_by) = 0;
};

class CacheServiceCore;

// One client-streamed Put in progress. Bytes are buffered privately and handed to the store only
// by Finish(); destroying the session without Finish() (a cut stream) leaves nothing visible and
// returns its buffer budget. Not thread-safe: one stream drives one session.
class PutSession {
 public:
  ~PutSession();
  PutSession(const PutSession&) = delete;
  PutSession& operator=(const PutSession&) = delete;

  // Feeds the next message of the stream. The first must be the header, every later one a chunk.
  // After an error the session is dead: the stream must be failed with that status.
  absl::Status OnMessage(const v1::PutRequest& request);
  // The client closed its side: verifies the byte count and commits to the store.
  absl::StatusOr<v1::PutResponse> Finish();

 private:
  friend class CacheServiceCore;
  explicit PutSession(CacheServiceCore* core) : core_(core) {}
  absl::Status OnHeader(const v1::PutHeader& header);
  absl::Status OnChunk(const std::string& chunk);
  absl::StatusOr<v1::PutResponse> Commit();

  CacheServiceCore* core_;
  bool have_header_ = false;
  bool failed_ = false;
  BlockKey key_;
  uint64_t declared_bytes_ = 0;
  uint64_t reserved_bytes_ = 0;
  std::vector<uint8_t> buffer_;
};

// One server-streamed Get: a size message, then chunks of the payload. Holds the payload
// (BlockBytes) alive until destroyed. Not thread-safe.
class GetStream {
 public:
  // Fills the next message; false when the stream is complete.
  bool Next(v1::GetResponse* response);
  uint64_t payload_bytes() const { return block_.bytes.size(); }

 private:
  friend class CacheServiceCore;
  GetStream(BlockBytes block, uint32_t chunk_bytes) : block_(std::move(block)), chunk_(chunk_bytes) {}
  BlockBytes block_;
  uint32_t chunk_;
  bool sent_size_ = false;
  uint64_t offset_ = 0;
};

class CacheServiceCore {
 public:
  // `store` is borrowed and must outlive the core; `data_plane` (no UCX), `observer` and
  // `local` (no shared-memory data plane) may be null. Options must have passed Validate().
  CacheServiceCore(CacheServiceOptions options, BlockStore* store, DataPlaneSessions* data_plane,
                   CacheServiceObserver* observer = nullptr, LocalSessions* local = nullptr);

  const CacheServiceOptions& options() const { return options_; }

  // Checks the `authorization` metadata value (null when absent). Thread-safe.
  absl::Status Authenticate(const std::string* authorization) const;

  // The handlers below are thread-safe; codes as in the file comment.
  absl::Status Lookup(const v1::LookupRequest& request, v1::LookupResponse* response);
  // Starts a Put; RESOURCE_EXHAUSTED / UNAVAILABLE surface from the session's first message.
  std::unique_ptr<PutSession> StartPut();
  absl::StatusOr<std::unique_ptr<GetStream>> StartGet(const v1::GetRequest& request);
  absl::Status Delete(const v1::DeleteRequest& request, v1::DeleteResponse* response);
  absl::Status Stats(const v1::StatsRequest& request, v1::StatsResponse* response);
  absl::Status OpenDataPlane(const v1::OpenDataPlaneRequest& request,
                             v1::OpenDataPlaneResponse* response);
  absl::Status Drain(const v1::DrainRequest& request, v1::DrainResponse* response);

  bool draining() const { return draining_.load(std::memory_order_acquire); }
  // Called (outside any lock) whenever Drain changes the state; the server flips the health
  // service. Set once before serving.
  void set_drain_listener(std::function<void(bool draining)> listener) {
    drain_listener_ = std::move(listener);
  }
  // In-flight call accounting, driven by the reactors (reported by Drain).
  void CallStarted() { inflight_calls_.fetch_add(1, std::memory_order_relaxed); }
  void CallEnded() { inflight_calls_.fetch_sub(1, std::memory_order_relaxed); }
  uint64_t inflight_calls() const { return inflight_calls_.load(std::memory_order_relaxed); }
  // Bytes currently buffered by open Put streams.
  uint64_t put_buffer_bytes() const { return put_buffer_bytes_.load(std::memory_order_relaxed); }

 private:
  friend class PutSession;
  absl::Status CheckKeyCount(int count, std::string_view method) const;
  // Reserves Put buffer budget; RESOURCE_EXHAUSTED when the node is full.
  absl::Status ReservePutBytes(uint64_t bytes);
  void ReleasePutBytes(uint64_t bytes);

  const CacheServiceOptions options_;
  BlockStore* const store_;
  DataPlaneSessions* const data_plane_;
  LocalSessions* const local_;
  CacheServiceObserver* const observer_;
  std::function<void(bool)> drain_listener_;
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> inflight_calls_{0};
  std::atomic<uint64_t> put_buffer_bytes_{0};
};

// The v1 enum for a store tier.
v1::Tier ToProtoTier(StoreTier tier);

}  // namespace kvblock
