#include "services/cache_server.h"

#include <unistd.h>

#include <cstdlib>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cache/tiered_store.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "services/auth.h"
#include "services/cache_grpc_service.h"
#include "services/metrics/metrics_http_server.h"
#include "services/server_credentials.h"
#include "services/metrics/metrics_registry.h"
#include "services/metrics/standard_metrics.h"
#include "services/shm_data_plane.h"
#include "services/ucx_data_plane.h"

namespace kvblock {
namespace {

// The cache server's metrics: the standard service families plus node gauges.
class ServerMetrics final : public CacheServiceObserver {
 public:
  absl::Status Init(metrics::MetricsRegistry* registry) {
    absl::StatusOr<metrics::ServiceMetrics> sm = metrics::ServiceMetrics::Register(registry);
    if (!sm.ok()) return sm.status();
    service_ = *sm;
    return absl::OkStatus();
  }

  void OnCall(std::string_view method, absl::StatusCode code, absl::Duration latency) override {
    const std::string code_name = absl::StatusCodeToString(code);
    const std::string_view labels[] = {method, code_name};
    if (auto c = service_.requests->WithLabels(labels); c.ok()) (*c)->Increment();
    const std::string_view m[] = {method};
    if (auto h = service_.request_duration->WithLabels(m); h.ok()) (*h)->ObserveDuration(latency);
  }

  void OnBytes(std::string_view plane, std::string_view direction, uint64_t bytes) override {
    const std::string_view labels[] = {plane, direction};
    if (auto c = service_.bytes->WithLabels(labels); c.ok()) (*c)->Increment(bytes);
  }

  void OnLookup(absl::Span<const LookupResult> results) override {
    uint64_t memory = 0, disk = 0, miss = 0;
    for (const LookupResult& r : results) {
      if (!r.present) {
        ++miss;
      } else if (r.tier == StoreTier::kDisk) {
        ++disk;
      } else {
        ++memory;
      }
    }
    CountHits(memory, disk, miss);
  }

  void OnGet(StoreTier served_by) override {
    const bool miss = served_by == StoreTier::kNone;
    const bool disk = served_by == StoreTier::kDisk;
    CountHits(!miss && !disk, disk, miss);
  }

 private:
  void CountHits(uint64_t memory, uint64_t disk, uint64_t miss) {
    const std::string_view mem[] = {"memory"}, dsk[] = {"disk"};
    if (memory != 0) {
      if (auto c = service_.cache_hits->WithLabels(mem); c.ok()) (*c)->Increment(memory);
    }
    if (disk != 0) {
      if (auto c = service_.cache_hits->WithLabels(dsk); c.ok()) (*c)->Increment(disk);
    }
    if (miss != 0) {
      if (auto c = service_.cache_misses->WithLabels(absl::Span<const std::string_view>());
          c.ok()) {
        (*c)->Increment(miss);
      }
    }
  }

  metrics::ServiceMetrics service_;
};

// CacheServerOptions::shm_socket with "auto" resolved.
std::string ResolveShmSocket(const std::string& option, const std::string& listen) {
  if (option != "auto") return option;
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  const std::string dir = runtime != nullptr && runtime[0] != '\0' ? runtime : "/tmp";
  std::string port = listen.substr(listen.rfind(':') + 1);
  if (port.empty() || port == "0") port = absl::StrCat("pid", getpid());
  return absl::StrCat(dir, "/kvblock-cache-", port, ".sock");
}

}  // namespace

absl::Status CacheServerOptions::Validate() const {
  if (listen.empty()) return absl::InvalidArgumentError("listen is empty");
  if (data_dir.empty()) return absl::InvalidArgumentError("data_dir is required");
  if (memory_bytes < (1u << 20)) return absl::InvalidArgumentError("memory_bytes must be >= 1 MiB");
  if (tls_cert.empty() != tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert and tls_key go together");
  }
  if (!client_ca.empty() && tls_cert.empty()) {
    return absl::InvalidArgumentError("client_ca (mTLS) needs tls_cert and tls_key");
  }
  if (sync != "per-write" && sync != "group-commit" && sync != "none") {
    return absl::InvalidArgumentError("sync must be per-write, group-commit or none");
  }
  if (drain_timeout < absl::ZeroDuration()) return absl::InvalidArgumentError("drain_timeout < 0");
  CacheServiceOptions s = service;
  if (s.max_block_bytes > memory_bytes) {
    return absl::InvalidArgumentError("max_block_bytes must not exceed memory_bytes");
  }
  return s.Validate();
}

struct CacheServer::Impl {
  CacheServerOptions options;
  metrics::MetricsRegistry registry;
  ServerMetrics server_metrics;
  std::unique_ptr<TieredStore> store;
  std::unique_ptr<UcxServer> ucx;
  std::unique_ptr<ShmServer> shm;
  std::unique_ptr<CacheServiceCore> core;
  std::unique_ptr<CacheGrpcService> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<metrics::MetricsHttpServer> http;
  std::string grpc_address, ucx_address, metrics_address, shm_socket;
  bool stopped = false;
};

absl::StatusOr<std::unique_ptr<CacheServer>> CacheServer::Start(CacheServerOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.options = std::move(options);
  CacheServiceOptions service = m.options.service;
  if (!m.options.auth_token_file.empty()) {
    absl::StatusOr<std::string> token = ReadTokenFile(m.options.auth_token_file);
    if (!token.ok()) return token.status();
    service.auth_token = *token;
  }

  if (absl::Status s = m.server_metrics.Init(&m.registry); !s.ok()) return s;
  if (absl::Status s = metrics::RegisterProcessMetrics(&m.registry, {"cache-server", ""});
      !s.ok()) {
    return s;
  }

  TieredStoreOptions so;
  so.memory.capacity_bytes = m.options.memory_bytes;
  so.memory.shared_arena = !m.options.shm_socket.empty();
  so.rocks.path = m.options.data_dir;
  so.rocks.create_if_missing = true;
  absl::StatusOr<SyncPolicy> sync = ParseSyncPolicy(m.options.sync);
  if (!sync.ok()) return sync.status();
  so.rocks.sync = *sync;
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Open(so);
  if (!store.ok()) return store.status();
  m.store = *std::move(store);

  if (!m.options.ucx_listen.empty()) {
    UcxServerOptions uo;
    uo.listen = m.options.ucx_listen;
    m.store->memory().arena().ForEachRegion([&](void* base, size_t length) {
      uo.registered_regions.emplace_back(static_cast<const uint8_t*>(base), length);
    });
    absl::StatusOr<std::unique_ptr<UcxServer>> ucx =
        UcxServer::Start(std::move(uo), m.store.get(), &m.server_metrics);
    if (!ucx.ok()) return ucx.status();
    m.ucx = *std::move(ucx);
    m.ucx_address = m.ucx->address();
  }

  if (!m.options.shm_socket.empty()) {
    ShmServerOptions shm;
    shm.socket_path = ResolveShmSocket(m.options.shm_socket, m.options.listen);
    absl::StatusOr<std::unique_ptr<ShmServer>> server =
        ShmServer::Start(std::move(shm), m.store.get(), &m.store->memory().arena(),
                         &m.server_metrics);
    if (!server.ok()) return server.status();
    m.shm = *std::move(server);
    m.shm_socket = m.shm->socket_path();
  }

  if (service.node_id.empty()) service.node_id = m.options.listen;
  m.core = std::make_unique<CacheServiceCore>(service, m.store.get(), m.ucx.get(),
                                              &m.server_metrics, m.shm.get());
  m.service = std::make_unique<CacheGrpcService>(m.core.get(), &m.server_metrics);

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
      ServerCredentialsFromFiles(m.options.tls_cert, m.options.tls_key, m.options.client_ca);
  if (!creds.ok()) return creds.status();

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(m.options.listen, *creds, &port);
  builder.RegisterService(m.service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(service.max_chunk_bytes) + (64 << 10));
  builder.SetMaxSendMessageSize(static_cast<int>(service.max_chunk_bytes) + (64 << 10));
  m.server = builder.BuildAndStart();
  if (m.server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", m.options.listen));
  }
  const std::string host = m.options.listen.substr(0, m.options.listen.rfind(':'));
  m.grpc_address = absl::StrCat(host, ":", port);
  grpc::HealthCheckServiceInterface* health = m.server->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus("kvblock.v1.CacheService", true);
  }
  m.core->set_drain_listener([health](bool draining) {
    if (health != nullptr) health->SetServingStatus("kvblock.v1.CacheService", !draining);
  });

  if (!m.options.metrics_listen.empty()) {
    if (auto id = metrics::RegisterTierStatsCollector(&m.registry,
                                                      [s = m.store.get()] { return s->Stats(); });
        !id.ok()) {
      return id.status();
    }
    if (auto id = metrics::RegisterFilesystemCollector(&m.registry, {m.options.data_dir});
        !id.ok()) {
      return id.status();
    }
    CacheServiceCore* core = m.core.get();
    UcxServer* ucx = m.ucx.get();
    if (auto id = m.registry.AddCollector(
            {{{"kvblock_cache_server_inflight_calls", "CacheService calls in progress.", {}},
              metrics::MetricType::kGauge},
             {{"kvblock_cache_server_put_buffer_bytes",
               "Bytes buffered by open Put streams (uncommitted).", {}},
              metrics::MetricType::kGauge},
             {{"kvblock_cache_server_draining", "1 while the node is draining.", {}},
              metrics::MetricType::kGauge},
             {{"kvblock_cache_server_data_plane_sessions",
               "Authenticated UCX data-plane sessions.", {}},
              metrics::MetricType::kGauge},
             {{"kvblock_cache_server_shm_connections",
               "Open shared-memory data-plane connections.", {}},
              metrics::MetricType::kGauge},
             {{"kvblock_cache_server_shm_leases",
               "Blocks leased to shared-memory clients (their bytes are kept).", {}},
              metrics::MetricType::kGauge}},
            [core, ucx, shm = m.shm.get()](metrics::CollectorSink& sink) {
              sink.Add(0, static_cast<double>(core->inflight_calls()));
              sink.Add(1, static_cast<double>(core->put_buffer_bytes()));
              sink.Add(2, core->draining() ? 1.0 : 0.0);
              sink.Add(3, ucx != nullptr ? ucx->authenticated_sessions() : 0.0);
              sink.Add(4, shm != nullptr ? shm->connections() : 0.0);
              sink.Add(5, shm != nullptr ? static_cast<double>(shm->leases()) : 0.0);
            });
        !id.ok()) {
      return id.status();
    }
    metrics::MetricsHttpServerOptions ho;
    ho.listen_address = m.options.metrics_listen;
    ho.title = absl::StrCat("cache-server ", m.grpc_address);
    m.http = std::make_unique<metrics::MetricsHttpServer>(&m.registry, ho);
    m.http->SetReadinessCheck([core]() -> absl::Status {
      if (core->draining()) return absl::UnavailableError("draining");
      return absl::OkStatus();
    });
    if (absl::Status s = m.http->Start(); !s.ok()) return s;
    m.metrics_address = m.http->address();
  }
  return std::unique_ptr<CacheServer>(new CacheServer(std::move(impl)));
}

CacheServer::CacheServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CacheServer::~CacheServer() { Shutdown(); }

void CacheServer::Shutdown() {
  Impl& m = *impl_;
  if (m.stopped) return;
  m.stopped = true;
  if (m.server != nullptr) {
    if (auto* health = m.server->GetHealthCheckService(); health != nullptr) {
      health->SetServingStatus(false);
      health->SetServingStatus("kvblock.v1.CacheService", false);
    }
    // Refuses new calls at once; in-flight calls get up to drain_timeout, then are cancelled.
    m.server->Shutdown(absl::ToChronoTime(absl::Now() + m.options.drain_timeout));
    m.server->Wait();
  }
  m.ucx.reset();
  m.shm.reset();  // closes every shm connection: the leased blocks go with the store
  if (m.http != nullptr) m.http->Stop();
  m.server.reset();
  m.service.reset();
  m.core.reset();
  m.store.reset();  // closes RocksDB (flushes its WAL state)
}

const std::string& CacheServer::grpc_address() const { return impl_->grpc_address; }
const std::string& CacheServer::ucx_address() const { return impl_->ucx_address; }
const std::string& CacheServer::metrics_address() const { return impl_->metrics_address; }
const std::string& CacheServer::shm_socket() const { return impl_->shm_socket; }
BlockStore* CacheServer::store() { return impl_->store.get(); }
CacheServiceCore* CacheServer::core() { return impl_->core.get(); }

}  // namespace kvblock
