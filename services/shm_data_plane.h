// The same-host shared-memory data plane: a worker on the cache node's host maps the node's
// payload memory (the memory tier's Arena, created shared: memfds) and reads blocks where they
// lie, with no copy by either CPU; a GPU copies them to the device straight from the mapping.
// This is what Mooncake and LMCache do for co-located caches; the UCX data plane
// (ucx_data_plane.h) copies every byte with a CPU core on one host (CMA).
//
// Session: the client asks for it in OpenDataPlane (gRPC, authenticated) and gets the node's
// Unix socket path and a one-use token (SessionTokens, as UCX). It connects, presents the token,
// and receives every arena region's memfd (SCM_RIGHTS) and length, which it maps read-only.
// Then ACQUIRE(key) answers (region, offset, length, lease): the server holds the store's
// BlockBytes for the lease (the memory tier pins the allocation), so the bytes stay unchanged
// even if the block is evicted or deleted, until the client RELEASEs the lease or its
// connection closes. Blocks not in the arena (only on disk and not promotable, or buffered by a
// write-back tier) are answered FAILED_PRECONDITION ("not local"): the client fetches them over
// UCX or gRPC. Wire format: services/internal/shm_wire.h.
//
// Threads: the server accepts on one thread and serves each connection on its own thread
// (max_connections bound them). Client calls are thread-safe; one ACQUIRE is in flight per
// connection at a time (a round trip over a Unix socket is microseconds).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/arena.h"
#include "cache/block_store.h"
#include "services/cache_service_core.h"
#include "services/host_region_listener.h"

namespace kvblock {

struct ShmServerOptions {
  // Path of the Unix socket (at most 107 bytes). A stale socket file there (nobody listening)
  // is replaced; a live one is an error. Required.
  std::string socket_path;
  // How long a token from OpenDataPlane stays valid before a client presents it. Default: 30 s.
  absl::Duration token_ttl = absl::Seconds(30);
  // Connections served at once (count); more are closed at accept. Default: 64.
  uint32_t max_connections = 64;
  // Leases one connection may hold (count); more ACQUIREs are answered RESOURCE_EXHAUSTED.
  // Default: 16384.
  uint32_t max_leases_per_connection = 16384;
  // A connection that has not presented its token within this, or that does not take a reply
  // within this (a send blocked on a full socket), is closed. Default: 10 s.
  absl::Duration io_timeout = absl::Seconds(10);

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

class ShmServer final : public LocalSessions {
 public:
  // Binds and listens on the socket and starts the accept thread. `store`, `arena` (the arena
  // the store's memory tier keeps payloads in; it must be shared) and `observer` (nullable) are
  // borrowed and must outlive the server. INVALID_ARGUMENT for bad options, FAILED_PRECONDITION
  // when the arena is not shared or the path holds something other than a stale socket,
  // ALREADY_EXISTS when a server listens there, UNAVAILABLE when the socket cannot be bound.
  static absl::StatusOr<std::unique_ptr<ShmServer>> Start(ShmServerOptions options,
                                                          BlockStore* store, const Arena* arena,
                                                          CacheServiceObserver* observer);
  // Stops accepting, closes every connection (dropping its leases), joins the threads and
  // removes the socket file.
  ~ShmServer() override;

  const std::string& socket_path() const;
  // LocalSessions: the socket path and a one-use token. RESOURCE_EXHAUSTED with too many
  // unused tokens. Thread-safe.
  absl::Status OpenLocalSession(v1::OpenDataPlaneResponse* response) override;
  // Connections open now, and leases held over all of them (for tests and metrics).
  // Thread-safe.
  int connections() const;
  uint64_t leases() const;

  struct Impl;

 private:
  explicit ShmServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ShmClientOptions {
  // Deadline of the handshake and of each ACQUIRE round trip. Default: 5 s.
  absl::Duration timeout = absl::Seconds(5);
  // Told about every region mapped and before it is unmapped (borrowed, nullable; must outlive
  // the client and every BlockBytes it returned). Default: none.
  HostRegionListener* region_listener = nullptr;

  absl::Status Validate() const;
};

// One connection to one node's shared-memory socket.
class ShmClient {
 public:
  // Connects, presents `token`, receives and maps the node's regions (read-only).
  // UNAVAILABLE when the socket cannot be reached (absent: the node is on another host) or the
  // handshake breaks, UNAUTHENTICATED when the node refuses the token, DEADLINE_EXCEEDED.
  static absl::StatusOr<std::unique_ptr<ShmClient>> Connect(const std::string& socket_path,
                                                            std::string_view token,
                                                            const ShmClientOptions& options);
  // No new ACQUIREs; the connection and the mappings live on until every BlockBytes this client
  // returned is gone (the node keeps those blocks' bytes for them until then).
  ~ShmClient();

  // Zero copy: the returned bytes point into the mapping of the node's region and stay valid
  // and unchanged while held; letting go of the last copy sends RELEASE. The BlockBytes' tier
  // is the node's (kMemory, or kDisk when the node promoted it from disk for this read); it is
  // marked verified (the node's memory tier checked it when it took it: BlockBytes::verified).
  // NOT_FOUND when absent on the node, FAILED_PRECONDITION when present but not in shared memory
  // (fetch it another way), RESOURCE_EXHAUSTED at the node's lease limit, UNAVAILABLE when the
  // connection broke, DEADLINE_EXCEEDED after options.timeout (the connection is then broken
  // too: later calls fail UNAVAILABLE). Thread-safe.
  absl::StatusOr<BlockBytes> Acquire(const BlockKey& key);
  // False once the connection broke (make a new client). Thread-safe.
  bool healthy() const;
  // The mapped regions (for tests).
  size_t num_regions() const;

  struct Connection;

 private:
  explicit ShmClient(std::shared_ptr<Connection> connection);
  std::shared_ptr<Connection> connection_;
};

}  // namespace kvblock
