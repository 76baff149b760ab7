#include "worker/worker_command.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "services/cache_client_config.h"
#include "worker/service/runtime.h"
#include "worker/service/worker_server.h"

namespace kvblock {
namespace {

struct WorkerFlags {
  std::string model;
  std::string model_id;
  BackendOptions backend;
  ClusterFlags cluster;  // --cache SPEC, --cache-auth-token-file, --cache-tls-*
  std::string cache_dir;
  uint64_t memory_mb = 256;
  uint64_t pinned_buffer_bytes = uint64_t{4} << 30;
  double drain_timeout_s = 10;
  std::string ready_file;
  WorkerServerOptions server;
};

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "kvblock worker: %s\n", s.ToString().c_str());
  return 1;
}

int RunWorker(WorkerFlags& f) {
  const absl::Time start = absl::Now();
  if (absl::Status s = f.backend.Validate(); !s.ok()) return Fail(s);
  const bool has_cluster = f.cluster.given();
  if (has_cluster == !f.cache_dir.empty()) {
    return Fail(absl::InvalidArgumentError(
        "give exactly one of --cache SPEC (cache cluster) or --cache-dir DIR (embedded store)"));
  }
  RuntimeOptions ro;
  ro.model_dir = f.model;
  ro.model_id = f.model_id;
  ro.memory_bytes = f.memory_mb << 20;
  ro.cache_dir = f.cache_dir;
  ro.backend = f.backend;
  ro.pinned_buffer_bytes = f.pinned_buffer_bytes;
  if (has_cluster) {
    absl::StatusOr<CacheClientOptions> co = ClientOptionsFromFlags(f.cluster);
    if (!co.ok()) return Fail(co.status());
    ro.cluster = *co;
  }
  f.server.core.kv_dtype = ro.kv_dtype;
  f.server.drain_timeout = absl::Seconds(f.drain_timeout_s);

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(ro);
  if (!rt.ok()) return Fail(rt.status());
  if ((*rt)->cluster != nullptr) {
    if (absl::Status s = CheckClusterReachable(*(*rt)->cluster); !s.ok()) return Fail(s);
  }
  absl::StatusOr<std::unique_ptr<WorkerServer>> server = WorkerServer::Start(rt->get(), f.server);
  if (!server.ok()) return Fail(server.status());
  nlohmann::json ready = {{"grpc", (*server)->grpc_address()},
                          {"metrics", (*server)->metrics_address()},
                          {"model_fingerprint", (*rt)->model.fingerprint.ToHex()},
                          {"startup_ms", absl::ToDoubleMilliseconds(absl::Now() - start)},
                          {"pid", static_cast<int>(getpid())}};
  if (!f.ready_file.empty()) {
    const std::string tmp = f.ready_file + ".tmp";
    std::ofstream(tmp) << ready.dump() << "\n";
    std::rename(tmp.c_str(), f.ready_file.c_str());
  }
  std::printf("worker ready %s\n", ready.dump().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&set, &sig);
  std::printf("worker: signal %d, draining\n", sig);
  std::fflush(stdout);
  (*server)->Shutdown();
  server->reset();
  rt->reset();  // waits for queued write-backs to the cluster
  std::printf("worker: stopped cleanly\n");
  std::fflush(stdout);
  return 0;
}

}  // namespace

void AddWorkerCommand(CLI::App& app) {
  auto f = std::make_shared<WorkerFlags>();
  CLI::App* cmd = app.add_subcommand("worker", "Serve kvblock.v1.InferenceService (gRPC)");
  cmd->add_option("--model", f->model, "Hugging Face model directory")->required();
  cmd->add_option("--model-id", f->model_id, "Explicit model id replacing the weight fingerprint");
  cmd->add_option("--backend", f->backend.name, "Compute backend (" + AvailableBackends() + ")")
      ->capture_default_str();
  cmd->add_option("--dtype", f->backend.dtype, "Compute dtype: f32 or bf16 (cuda; default bf16)");
  AddClusterFlags(*cmd, &f->cluster, "cache-");
  cmd->add_option("--cache-dir", f->cache_dir,
                  "Embedded store directory (instead of a cache cluster)");
  cmd->add_option("--memory-mb", f->memory_mb, "Memory of the local tier / embedded store (MiB)")
      ->capture_default_str();
  cmd->add_option("--pinned-buffer-bytes", f->pinned_buffer_bytes,
                  "Pinned host memory that blocks fetched from the cache over UCX land in, "
                  "reused (e.g. 4GiB; --backend cuda with --cache; 0 = off)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  cmd->add_option("--listen", f->server.listen, "gRPC address host:port")->capture_default_str();
  cmd->add_option("--metrics-listen", f->server.metrics_listen,
                  "Metrics/dashboard HTTP address host:port (off if empty)");
  cmd->add_option("--auth-token-file", f->server.auth_token_file,
                  "File with the bearer token every call must carry");
  cmd->add_option("--tls-cert", f->server.tls_cert, "PEM server certificate chain (enables TLS)");
  cmd->add_option("--tls-key", f->server.tls_key, "PEM server private key");
  cmd->add_option("--client-ca", f->server.client_ca,
                  "PEM CA; clients must present a cert it signed");
  cmd->add_option("--max-prompt-tokens", f->server.core.max_prompt_tokens,
                  "Longest prompt (tokens)")
      ->capture_default_str();
  cmd->add_option("--max-concurrent", f->server.core.max_concurrent,
                  "Requests in progress at once (prefilling or decoding)")
      ->capture_default_str();
  cmd->add_option("--max-decode-batch", f->server.core.max_decode_batch,
                  "Requests decoded together in one step at most")
      ->capture_default_str();
  cmd->add_option("--encode-batch-tokens", f->server.core.encode_batch_tokens,
                  "Most tokens of missed blocks encoded in one backend pass")
      ->capture_default_str();
  cmd->add_option("--fetch-threads", f->server.core.fetch_threads,
                  "Cached blocks of one request fetched from the cache at once")
      ->capture_default_str();
  cmd->add_option("--prefill-threads", f->server.core.prefill_threads,
                  "Threads that prefill requests")
      ->capture_default_str();
  cmd->add_option("--queue-size", f->server.core.queue_size, "Requests that may wait")
      ->capture_default_str();
  cmd->add_option("--drain-timeout-s", f->drain_timeout_s, "Seconds in-flight calls get on SIGTERM")
      ->capture_default_str();
  cmd->add_option("--ready-file", f->ready_file, "Write the bound addresses here as JSON");
  cmd->callback([f] {
    const int rc = RunWorker(*f);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace kvblock
