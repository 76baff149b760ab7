// WorkerServer: the serving half of `kvblock worker`. Over an opened Runtime it runs an
// InferenceCore, serves kvblock.v1.InferenceService over gRPC (plus grpc.health.v1 and server
// reflection; optional TLS / mTLS and a bearer token on every call, as the cache server), and
// the metrics HTTP endpoint (--metrics-listen) with the standard service families and
// kvblock_worker_ttft_seconds. Shutdown drains: health NOT_SERVING, new calls refused,
// in-flight calls get up to drain_timeout.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/service/inference_core.h"
#include "worker/service/runtime.h"

namespace kvblock {

struct WorkerServerOptions {
  // gRPC listen address host:port (port 0 picks one). Default: "127.0.0.1:7080".
  std::string listen = "127.0.0.1:7080";
  // Metrics/dashboard HTTP address host:port; empty turns it off. Default: "".
  std::string metrics_listen;
  // PEM files of the server's TLS certificate chain and key; both or neither. Default: "".
  std::string tls_cert;
  std::string tls_key;
  // PEM CA file: clients must present a certificate it signed (mTLS; needs TLS). Default: "".
  std::string client_ca;
  // File holding the bearer token every call must carry; empty: no token. Default: "".
  std::string auth_token_file;
  // How long Shutdown waits for in-flight calls before cancelling them. Default: 10 s.
  absl::Duration drain_timeout = absl::Seconds(10);
  // Limits of the inference core. Default: InferenceCoreOptions defaults.
  InferenceCoreOptions core;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

class WorkerServer {
 public:
  // Borrows `runtime` (must outlive the server) and starts every listener. Errors:
  // INVALID_ARGUMENT (options), NOT_FOUND (unreadable TLS/token files), UNAVAILABLE (a port
  // cannot be bound).
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Start(Runtime* runtime,
                                                             WorkerServerOptions options);
  // Shutdown() if not done.
  ~WorkerServer();
  WorkerServer(const WorkerServer&) = delete;
  WorkerServer& operator=(const WorkerServer&) = delete;

  // Drains and stops gRPC, then the metrics endpoint and the core. Idempotent; not thread-safe
  // with itself.
  void Shutdown();

  // Bound addresses ("host:port"); metrics is empty when off.
  const std::string& grpc_address() const;
  const std::string& metrics_address() const;
  // The core (valid until Shutdown); for tests.
  InferenceCore* core();

  struct Impl;

 private:
  explicit WorkerServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvblock
