// The HTTP endpoints over real sockets (cpp-httplib client): exact /metrics text, health and
// readiness, /api/stats numbers, the self-contained dashboard, bind errors, start/stop.
#include "services/metrics/metrics_http_server.h"

#include <random>
#include <regex>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "services/metrics/prometheus_text.h"
#include "services/metrics/standard_metrics.h"

namespace kvblock::metrics {
namespace {

using ::testing::HasSubstr;

MetricsHttpServerOptions LoopbackOptions() {
  MetricsHttpServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.sample_interval = absl::Milliseconds(50);
  o.rate_window = absl::Milliseconds(200);
  o.title = "unit-test node";
  return o;
}

httplib::Result Get(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(5);
  return client.Get(path.c_str());
}

TEST(MetricsHttpServerTest, ServesMetricsHealthAndReadiness) {
  MetricsRegistry registry;
  std::mt19937_64 rng(std::random_device{}());
  CounterFamily* ops = *registry.AddCounter({"kvblock_ops_total", "Ops.", {"kind"}});
  const uint64_t n = 1 + rng() % 1000000;
  (*ops->WithLabels({"put \"x\""}))->Increment(n);

  MetricsHttpServer server(&registry, LoopbackOptions());
  ASSERT_TRUE(server.Start().ok());
  ASSERT_GT(server.port(), 0);
  EXPECT_EQ(server.address(), absl::StrCat("127.0.0.1:", server.port()));
  EXPECT_EQ(server.Start().code(), absl::StatusCode::kFailedPrecondition);

  auto metrics = Get(server.port(), "/metrics");
  ASSERT_TRUE(metrics) << httplib::to_string(metrics.error());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type"), kPrometheusTextContentType);
  EXPECT_EQ(metrics->body, absl::StrCat("# HELP kvblock_ops_total Ops.\n"
                                        "# TYPE kvblock_ops_total counter\n"
                                        "kvblock_ops_total{kind=\"put \\\"x\\\"\"} ",
                                        n, "\n"));
  // Values move between scrapes.
  (*ops->WithLabels({"put \"x\""}))->Increment(5);
  EXPECT_THAT(Get(server.port(), "/metrics")->body, HasSubstr(absl::StrCat(" ", n + 5, "\n")));

  auto health = Get(server.port(), "/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");

  auto ready = Get(server.port(), "/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);  // no readiness check yet
  std::atomic<bool> loaded{false};
  server.SetReadinessCheck([&]() -> absl::Status {
    if (!loaded) return absl::UnavailableError("loading RocksDB");
    return absl::OkStatus();
  });
  ready = Get(server.port(), "/readyz");
  EXPECT_EQ(ready->status, 503);
  EXPECT_THAT(ready->body, HasSubstr("loading RocksDB"));
  loaded = true;
  ready = Get(server.port(), "/readyz");
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(ready->body, "ready\n");

  EXPECT_EQ(Get(server.port(), "/no-such-page")->status, 404);
  auto root = Get(server.port(), "/");
  EXPECT_EQ(root->status, 302);
  EXPECT_EQ(root->get_header_value("Location"), "/dashboard");

  server.Stop();
  server.Stop();                                 // idempotent
  EXPECT_FALSE(Get(server.port(), "/healthz"));  // nothing listens any more
}

TEST(MetricsHttpServerTest, ApiStatsReportsLiveRates) {
  MetricsRegistry registry;
  ServiceMetrics m = *ServiceMetrics::Register(&registry);
  ASSERT_TRUE(RegisterProcessMetrics(&registry, {.component = "test"}).ok());
  MetricsHttpServer server(&registry, LoopbackOptions());
  ASSERT_TRUE(server.Start().ok());

  std::mt19937_64 rng(std::random_device{}());
  Counter* ok = *m.requests->WithLabels({"Get", "OK"});
  Counter* hit = *m.cache_hits->WithLabels({"memory"});
  Counter* miss = *m.cache_misses->WithLabels({});
  Histogram* lat = *m.request_duration->WithLabels({"Get"});
  // ~1 s of steady traffic: 200 requests per 10 ms tick = ~20k/s, 75% hits, 2..4 ms latency.
  uint64_t sent = 0;
  const absl::Time end = absl::Now() + absl::Seconds(1);
  while (absl::Now() < end) {
    ok->Increment(200);
    hit->Increment(150);
    miss->Increment(50);
    for (int i = 0; i < 200; ++i) lat->Observe(0.002 + (rng() % 2000) * 1e-6);
    sent += 200;
    absl::SleepFor(absl::Milliseconds(10));
  }
  auto res = Get(server.port(), "/api/stats");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  nlohmann::json doc = nlohmann::json::parse(res->body);
  EXPECT_EQ(doc["title"], "unit-test node");
  const nlohmann::json& cur = doc["current"];
  EXPECT_EQ(cur["requests_total"].get<double>(), static_cast<double>(sent));
  EXPECT_DOUBLE_EQ(cur["hit_rate"].get<double>(), 0.75);
  // 20k/s nominal; sleeps overshoot on a loaded machine, so accept a wide band.
  EXPECT_GT(cur["requests_per_s"].get<double>(), 2000);
  EXPECT_LT(cur["requests_per_s"].get<double>(), 25000);
  EXPECT_GT(cur["p50_s"].get<double>(), 0.0016);
  EXPECT_LT(cur["p99_s"].get<double>(), 0.0064);
  EXPECT_EQ(cur["errors_per_s"].get<double>(), 0);
  // The sampler ran every 50 ms: a history exists.
  EXPECT_GE(doc["history"]["t"].size(), 5u);
  EXPECT_GT(doc["process"]["uptime_s"].get<double>(), 0.5);
}

TEST(MetricsHttpServerTest, DashboardIsSelfContained) {
  MetricsRegistry registry;
  MetricsHttpServer server(&registry, LoopbackOptions());
  ASSERT_TRUE(server.Start().ok());
  auto res = Get(server.port(), "/dashboard");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_EQ(res->body, DashboardHtml());
  EXPECT_THAT(res->body, HasSubstr("<canvas"));
  EXPECT_THAT(res->body, HasSubstr("/api/stats"));
  // No external resources: no src/href to other hosts, no @import, no url(http...).
  std::regex external(R"((src|href)\s*=\s*["']?\s*(https?:)?//|@import|url\(\s*["']?https?:)",
                      std::regex::icase);
  EXPECT_FALSE(std::regex_search(res->body, external));
}

TEST(MetricsHttpServerTest, BindErrorsAreClear) {
  MetricsRegistry registry;
  MetricsHttpServer first(&registry, LoopbackOptions());
  ASSERT_TRUE(first.Start().ok());
  MetricsHttpServerOptions o = LoopbackOptions();
  o.listen_address = absl::StrCat("127.0.0.1:", first.port());
  MetricsHttpServer second(&registry, o);
  absl::Status s = second.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(o.listen_address));
  EXPECT_THAT(std::string(s.message()), HasSubstr("Address already in use"));
  // The first server is unaffected.
  EXPECT_EQ(Get(first.port(), "/healthz")->status, 200);

  o.listen_address = "203.0.113.1:0";  // TEST-NET-3: not an address of this machine
  EXPECT_EQ(MetricsHttpServer(&registry, o).Start().code(), absl::StatusCode::kUnavailable);

  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:99999", ":80", "::1:80", "host:port"}) {
    o.listen_address = bad;
    EXPECT_EQ(MetricsHttpServer(&registry, o).Start().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
  o = LoopbackOptions();
  o.rate_window = absl::Milliseconds(10);  // shorter than sample_interval
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = LoopbackOptions();
  o.num_threads = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MetricsHttpServerTest, RestartsOnTheSamePort) {
  MetricsRegistry registry;
  MetricsHttpServer server(&registry, LoopbackOptions());
  ASSERT_TRUE(server.Start().ok());
  const int port = server.port();
  server.Stop();
  MetricsHttpServerOptions o = LoopbackOptions();
  o.listen_address = absl::StrCat("127.0.0.1:", port);
  MetricsHttpServer again(&registry, o);
  ASSERT_TRUE(again.Start().ok());
  EXPECT_EQ(again.port(), port);
  EXPECT_EQ(Get(port, "/healthz")->status, 200);
}

}  // namespace
}  // namespace kvblock::metrics
