#include "worker/service/worker_server.h"

#include <atomic>
#include <functional>
#include <vector>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "services/auth.h"
#include "services/metrics/metrics_http_server.h"
#include "services/server_credentials.h"
#include "services/metrics/metrics_registry.h"
#include "services/metrics/standard_metrics.h"
#include "worker/service/inference_grpc_service.h"

namespace kvblock {
namespace {

constexpr char kServiceName[] = "kvblock.v1.InferenceService";

// The worker's metrics: the standard service families plus the TTFT histogram.
class WorkerMetrics final : public InferenceObserver {
 public:
  absl::Status Init(metrics::MetricsRegistry* registry) {
    absl::StatusOr<metrics::ServiceMetrics> sm = metrics::ServiceMetrics::Register(registry);
    if (!sm.ok()) return sm.status();
    service_ = *sm;
    absl::StatusOr<metrics::HistogramFamily*> ttft =
        registry->AddHistogram({"kvblock_worker_ttft_seconds",
                                "Generate time to first token, from request arrival (seconds).",
                                {}},
                               metrics::LatencyBuckets());
    if (!ttft.ok()) return ttft.status();
    absl::StatusOr<metrics::Histogram*> h =
        (*ttft)->WithLabels(absl::Span<const std::string_view>());
    if (!h.ok()) return h.status();
    ttft_ = *h;
    return absl::OkStatus();
  }

  void OnCall(std::string_view method, absl::StatusCode code, absl::Duration latency) override {
    const std::string code_name = absl::StatusCodeToString(code);
    const std::string_view labels[] = {method, code_name};
    if (auto c = service_.requests->WithLabels(labels); c.ok()) (*c)->Increment();
    const std::string_view m[] = {method};
    if (auto h = service_.request_duration->WithLabels(m); h.ok()) (*h)->ObserveDuration(latency);
  }

  void OnGenerated(const GenerateOutcome& outcome) override {
    ttft_->Observe(outcome.timings.first_token_ms() / 1000.0);
    const uint64_t local = outcome.cache.gpu_hits();
    const uint64_t remote = outcome.cache.hits() - local;
    const std::string_view mem[] = {"memory"}, rem[] = {"remote"};
    if (local != 0) {
      if (auto c = service_.cache_hits->WithLabels(mem); c.ok()) (*c)->Increment(local);
    }
    if (remote != 0) {
      if (auto c = service_.cache_hits->WithLabels(rem); c.ok()) (*c)->Increment(remote);
    }
    if (outcome.cache.misses() != 0) {
      if (auto c = service_.cache_misses->WithLabels(absl::Span<const std::string_view>());
          c.ok()) {
        (*c)->Increment(outcome.cache.misses());
      }
    }
  }

 private:
  metrics::ServiceMetrics service_;
  metrics::Histogram* ttft_ = nullptr;
};

// The worker's store paths: LayeredStore's background write-backs and local copies of remote
// hits (a worker in front of a cluster, with its local tier), the pinned receive buffers (a GPU
// worker).
absl::Status RegisterStoreMetrics(metrics::MetricsRegistry& registry, const Runtime& rt) {
  struct Counter {
    const char* name;
    const char* help;
    std::function<double()> value;
  };
  std::vector<Counter> counters;
  if (const LayeredStore* l = rt.layered.get(); l != nullptr) {
    counters.push_back({"kvblock_worker_write_backs_total", "Blocks written back to the cluster (attempts).",
                        [l] { return double(l->remote_writes()); }});
    counters.push_back({"kvblock_worker_write_back_errors_total", "Write-backs the cluster refused or missed.",
                        [l] { return double(l->remote_write_errors()); }});
    counters.push_back({"kvblock_worker_write_backs_dropped_total", "Write-backs dropped: the queue was full.",
                        [l] { return double(l->dropped_writes()); }});
    counters.push_back({"kvblock_worker_promotions_skipped_total",
                        "Remote hits not copied into the local tier: the queue was full.",
                        [l] { return double(l->skipped_promotions()); }});
  }
  if (const CacheClient* c = rt.cluster.get(); c != nullptr && rt.buffers != nullptr) {
    counters.push_back({"kvblock_worker_pinned_buffer_fallbacks_total",
                        "Cluster reads that found no pinned buffer and used pageable memory.",
                        [c] { return double(c->buffer_fallbacks()); }});
  }
  for (Counter& k : counters) {
    auto id = registry.AddCallbackCounter({k.name, k.help, {}},
                                          [v = k.value](metrics::CollectorSink& sink) { sink.Add(0, v()); });
    if (!id.ok()) return id.status();
  }
  if (const HostBufferPool* pool = rt.buffers.get(); pool != nullptr) {
    auto id = registry.AddCallbackGauge(
        {"kvblock_worker_pinned_buffer_bytes", "Pinned receive buffers held (idle or in use).", {}},
        [pool](metrics::CollectorSink& sink) { sink.Add(0, double(pool->Stats().bytes_held)); });
    if (!id.ok()) return id.status();
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WorkerServerOptions::Validate() const {
  if (listen.empty()) return absl::InvalidArgumentError("listen must not be empty");
  if (tls_cert.empty() != tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert and tls_key must be given together");
  }
  if (!client_ca.empty() && tls_cert.empty()) {
    return absl::InvalidArgumentError("client_ca needs tls_cert and tls_key");
  }
  if (drain_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("drain_timeout must be >= 0");
  }
  return core.Validate();
}

struct WorkerServer::Impl {
  WorkerServerOptions options;
  metrics::MetricsRegistry registry;
  WorkerMetrics worker_metrics;
  std::unique_ptr<InferenceCore> core;
  std::unique_ptr<InferenceGrpcService> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<metrics::MetricsHttpServer> http;
  std::string grpc_address, metrics_address;
  bool stopped = false;
  std::atomic<bool> draining{false};  // read by /readyz from the HTTP thread
};

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(Runtime* runtime,
                                                                  WorkerServerOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.options = std::move(options);
  std::string token;
  if (!m.options.auth_token_file.empty()) {
    absl::StatusOr<std::string> t = ReadTokenFile(m.options.auth_token_file);
    if (!t.ok()) return t.status();
    token = *std::move(t);
  }
  if (absl::Status s = m.worker_metrics.Init(&m.registry); !s.ok()) return s;
  if (absl::Status s = metrics::RegisterProcessMetrics(&m.registry, {"worker", ""}); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::unique_ptr<InferenceCore>> core =
      InferenceCore::Create(runtime, m.options.core);
  if (!core.ok()) return core.status();
  m.core = *std::move(core);
  m.service = std::make_unique<InferenceGrpcService>(m.core.get(), &m.worker_metrics, token);

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
      ServerCredentialsFromFiles(m.options.tls_cert, m.options.tls_key, m.options.client_ca);
  if (!creds.ok()) return creds.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(m.options.listen, *creds, &port);
  builder.RegisterService(m.service.get());
  m.server = builder.BuildAndStart();
  if (m.server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", m.options.listen));
  }
  const std::string host = m.options.listen.substr(0, m.options.listen.rfind(':'));
  m.grpc_address = absl::StrCat(host, ":", port);
  if (grpc::HealthCheckServiceInterface* health = m.server->GetHealthCheckService();
      health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus(kServiceName, true);
  }
  if (!m.options.metrics_listen.empty()) {
    if (auto id = metrics::RegisterTierStatsCollector(&m.registry,
                                                      [s = runtime->store] { return s->Stats(); });
        !id.ok()) {
      return id.status();
    }
    InferenceCore* c = m.core.get();
    if (auto id = m.registry.AddCallbackGauge(
            {"kvblock_worker_pending_requests",
             "Generate requests admitted and not finished (running + queued).",
             {}},
            [c](metrics::CollectorSink& sink) { sink.Add(0, static_cast<double>(c->pending())); });
        !id.ok()) {
      return id.status();
    }
    if (absl::Status st = RegisterStoreMetrics(m.registry, *runtime); !st.ok()) return st;
    metrics::MetricsHttpServerOptions ho;
    ho.listen_address = m.options.metrics_listen;
    ho.title = absl::StrCat("worker ", m.grpc_address);
    m.http = std::make_unique<metrics::MetricsHttpServer>(&m.registry, ho);
    // The model, tokenizer and store are open before Start, so the worker is ready as soon as
    // it serves, until a drain begins.
    m.http->SetReadinessCheck([draining = &m.draining]() -> absl::Status {
      if (draining->load()) return absl::UnavailableError("draining");
      return absl::OkStatus();
    });
    if (absl::Status s = m.http->Start(); !s.ok()) return s;
    m.metrics_address = m.http->address();
  }
  return std::unique_ptr<WorkerServer>(new WorkerServer(std::move(impl)));
}

WorkerServer::WorkerServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WorkerServer::~WorkerServer() { Shutdown(); }

void WorkerServer::Shutdown() {
  Impl& m = *impl_;
  if (m.stopped) return;
  m.stopped = true;
  m.draining = true;
  if (m.server != nullptr) {
    if (auto* health = m.server->GetHealthCheckService(); health != nullptr) {
      health->SetServingStatus(false);
      health->SetServingStatus(kServiceName, false);
    }
    m.server->Shutdown(absl::ToChronoTime(absl::Now() + m.options.drain_timeout));
    m.server->Wait();
  }
  if (m.http != nullptr) m.http->Stop();
  m.server.reset();
  m.service.reset();
  m.core.reset();
}

const std::string& WorkerServer::grpc_address() const { return impl_->grpc_address; }
const std::string& WorkerServer::metrics_address() const { return impl_->metrics_address; }
InferenceCore* WorkerServer::core() { return impl_->core.get(); }

}  // namespace kvblock
