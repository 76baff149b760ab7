// A real Prometheus server (Debian's `prometheus`) on loopback scrapes a running process every
// second; its HTTP query API then returns the kvblock series with plausible values, and its
// histogram_quantile() over our buckets agrees with the percentiles /api/stats computes.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/services/metrics/external_tools.h"

namespace kvblock::metrics::testing {

const std::vector<std::string> kRequiredTools = {"prometheus"};

namespace {

class PrometheusTest : public ::testing::Test {
 protected:
  // Starts the demo server and a Prometheus scraping it every second.
  void SetUp() override {
    absl::StatusOr<DemoServer> demo =
        StartDemoServer({"--rate", absl::StrCat(kRate), "--hit-ratio", "0.8"});
    ASSERT_TRUE(demo.ok()) << demo.status();
    demo_.emplace(std::move(*demo));
    absl::StatusOr<CacheServerProcess> node = StartCacheServer();
    ASSERT_TRUE(node.ok()) << node.status();
    node_.emplace(std::move(*node));

    dir_ = MakeTempDir("prometheus");
    absl::StatusOr<PrometheusProcess> p =
        StartPrometheus({{"kvblock", absl::StrCat("127.0.0.1:", demo_->port)},
                         {"kvblock-cache", absl::StrCat("127.0.0.1:", node_->metrics_port)}},
                        dir_);
    ASSERT_TRUE(p.ok()) << p.status();
    prom_port_ = p->port;
    prometheus_.emplace(std::move(p->process));
  }

  void TearDown() override {
    if (prometheus_) prometheus_->Terminate();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);  // the TSDB; logs were shown on failure
  }

  nlohmann::json Query(const std::string& promql) { return PrometheusQuery(prom_port_, promql); }
  double Scalar(const std::string& promql) { return PrometheusScalar(prom_port_, promql); }

  static constexpr int kRate = 2000;
  std::optional<DemoServer> demo_;
  std::optional<CacheServerProcess> node_;
  std::optional<Subprocess> prometheus_;
  int prom_port_ = 0;
  std::string dir_;
};

TEST_F(PrometheusTest, ScrapesAndAnswersQueries) {
  // Wait (bounded) until the series are older than the 5 s rate window (7 scrapes within 7 s):
  // younger series make rate() extrapolate only part of the window and read low.
  const bool scraped = WaitFor(
      [&] {
        return Scalar("up{job=\"kvblock\"}") == 1 &&
               Scalar("count_over_time(up{job=\"kvblock\"}[7s])") >= 7;
      },
      absl::Seconds(60));
  ASSERT_TRUE(scraped) << "no steady scrapes within 60 s; prometheus log:\n" << prometheus_->Log();

  // Build info: one series, value 1, the labels our process reported.
  nlohmann::json build = Query("kvblock_build_info{job=\"kvblock\"}");
  ASSERT_EQ(build.size(), 1u) << build.dump();
  EXPECT_EQ(build[0]["metric"]["component"], "metrics-demo");
  EXPECT_EQ(build[0]["metric"]["job"], "kvblock");
  EXPECT_FALSE(build[0]["metric"]["version"].get<std::string>().empty());
  EXPECT_EQ(build[0]["value"][1], "1");

  // Request rate: what the demo generates (its pacing catches up after stalls; the band allows
  // for scrape jitter on 2 shared cores).
  const double rps = Scalar("sum(rate(kvblock_requests_total{job=\"kvblock\"}[5s]))");
  EXPECT_GT(rps, kRate * 0.7) << rps;
  EXPECT_LT(rps, kRate * 1.3) << rps;
  // Every method and the error codes are distinct series.
  nlohmann::json by_method = Query("sum by (method) (kvblock_requests_total{job=\"kvblock\"})");
  EXPECT_EQ(by_method.size(), 3u) << by_method.dump();
  EXPECT_GT(Scalar("sum(kvblock_requests_total{job=\"kvblock\",code=\"NOT_FOUND\"})"), 0);

  // Hit rate over the window: ~0.8 as configured.
  const double hit_rate = Scalar(
      "sum(rate(kvblock_cache_hits_total{job=\"kvblock\"}[10s])) / "
      "(sum(rate(kvblock_cache_hits_total{job=\"kvblock\"}[10s])) + "
      "sum(rate(kvblock_cache_misses_total{job=\"kvblock\"}[10s])))");
  EXPECT_NEAR(hit_rate, 0.8, 0.05);
  EXPECT_EQ(Query("kvblock_cache_hits_total{job=\"kvblock\"}").size(),
            2u);  // tier="memory", tier="disk"

  // Bytes: outbound (Get over UCX and gRPC) and inbound (Put) both flow, ~1 MiB per block.
  const double out_bps =
      Scalar("sum(rate(kvblock_bytes_total{job=\"kvblock\",direction=\"out\"}[5s]))");
  // Get: 35% of requests, 80% hits, lognormal payloads with mean 1 MiB * e^(0.7^2/2).
  const double expected_out = kRate * 0.35 * 0.8 * (1 << 20) * std::exp(0.7 * 0.7 / 2);
  EXPECT_GT(out_bps, expected_out * 0.6) << out_bps;
  EXPECT_LT(out_bps, expected_out * 1.4) << out_bps;
  EXPECT_GT(Scalar("sum(rate(kvblock_bytes_total{job=\"kvblock\",direction=\"in\"}[5s]))"), 0);

  // Latency from our buckets through Prometheus' own histogram_quantile: Lookup is ~0.3 ms,
  // Get ~2..8 ms, so p50 over everything lands between 0.1 ms and 10 ms.
  const double p50 = Scalar(
      "histogram_quantile(0.5, sum by (le) "
      "(rate(kvblock_request_duration_seconds_bucket{job=\"kvblock\"}[10s])))");
  const double p99 = Scalar(
      "histogram_quantile(0.99, sum by (le) "
      "(rate(kvblock_request_duration_seconds_bucket{job=\"kvblock\"}[10s])))");
  EXPECT_GT(p50, 0.0001);
  EXPECT_LT(p50, 0.01);
  EXPECT_GT(p99, p50);
  EXPECT_LT(p99, 0.2);
  // Our /api/stats estimate from the same buckets agrees (same stationary distribution,
  // different windows): within 30%.
  absl::StatusOr<HttpResponse> stats = HttpGet(demo_->port, "/api/stats");
  ASSERT_TRUE(stats.ok());
  nlohmann::json doc = nlohmann::json::parse(stats->body);
  const double our_p50 = doc["current"]["p50_s"].get<double>();
  const double our_p99 = doc["current"]["p99_s"].get<double>();
  EXPECT_GT(our_p50, p50 * 0.7) << our_p50 << " vs " << p50;
  EXPECT_LT(our_p50, p50 * 1.3) << our_p50 << " vs " << p50;
  EXPECT_GT(our_p99, p99 * 0.7) << our_p99 << " vs " << p99;
  EXPECT_LT(our_p99, p99 * 1.3) << our_p99 << " vs " << p99;
  std::printf(
      "measured: rate %.0f req/s (nominal %d), hit rate %.3f, out %.1f MiB/s, p50 %.3f ms "
      "(ours %.3f), p99 %.3f ms (ours %.3f)\n",
      rps, kRate, hit_rate, out_bps / (1 << 20), p50 * 1e3, our_p50 * 1e3, p99 * 1e3,
      our_p99 * 1e3);

  // Process metrics: plausible memory, uptime that grows, CPU used.
  const double rss = Scalar("kvblock_process_resident_memory_bytes{job=\"kvblock\"}");
  EXPECT_GT(rss, 1 << 20);
  EXPECT_LT(rss, 16.0 * (1ull << 30));
  const double uptime = Scalar("kvblock_process_uptime_seconds{job=\"kvblock\"}");
  EXPECT_GT(uptime, 2);
  EXPECT_LT(uptime, 120);
  EXPECT_GT(Scalar("kvblock_process_cpu_seconds_total{job=\"kvblock\"}"), 0);
  // Tier gauges from the collector: the memory tier stays within its 256 MiB budget.
  const double mem_tier = Scalar("kvblock_tier_bytes{job=\"kvblock\",tier=\"memory\"}");
  EXPECT_GT(mem_tier, 0);
  EXPECT_LE(mem_tier, Scalar("kvblock_tier_capacity_bytes{job=\"kvblock\",tier=\"memory\"}"));
  // Prometheus parsed every sample of each scrape (no dropped or failed scrapes).
  EXPECT_GT(Scalar("scrape_samples_scraped{job=\"kvblock\"}"), 100);
}

TEST_F(PrometheusTest, ScrapesTheRealCacheServer) {
  ASSERT_TRUE(WaitFor([&] { return Scalar("up{job=\"kvblock-cache\"}") == 1; }, absl::Seconds(60)))
      << prometheus_->Log();
  // Traffic after the first scrape, so the counters visibly move between scrapes.
  const int kCalls = 4, kKeys = 25;
  ASSERT_TRUE(DriveLookups(*node_, kCalls, kKeys).ok());
  const bool seen = WaitFor(
      [&] {
        return Scalar("sum(kvblock_cache_misses_total{job=\"kvblock-cache\"})") >= kCalls * kKeys;
      },
      absl::Seconds(30));
  ASSERT_TRUE(seen) << Query("kvblock_cache_misses_total").dump();
  // Every key was a miss; the Lookup calls and their latencies were recorded.
  EXPECT_EQ(Scalar("sum(kvblock_cache_misses_total{job=\"kvblock-cache\"})"), kCalls * kKeys);
  EXPECT_GE(Scalar("sum(kvblock_requests_total{job=\"kvblock-cache\",method=~\".*Lookup.*\"})"),
            kCalls);
  EXPECT_GE(Scalar("sum(kvblock_request_duration_seconds_count{job=\"kvblock-cache\"})"), kCalls);
  nlohmann::json build = Query("kvblock_build_info{job=\"kvblock-cache\"}");
  ASSERT_EQ(build.size(), 1u) << build.dump();
  EXPECT_EQ(build[0]["metric"]["component"], "cache-server");
  const double budget =
      Scalar("kvblock_tier_capacity_bytes{job=\"kvblock-cache\",tier=\"memory\"}");
  EXPECT_EQ(budget, 64.0 * (1 << 20));
}

}  // namespace
}  // namespace kvblock::metrics::testing
