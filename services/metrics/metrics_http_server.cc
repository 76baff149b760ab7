#include "services/metrics/metrics_http_server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"
#include "services/metrics/prometheus_text.h"

namespace kvblock::metrics {
namespace {

// Why binding host:port failed, as the OS says it (httplib only reports failure).
std::string BindFailureReason(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* result = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &result); rc != 0) {
    return absl::StrCat("cannot resolve host: ", gai_strerror(rc));
  }
  std::string reason = "unknown error";
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      reason = std::strerror(errno);
      continue;
    }
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));  // as httplib does
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      reason = std::strerror(errno);
    } else if (listen(fd, 1) != 0) {
      reason = std::strerror(errno);
    } else {
      reason = "bind succeeded on retry (transient failure)";
    }
    close(fd);
    break;
  }
  freeaddrinfo(result);
  return reason;
}

void SetTimeout(httplib::Server& svr, absl::Duration d, bool read) {
  const int64_t usec = absl::ToInt64Microseconds(d);
  if (read) {
    svr.set_read_timeout(usec / 1000000, usec % 1000000);
  } else {
    svr.set_write_timeout(usec / 1000000, usec % 1000000);
  }
}

}  // namespace

absl::Status ParseListenAddress(const std::string& address, std::string* host, int* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", address, "' is not host:port"));
  }
  std::string h = address.substr(0, colon);
  if (h.front() == '[') {
    if (h.back() != ']' || h.size() < 3) {
      return absl::InvalidArgumentError(
          absl::StrCat("listen address '", address, "': IPv6 hosts are written [addr]:port"));
    }
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", address, "': write IPv6 hosts as [addr]:port"));
  }
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", address, "': port must be 0..65535"));
  }
  *host = std::move(h);
  *port = p;
  return absl::OkStatus();
}

absl::Status MetricsHttpServerOptions::Validate() const {
  std::string host;
  int port = 0;
  if (absl::Status s = ParseListenAddress(listen_address, &host, &port); !s.ok()) return s;
  if (num_threads < 1 || num_threads > 256) {
    return absl::InvalidArgumentError("num_threads must be in 1..256");
  }
  if (read_timeout <= absl::ZeroDuration() || write_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("read_timeout and write_timeout must be positive");
  }
  if (sample_interval < absl::Milliseconds(10)) {
    return absl::InvalidArgumentError("sample_interval must be at least 10 ms");
  }
  if (rate_window < sample_interval) {
    return absl::InvalidArgumentError("rate_window must be at least sample_interval");
  }
  if (history_points < 2 || history_points > 100000) {
    return absl::InvalidArgumentError("history_points must be in 2..100000");
  }
  return dashboard.Validate();
}

class MetricsHttpServer::Impl {
 public:
  Impl(MetricsRegistry* registry, MetricsHttpServerOptions options)
      : registry_(registry),
        options_(std::move(options)),
        history_(options_.dashboard, options_.history_points, options_.rate_window) {}

  void SetReadinessCheck(ReadinessCheck check) {
    absl::MutexLock lock(&mu_);
    readiness_ = std::make_shared<ReadinessCheck>(std::move(check));
  }

  absl::Status Start(int* bound_port) {
    if (absl::Status s = options_.Validate(); !s.ok()) return s;
    if (started_) return absl::FailedPreconditionError("metrics HTTP server already started");
    int port = 0;
    if (absl::Status s = ParseListenAddress(options_.listen_address, &host_, &port); !s.ok()) {
      return s;
    }
    server_ = std::make_unique<httplib::Server>();
    const int threads = options_.num_threads;
    server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    SetTimeout(*server_, options_.read_timeout, /*read=*/true);
    SetTimeout(*server_, options_.write_timeout, /*read=*/false);
    // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second process
    // silently share the port instead of failing with "Address already in use".
    server_->set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    server_->set_keep_alive_timeout(2);  // bounds how long Stop() waits on idle connections
    InstallHandlers();

    const int requested_port = port;
    if (requested_port == 0) {
      port = server_->bind_to_any_port(host_);
    } else if (!server_->bind_to_port(host_, requested_port)) {
      port = -1;
    }
    if (port <= 0) {
      server_.reset();
      return absl::UnavailableError(absl::StrCat("metrics HTTP server cannot listen on ",
                                                 options_.listen_address, ": ",
                                                 BindFailureReason(host_, requested_port)));
    }
    port_ = port;
    listen_thread_ = std::thread([this] { server_->listen_after_bind(); });
    // httplib's stop() is a no-op until the accept loop runs: wait for it (bounded).
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!server_->is_running() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
    if (!server_->is_running()) {
      server_->stop();
      listen_thread_.detach();  // cannot be joined safely; should never happen
      return absl::InternalError("metrics HTTP server did not start within 10 s");
    }
    history_.Sample(*registry_, absl::Now());
    {
      absl::MutexLock lock(&mu_);
      stopping_ = false;
    }
    sampler_thread_ = std::thread([this] { SamplerLoop(); });
    started_ = true;
    *bound_port = port_;
    return absl::OkStatus();
  }

  void Stop() {
    if (!started_) return;
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    sampler_thread_.join();
    server_->stop();
    listen_thread_.join();
    server_.reset();
    started_ = false;
  }

  std::string address() const {
    const bool v6 = host_.find(':') != std::string::npos;
    return absl::StrCat(v6 ? "[" : "", host_, v6 ? "]" : "", ":", port_);
  }

 private:
  void SamplerLoop() {
    absl::MutexLock lock(&mu_);
    while (true) {
      auto stop_requested = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_requested), options_.sample_interval)) return;
      mu_.Unlock();
      history_.Sample(*registry_, absl::Now());
      mu_.Lock();
    }
  }

  void InstallHandlers() {
    server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(RenderPrometheusText(*registry_), kPrometheusTextContentType);
    });
    server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain; charset=utf-8");
    });
    server_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
      std::shared_ptr<ReadinessCheck> check;
      {
        absl::MutexLock lock(&mu_);
        check = readiness_;
      }
      absl::Status status = check != nullptr && *check
                                ? (*check)()
                                : absl::UnavailableError("starting: no readiness check set yet");
      if (status.ok()) {
        res.set_content("ready\n", "text/plain; charset=utf-8");
      } else {
        res.status = 503;
        res.set_content(absl::StrCat("not ready: ", status.ToString(), "\n"),
                        "text/plain; charset=utf-8");
      }
    });
    server_->Get("/api/stats", [this](const httplib::Request&, httplib::Response& res) {
      nlohmann::json doc = history_.StatsJson(*registry_, options_.title, absl::Now());
      res.set_header("Cache-Control", "no-store");
      res.set_content(doc.dump(), "application/json");
    });
    server_->Get("/dashboard", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("Cache-Control", "no-store");
      res.set_content(DashboardHtml(), "text/html; charset=utf-8");
    });
    server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_redirect("/dashboard");
    });
  }

  MetricsRegistry* const registry_;
  const MetricsHttpServerOptions options_;
  StatsHistory history_;
  std::unique_ptr<httplib::Server> server_;
  std::thread listen_thread_;
  std::thread sampler_thread_;
  std::string host_;
  int port_ = 0;
  bool started_ = false;

  absl::Mutex mu_;
  std::shared_ptr<ReadinessCheck> readiness_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

MetricsHttpServer::MetricsHttpServer(MetricsRegistry* registry, MetricsHttpServerOptions options)
    : impl_(std::make_unique<Impl>(registry, std::move(options))) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

void MetricsHttpServer::SetReadinessCheck(ReadinessCheck check) {
  impl_->SetReadinessCheck(std::move(check));
}

absl::Status MetricsHttpServer::Start() { return impl_->Start(&port_); }

void MetricsHttpServer::Stop() { impl_->Stop(); }

std::string MetricsHttpServer::address() const { return impl_->address(); }

}  // namespace kvblock::metrics
