// The HTTP endpoint of every kvblock process (`--metrics-listen`), on cpp-httplib:
//   GET /metrics    Prometheus text format 0.0.4 of the registry
//   GET /healthz    200 "ok" while the process serves HTTP (liveness)
//   GET /readyz     200 "ready" when the owner's readiness check passes, else 503 with the reason
//   GET /api/stats  JSON: every metric plus derived rates, percentiles and history
//   (dashboard_stats.h) GET /dashboard  one self-contained HTML page (no external resources)
//   polling /api/stats GET /           redirects to /dashboard
// A background thread samples the registry every `sample_interval` for the dashboard history.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/metrics/dashboard_stats.h"
#include "services/metrics/metrics_registry.h"

namespace kvblock::metrics {

struct MetricsHttpServerOptions {
  // Where to listen: "host:port" (IPv4, a name, or "[v6]:port"); port 0 picks a free port (see
  // MetricsHttpServer::port()). Default: "127.0.0.1:9464".
  std::string listen_address = "127.0.0.1:9464";
  // Worker threads answering requests. Default: 4.
  int num_threads = 4;
  // Socket read and write timeouts per request. Default: 5 s each.
  absl::Duration read_timeout = absl::Seconds(5);
  absl::Duration write_timeout = absl::Seconds(5);
  // Period of the dashboard history sampler. Default: 1 s.
  absl::Duration sample_interval = absl::Seconds(1);
  // Window that rates and percentiles on the dashboard are computed over. Default: 5 s.
  absl::Duration rate_window = absl::Seconds(5);
  // History points kept for the charts (times sample_interval = span shown). Default: 300.
  int history_points = 300;
  // Heading of the dashboard and `title` of /api/stats, e.g. "cache-server node-0".
  // Default: "kvblock".
  std::string title = "kvblock";
  // Which families feed the dashboard charts. Default: the standard families.
  DashboardOptions dashboard;

  // INVALID_ARGUMENT with the offending field.
  absl::Status Validate() const;
};

// Splits "host:port" / "[v6]:port"; INVALID_ARGUMENT when malformed or the port is out of range.
absl::Status ParseListenAddress(const std::string& address, std::string* host, int* port);

// OK when the process is ready to take traffic; otherwise the reason (served with 503).
using ReadinessCheck = std::function<absl::Status()>;

class MetricsHttpServer {
 public:
  // `registry` is not owned and must outlive the server.
  MetricsHttpServer(MetricsRegistry* registry, MetricsHttpServerOptions options);
  // Stops the server if running.
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Sets the /readyz check; until one is set, /readyz answers 503 "starting". The check runs on
  // HTTP threads and must be thread-safe and quick. Thread-safe; may be called at any time.
  void SetReadinessCheck(ReadinessCheck check);

  // Binds and starts serving on background threads. INVALID_ARGUMENT: bad options;
  // UNAVAILABLE: cannot bind (the message names the address and the OS reason, e.g. "Address
  // already in use"); FAILED_PRECONDITION: already started. Not thread-safe with Stop().
  absl::Status Start();
  // Stops serving and joins the threads; idempotent. In-flight requests finish first.
  void Stop();

  // The bound port (useful with port 0); 0 before Start().
  int port() const { return port_; }
  // "host:port" actually bound.
  std::string address() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// The dashboard page (HTML with inline CSS and JS).
const std::string& DashboardHtml();

}  // namespace kvblock::metrics
