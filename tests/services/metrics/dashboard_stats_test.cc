// Derived numbers of /api/stats: percentile estimates from buckets against exact quantiles of
// random samples, rates between samples, hit rate, selectors, and the JSON document.
#include "services/metrics/dashboard_stats.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "services/metrics/standard_metrics.h"

namespace kvblock::metrics {
namespace {

TEST(HistogramQuantileTest, InterpolatesInsideBuckets) {
  // 10 in (0,1], 30 in (1,2], 60 in (2,4].
  const std::vector<double> bounds = {1, 2, 4};
  const std::vector<uint64_t> counts = {10, 30, 60, 0};
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.05, bounds, counts), 0.5);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.25, bounds, counts), 1.5);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.70, bounds, counts), 3.0);
  EXPECT_DOUBLE_EQ(HistogramQuantile(1.0, bounds, counts), 4.0);
  // Landing in +Inf: the largest finite bound.
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.99, bounds, {0, 0, 1, 99}), 4.0);
  EXPECT_TRUE(std::isnan(HistogramQuantile(0.5, bounds, {0, 0, 0, 0})));
  EXPECT_TRUE(std::isnan(HistogramQuantile(0.5, bounds, {1, 2})));  // malformed
}

TEST(HistogramQuantileTest, EstimatesRandomSamplesWithinABucket) {
  std::mt19937_64 rng(std::random_device{}());
  std::lognormal_distribution<double> dist(-5.0 - static_cast<double>(rng() % 3), 1.0);
  const std::vector<double> bounds = LatencyBuckets();
  Histogram h(bounds);
  std::vector<double> values(20000 + rng() % 10000);
  for (double& v : values) {
    v = dist(rng);
    h.Observe(v);
  }
  std::sort(values.begin(), values.end());
  for (double q : {0.5, 0.9, 0.99}) {
    const double exact = values[static_cast<size_t>(q * (values.size() - 1))];
    const double est = HistogramQuantile(q, bounds, h.BucketCounts());
    // The estimate lies in the bucket holding the exact quantile: within a factor of 2
    // (doubling buckets).
    EXPECT_GT(est, exact / 2) << "q=" << q;
    EXPECT_LT(est, exact * 2) << "q=" << q;
  }
}

struct Fixture {
  MetricsRegistry registry;
  ServiceMetrics m;
  Fixture() { m = *ServiceMetrics::Register(&registry); }
};

TEST(DashboardStatsTest, RatesHitRateAndWindowPercentiles) {
  Fixture f;
  DashboardOptions opts;
  std::mt19937_64 rng(std::random_device{}());
  const absl::Time t0 = absl::Now();
  // Old traffic: slow requests that must not show in the window's percentiles.
  Histogram* lat = *f.m.request_duration->WithLabels({"Get"});
  for (int i = 0; i < 1000; ++i) lat->Observe(2.0 + (rng() % 100) / 100.0);
  DashboardTotals before = ComputeTotals(f.registry.Collect(), opts, t0);

  const int ok = 500 + rng() % 500, errors = 1 + rng() % 50;
  const int hits = 100 + rng() % 900, misses = 1 + rng() % 100;
  const uint64_t in_bytes = 1 + rng() % (1ull << 30), out_bytes = 1 + rng() % (1ull << 30);
  (*f.m.requests->WithLabels({"Get", "OK"}))->Increment(ok);
  (*f.m.requests->WithLabels({"Put", "RESOURCE_EXHAUSTED"}))->Increment(errors);
  const int not_found = 1 + rng() % 50;  // a cache miss, not an error
  (*f.m.requests->WithLabels({"Get", "NOT_FOUND"}))->Increment(not_found);
  (*f.m.cache_hits->WithLabels({"memory"}))->Increment(hits / 2);
  (*f.m.cache_hits->WithLabels({"disk"}))->Increment(hits - hits / 2);
  (*f.m.cache_misses->WithLabels({}))->Increment(misses);
  (*f.m.bytes->WithLabels({"grpc", "in"}))->Increment(in_bytes);
  (*f.m.bytes->WithLabels({"ucx", "out"}))->Increment(out_bytes);
  for (int i = 0; i < 1000; ++i) lat->Observe(0.001 + (rng() % 1000) * 1e-6);  // 1..2 ms
  DashboardTotals after = ComputeTotals(f.registry.Collect(), opts, t0 + absl::Seconds(4));

  DashboardPoint p = ComputePoint(before, after);
  EXPECT_DOUBLE_EQ(p.window_s, 4.0);
  EXPECT_DOUBLE_EQ(p.requests_per_s, (ok + errors + not_found) / 4.0);
  EXPECT_DOUBLE_EQ(p.errors_per_s, errors / 4.0);
  EXPECT_DOUBLE_EQ(p.hit_rate, static_cast<double>(hits) / (hits + misses));
  EXPECT_DOUBLE_EQ(p.bytes_per_s, static_cast<double>(in_bytes + out_bytes) / 4.0);
  ASSERT_EQ(p.bytes_per_s_by.size(), 2u);
  EXPECT_EQ(p.bytes_per_s_by[0].first, "in");
  EXPECT_DOUBLE_EQ(p.bytes_per_s_by[0].second, in_bytes / 4.0);
  EXPECT_DOUBLE_EQ(p.bytes_per_s_by[1].second, out_bytes / 4.0);
  EXPECT_GT(p.p50_s, 0.0008);  // the 0.8..1.6 ms and 1.6..3.2 ms buckets
  EXPECT_LT(p.p50_s, 0.0032);
  EXPECT_LT(p.p99_s, 0.0032);  // the old 2..3 s requests are outside the window
  // All-time percentiles do see them.
  DashboardPoint all = ComputePoint(ComputeTotals({}, opts, t0), after);
  EXPECT_GT(all.p99_s, 1.0);

  // A counter reset (process restart) does not produce negative rates.
  DashboardTotals reset = before;
  reset.requests = 3;
  reset.time = after.time + absl::Seconds(1);
  EXPECT_DOUBLE_EQ(ComputePoint(after, reset).requests_per_s, 3.0);
}

TEST(DashboardStatsTest, SelectorsSumMatchingSeries) {
  MetricsRegistry r;
  GaugeFamily* g = *r.AddGauge({"kvblock_tier_bytes", "Bytes.", {"tier"}});
  std::mt19937_64 rng(std::random_device{}());
  const double mem = 1 + rng() % 1000000, disk = 1 + rng() % 1000000;
  (*g->WithLabels({"memory"}))->Set(mem);
  (*g->WithLabels({"disk"}))->Set(disk);
  DashboardOptions opts;
  opts.memory = {{"Memory tier", "kvblock_tier_bytes", {{"tier", "memory"}}},
                 {"All tiers", "kvblock_tier_bytes", {}},
                 {"Absent", "kvblock_nothing", {}},
                 {"No such tier", "kvblock_tier_bytes", {{"tier", "gpu"}}}};
  DashboardTotals t = ComputeTotals(r.Collect(), opts, absl::Now());
  ASSERT_EQ(t.memory.size(), 4u);
  EXPECT_EQ(t.memory[0], mem);
  EXPECT_EQ(t.memory[1], mem + disk);
  EXPECT_TRUE(std::isnan(t.memory[2]));
  EXPECT_TRUE(std::isnan(t.memory[3]));
  EXPECT_FALSE(t.has_hit_data);
}

TEST(DashboardStatsTest, HistoryAndJson) {
  Fixture f;
  ASSERT_TRUE(RegisterProcessMetrics(&f.registry).ok());
  StatsHistory history(DashboardOptions{}, /*history_points=*/5, absl::Seconds(2));
  std::mt19937_64 rng(std::random_device{}());
  Counter* get_ok = *f.m.requests->WithLabels({"Get", "OK"});
  const absl::Time t0 = absl::Now();
  std::vector<uint64_t> per_second;
  for (int s = 0; s <= 8; ++s) {
    if (s > 0) {
      per_second.push_back(100 + rng() % 1000);
      get_ok->Increment(per_second.back());
    }
    history.Sample(f.registry, t0 + absl::Seconds(s));
  }
  nlohmann::json doc = history.StatsJson(f.registry, "node-7", t0 + absl::Seconds(8));
  EXPECT_EQ(doc["title"], "node-7");
  EXPECT_EQ(doc["version"], KvblockVersion());
  const nlohmann::json& h = doc["history"];
  ASSERT_EQ(h["t"].size(), 5u);  // capped at history_points
  ASSERT_EQ(h["requests_per_s"].size(), 5u);
  // The last point covers seconds 7..8 (2 s window): (n7 + n8) / 2.
  const double expected_last = (per_second[6] + per_second[7]) / 2.0;
  EXPECT_DOUBLE_EQ(h["requests_per_s"][4].get<double>(), expected_last);
  EXPECT_DOUBLE_EQ(doc["current"]["requests_per_s"].get<double>(), expected_last);
  uint64_t total = 0;
  for (uint64_t n : per_second) total += n;
  EXPECT_EQ(doc["current"]["requests_total"].get<double>(), static_cast<double>(total));
  EXPECT_TRUE(doc["current"]["hit_rate"].is_null());  // no lookups at all
  EXPECT_TRUE(doc["current"]["p50_s"].is_null());
  EXPECT_GT(doc["process"]["resident_memory_bytes"].get<double>(), 1 << 20);
  EXPECT_EQ(h["memory_titles"][0], "Resident memory");
  EXPECT_GT(h["memory"][0][4].get<double>(), 1 << 20);
  bool found = false;
  for (const nlohmann::json& m : doc["metrics"]) {
    if (m["name"] == "kvblock_requests_total") {
      found = true;
      EXPECT_EQ(m["type"], "counter");
      EXPECT_EQ(m["series"][0]["labels"]["method"], "Get");
      EXPECT_EQ(m["series"][0]["value"].get<double>(), static_cast<double>(total));
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace kvblock::metrics
