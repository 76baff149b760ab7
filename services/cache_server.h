// CacheServer: one cache node (`kvblock cache-server`): a TieredStore (memory over RocksDB in
// --data-dir) served over gRPC (kvblock.v1.CacheService on the callback API, plus the standard
// grpc.health.v1 health service and server reflection), the UCX data plane (--ucx-listen), and
// the same-host shared-memory data plane (--shm-socket, shm_data_plane.h) and the
// metrics/dashboard HTTP endpoint (--metrics-listen). Shutdown drains: new calls are
// refused, in-flight calls get up to drain_timeout, then UCX stops and RocksDB closes cleanly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/block_store.h"
#include "services/cache_service_core.h"

namespace kvblock {

struct CacheServerOptions {
  // gRPC listen address host:port (port 0 picks one). Default: "127.0.0.1:7070".
  std::string listen = "127.0.0.1:7070";
  // UCX data-plane listen address host:port; empty turns the data plane off. Default: "".
  std::string ucx_listen;
  // Unix socket of the same-host shared-memory data plane (the memory tier's arena is then
  // shared); empty turns it off. "auto" picks $XDG_RUNTIME_DIR (else /tmp) /
  // kvblock-cache-<gRPC listen port>.sock, or -pid<pid> instead of the port when that is 0.
  // Default: "" (`kvblock cache-server` defaults to "auto").
  std::string shm_socket;
  // Directory of the RocksDB tier (created if missing; its parent must exist). Required.
  std::string data_dir;
  // Memory tier budget (bytes). Default: 1 GiB.
  uint64_t memory_bytes = 1ull << 30;
  // Metrics/dashboard HTTP address host:port; empty turns it off. Default: "".
  std::string metrics_listen;
  // PEM files of the server's TLS certificate chain and key; both or neither. Default: "".
  std::string tls_cert;
  std::string tls_key;
  // PEM CA file: when set (TLS required), clients must present a certificate it signed (mTLS).
  // Default: "".
  std::string client_ca;
  // File holding the bearer token every call must carry; empty: no token. Default: "".
  std::string auth_token_file;
  // RocksDB durability: "per-write", "group-commit" or "none". Default: "per-write".
  std::string sync = "per-write";
  // How long Shutdown waits for in-flight calls before cancelling them. Default: 10 s.
  absl::Duration drain_timeout = absl::Seconds(10);
  // Limits and identity of the CacheService (node_id defaults to the gRPC address; auth_token
  // is filled from auth_token_file). Default: CacheServiceOptions defaults.
  CacheServiceOptions service;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

class CacheServer {
 public:
  // Opens the store and starts every listener. Errors: INVALID_ARGUMENT (options), NOT_FOUND
  // (unreadable TLS/token files), the store's Open errors, UNAVAILABLE (a port cannot be bound).
  static absl::StatusOr<std::unique_ptr<CacheServer>> Start(CacheServerOptions options);
  // Shutdown() if not done.
  ~CacheServer();
  CacheServer(const CacheServer&) = delete;
  CacheServer& operator=(const CacheServer&) = delete;

  // Drains and stops: health NOT_SERVING, gRPC shutdown with drain_timeout, then the data plane
  // and metrics endpoint, then the store (RocksDB closed). Idempotent; not thread-safe with
  // itself.
  void Shutdown();

  // Bound addresses ("host:port"); ucx/metrics are empty when off.
  const std::string& grpc_address() const;
  const std::string& ucx_address() const;
  const std::string& metrics_address() const;
  // Path of the shared-memory socket; empty when off.
  const std::string& shm_socket() const;
  // The node's store and core (valid until Shutdown); for tests and in-process tools.
  BlockStore* store();
  CacheServiceCore* core();

  struct Impl;

 private:
  explicit CacheServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvblock
