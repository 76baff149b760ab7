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
// Threads: each side runs progress threads that own its ucp workers; public methods post work
// to them and wait, so they are thread-safe. The server runs one worker; it reads blocks from
// the store on a small pool of reader threads (read_threads) and hands each block back to the
// progress thread, which sends it, so a slow disk read delays only its own fetch.
//
// Lanes: a client session to a node is UcxClientOptions::lanes endpoints, one per lane, each on
// its own ucp worker and progress thread and each authenticated with its own one-use token (one
// OpenDataPlane per lane). A fetch runs on the lane with the fewest bytes in flight and stays
// there. On one host the rendezvous payload is copied by the receiving worker's thread
// (CMA process_vm_readv), so one lane caps everything a client fetches from a node at one
// core's copy rate; the server's worker only answers the handshakes of those copies, so the
// server keeps one (docs/benchmarks.md, "Data-plane lanes").
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
  static constexpr uint32_t kMaxLanes = 64;
  // Upper bound on sessions opened over the client's life (count). Default: 1024. (UCX itself
  // reads UCX_* environment variables such as UCX_TLS; kvblock leaves them unset.)
  uint32_t max_sessions = 1024;
  // As UcxServerOptions::peer_error_handling. Default: false.
  bool peer_error_handling = false;
  // Lanes: ucp workers, each with its own progress thread, over which every session spreads its
  // fetches (count, 1..kMaxLanes). Each lane is one endpoint and one authenticated session on
  // the node, so a node's per-session limits (max_inflight_bytes, max_reads_per_session) apply
  // per lane. Idle lanes sleep; lanes beyond the fetches a client runs at once add nothing.
  // Default: 8 (docs/benchmarks.md, "Data-plane lanes": 8 concurrent fetches reach 0.8 of
  // 8-thread memcpy with 8 lanes, 0.45 with 4).
  uint32_t lanes = 8;

  absl::Status Validate() const;
};

// What one OpenDataPlane answered: where to connect and the one-use token to present.
struct SessionTicket {
  std::string listener_address;
  std::string token;
};

class UcxClient {
 public:
  // INVALID_ARGUMENT for bad options; UNAVAILABLE when UCX cannot start (no transports).
  static absl::StatusOr<std::unique_ptr<UcxClient>> Create(UcxClientOptions options);
  // Closes every session (fetches in progress fail with UNAVAILABLE) and stops the lanes.
  ~UcxClient();

  // The number of lanes (options.lanes).
  int lanes() const;
  // Lane `lane`'s ucp worker address (sent in the OpenDataPlane whose token that lane presents).
  std::string WorkerAddress(int lane) const;
  // Fetches routed to each lane since Create (for tests and benchmarks). Thread-safe.
  std::vector<uint64_t> FetchesPerLane() const;
  // Opens a session: lane i connects to tickets[i].listener_address and presents
  // tickets[i].token, all lanes at once; returns the session id. INVALID_ARGUMENT unless there
  // is one ticket per lane; UNAUTHENTICATED when the node refuses a token, UNAVAILABLE when a
  // lane cannot connect, DEADLINE_EXCEEDED after `timeout`, RESOURCE_EXHAUSTED past
  // max_sessions. On any failure every lane's endpoint of the session is closed. Thread-safe.
  absl::StatusOr<int> Connect(absl::Span<const SessionTicket> tickets, absl::Duration timeout);
  // Fetches a block into `buffer` (the caller's; it must stay valid until the call returns) and
  // returns the payload size. The fetch runs on the lane with the fewest buffer bytes of
  // fetches in progress (ties: the lowest lane, so one fetch at a time stays on lane 0).
  // NOT_FOUND for an absent key, OUT_OF_RANGE when the buffer is too small, UNAUTHENTICATED on
  // a session the node does not accept, UNAVAILABLE when the session (on that lane) broke or
  // was closed, DEADLINE_EXCEEDED after `timeout` (the session's endpoint on that lane is then
  // closed, so nothing is written into the buffer after the call returns; later fetches that
  // land on that lane fail UNAVAILABLE: close the session and connect again). Thread-safe.
  absl::StatusOr<uint64_t> Fetch(int session, const BlockKey& key, absl::Span<uint8_t> buffer,
                                 absl::Duration timeout);
  // Closes a session on every lane (pending fetches fail with UNAVAILABLE). Thread-safe.
  void Close(int session);

  struct Impl;

 private:
  explicit UcxClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvblock
