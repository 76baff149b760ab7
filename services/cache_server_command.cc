#include "services/cache_server_command.h"

#include <signal.h>

#include <cstdio>
#include <fstream>
#include <memory>

#include "CLI/CLI.hpp"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "services/cache_server.h"

namespace kvblock {
namespace {

struct ServerFlags {
  CacheServerOptions options;
  double drain_timeout_s = 10;
  std::string ready_file;
};

int RunCacheServer(ServerFlags& flags) {
  const absl::Time start = absl::Now();
  flags.options.drain_timeout = absl::Seconds(flags.drain_timeout_s);
  // Block the shutdown signals in every thread (threads inherit the mask), then wait for them
  // here with sigwait: no async-signal-safety concerns.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  absl::StatusOr<std::unique_ptr<CacheServer>> server = CacheServer::Start(flags.options);
  if (!server.ok()) {
    std::fprintf(stderr, "cache-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  const double startup_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  nlohmann::json ready = {{"grpc", (*server)->grpc_address()},
                          {"ucx", (*server)->ucx_address()},
                          {"metrics", (*server)->metrics_address()},
                          {"shm", (*server)->shm_socket()},
                          {"startup_ms", startup_ms},
                          {"pid", static_cast<int>(getpid())}};
  if (!flags.ready_file.empty()) {
    const std::string tmp = flags.ready_file + ".tmp";
    std::ofstream(tmp) << ready.dump() << "\n";
    std::rename(tmp.c_str(), flags.ready_file.c_str());  // atomic: readers never see half
  }
  std::printf("cache-server ready %s\n", ready.dump().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&set, &sig);
  std::printf("cache-server: signal %d, draining\n", sig);
  std::fflush(stdout);
  (*server)->Shutdown();
  server->reset();
  std::printf("cache-server: stopped cleanly\n");
  std::fflush(stdout);
  return 0;
}

}  // namespace

void AddCacheServerCommand(CLI::App& app) {
  auto flags = std::make_shared<ServerFlags>();
  CacheServerOptions& o = flags->options;
  CLI::App* cmd = app.add_subcommand("cache-server", "Run a cache node (gRPC + UCX + metrics)");
  cmd->add_option("--listen", o.listen, "gRPC address host:port")->capture_default_str();
  cmd->add_option("--ucx-listen", o.ucx_listen, "UCX data-plane address host:port (off if empty)");
  o.shm_socket = "auto";
  cmd->add_option("--shm-socket", o.shm_socket,
                  "Unix socket of the same-host shared-memory data plane (\"auto\": "
                  "$XDG_RUNTIME_DIR or /tmp, kvblock-cache-<port>.sock; off if empty)")
      ->capture_default_str();
  cmd->add_option("--data-dir", o.data_dir, "RocksDB directory (created if missing)")->required();
  cmd->add_option("--memory-bytes", o.memory_bytes, "Memory tier budget (e.g. 4GiB)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  cmd->add_option("--metrics-listen", o.metrics_listen,
                  "HTTP /metrics /healthz /readyz /dashboard address (off if empty)");
  cmd->add_option("--tls-cert", o.tls_cert, "PEM server certificate chain (enables TLS)");
  cmd->add_option("--tls-key", o.tls_key, "PEM server private key");
  cmd->add_option("--client-ca", o.client_ca, "PEM CA; clients must present a cert it signed");
  cmd->add_option("--auth-token-file", o.auth_token_file, "File with the bearer token");
  cmd->add_option("--node-id", o.service.node_id, "Name in Stats (default: --listen)");
  cmd->add_option("--max-block-bytes", o.service.max_block_bytes, "Largest block accepted")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  cmd->add_option("--max-keys-per-call", o.service.max_keys_per_call,
                  "Most keys in one Lookup/Delete")
      ->capture_default_str();
  cmd->add_option("--max-put-buffer-bytes", o.service.max_put_buffer_bytes,
                  "Bytes all open Put streams may buffer")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  cmd->add_option("--sync", o.sync, "RocksDB durability: per-write | group-commit | none")
      ->capture_default_str();
  cmd->add_option("--drain-timeout-s", flags->drain_timeout_s,
                  "Seconds in-flight calls get on SIGTERM")
      ->capture_default_str();
  cmd->add_option("--ready-file", flags->ready_file,
                  "Write the bound addresses here (JSON) once serving");
  cmd->callback([flags] { throw CLI::RuntimeError(RunCacheServer(*flags)); });
}

}  // namespace kvblock
