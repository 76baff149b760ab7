// The UCX data plane: block payloads move between a cache node and its clients over UCX (ucp
// active messages), with UCX choosing the transport (RDMA verbs where present, shared memory /
// CMA on one host, TCP otherwise). The gRPC control plane opens each session: the client calls
// OpenDataPlane (authenticated), gets the node's listener address and a one-use session token,
// connects, and presents the token as its first message; an endpoint that has not presented a
// valid token gets nothing but UNAUTHENTICATED and is closed.
//
// A fetch is answered segment by segment: the 96-byte block header, then the layers (scales, K,
// V; small layers grouped up to min_segment_bytes), each segment its own message straight from
// the store's bytes (the memory tier's arena: no copy on the node; regions given in
// UcxServerOptions are registered once and passed as memory handles), received by the client
// directly into the caller's buffer at the segment's offset.
//
// Transports: UCX_TLS is left unset. On one host UCX 1.13 picks sysv/posix shared memory for
// active messages and CMA (process_vm_readv, one copy) for the rendezvous payloads, with tcp
// only for the connection manager; peer error handling would restrict it to tcp (see
// peer_error_handling). The server sets UCX_TCP_CM_REUSEADDR=y (unless already set) so a
// restarted node can bind its port while old connections linger.
//
// Threads: each side runs one progress thread that owns its ucp worker; public methods post work
// to it and wait, so they are thread-safe. The server reads blocks from the store on a small
// pool of reader threads (read_threads) and hands each block back to the progress thread, which
// sends it, so a slow disk read delays only its own fetch.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cache/block_store.h"
#include "services/cache_service_core.h"

namespace kvblock {

struct UcxServerOptions {
  // host:port the listener binds (port 0 picks one). Default: "127.0.0.1:0".
  std::string listen = "127.0.0.1:0";
  // Host put in OpenDataPlane answers; empty uses the listen host. Default: "".
  std::string advertise_host;
  // Bytes of fetch replies in flight per session before further fetches queue (bytes).
  // Default: 256 MiB.
  uint64_t max_inflight_bytes = 256ull << 20;
  // How long a session token stays valid before a client presents it. Default: 30 s.
  absl::Duration token_ttl = absl::Seconds(30);
  // Memory regions that hold payloads (the memory tier's arena), registered once with UCX so
  // sends from them need no per-call registration. Default: none.
  std::vector<absl::Span<const uint8_t>> registered_regions;
  // Layers are sent whole; consecutive layers smaller than this are grouped into one message
  // (bytes; 0 = one message per layer). Default: 2 MiB (docs/benchmarks.md: 1 MiB vs 4 MiB).
  uint64_t min_segment_bytes = 2ull << 20;
  // Threads that read blocks from the store for fetches (off the progress thread, which only
  // moves bytes). Default: 4.
  int read_threads = 4;
  // Fetches of one session whose store read may run at once; later ones queue. Default: 16.
  uint32_t max_reads_per_session = 16;
  // UCX peer-failure handling on endpoints. UCX 1.13 selects no shared-memory transport
  // (sysv/posix + CMA) for such endpoints, which caps one-host transfers at TCP speed; with it
  // off a dead peer is noticed by the fetch deadline and the gRPC control plane instead.
  // Default: false.
  bool peer_error_handling = false;

  absl::Status Validate() const;
};

class UcxServer final : public DataPlaneSessions {
 public:
  // Creates the UCX context, worker and listener and starts the progress thread. `store` and
  // `observer` (nullable) are borrowed and must outlive the server. UNAVAILABLE when UCX cannot
  // listen on the address.
  static absl::StatusOr<std::unique_ptr<UcxServer>> Start(UcxServerOptions options,
                                                          BlockStore* store,
                                                          CacheServiceObserver* observer);
  // Stops the progress thread after closing every endpoint.
  ~UcxServer() override;

  // host:port of the listener as clients should dial it.
  const std::string& address() const;
  // DataPlaneSessions: mints a one-use token. Thread-safe.
  absl::StatusOr<v1::OpenDataPlaneResponse> OpenSession(
      std::string_view client_worker_address) override;
  // Endpoints currently connected and authenticated (for tests). Thread-safe.
  int authenticated_sessions() const;

  struct Impl;

 private:
  explicit UcxServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct UcxClientOptions {
  // Upper bound on sessions (count). Default: 1024. (UCX itself reads UCX_* environment
  // variables such as UCX_TLS; kvblock leaves them unset.)
  uint32_t max_sessions = 1024;
  // As UcxServerOptions::peer_error_handling. Default: false.
  bool peer_error_handling = false;
};

class UcxClient {
 public:
  // UNAVAILABLE when UCX cannot start (no transports).
  static absl::StatusOr<std::unique_ptr<UcxClient>> Create(UcxClientOptions options);
  ~UcxClient();

  // This client's ucp worker address (sent in OpenDataPlane).
  std::string WorkerAddress() const;
  // Connects to a node's listener and presents `token`; returns a session id.
  // UNAUTHENTICATED when the node refuses the token, UNAVAILABLE when it cannot connect,
  // DEADLINE_EXCEEDED after `timeout`. Thread-safe.
  absl::StatusOr<int> Connect(const std::string& listener_address, const std::string& token,
                              absl::Duration timeout);
  // Fetches a block into `buffer` (the caller's; it must stay valid until the call returns) and
  // returns the payload size. NOT_FOUND for an absent key, OUT_OF_RANGE when the buffer is too
  // small, UNAUTHENTICATED on a session the node does not accept, UNAVAILABLE when the session
  // broke, DEADLINE_EXCEEDED after `timeout` (the session is then closed, so nothing is written
  // into the buffer after the call returns). Thread-safe.
  absl::StatusOr<uint64_t> Fetch(int session, const BlockKey& key, absl::Span<uint8_t> buffer,
                                 absl::Duration timeout);
  // Closes a session (pending fetches fail with UNAVAILABLE). Thread-safe.
  void Close(int session);

  struct Impl;

 private:
  explicit UcxClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvblock
