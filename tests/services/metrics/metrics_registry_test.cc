// Registry and Prometheus exposition: exact text for a known registry, escaping, validation,
// collectors, and exact totals under concurrent updates.
#include "services/metrics/metrics_registry.h"

#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/metrics/prometheus_text.h"

namespace kvblock::metrics {
namespace {

using ::testing::HasSubstr;

TEST(PrometheusTextTest, ExactTextForKnownRegistry) {
  MetricsRegistry r;
  CounterFamily* requests =
      *r.AddCounter({"kvblock_requests_total", "Requests finished.", {"method", "code"}});
  (*requests->WithLabels({"Put", "OK"}))->Increment(3);
  (*requests->WithLabels({"Get", "OK"}))->Increment(41);
  (*requests->WithLabels({"Get", "NOT_FOUND"}))->Increment();
  GaugeFamily* inflight = *r.AddGauge({"kvblock_inflight_requests", "In flight.", {}});
  (*inflight->WithLabels({}))->Set(2.5);
  HistogramFamily* lat = *r.AddHistogram(
      {"kvblock_request_duration_seconds", "Latency.", {"method"}}, {0.001, 0.01, 0.1});
  Histogram* get = *lat->WithLabels({"Get"});
  for (double v : {0.0005, 0.001, 0.002, 0.05, 0.5}) get->Observe(v);
  // Registered but without series: omitted.
  ASSERT_TRUE(r.AddCounter({"kvblock_unused_total", "Never used.", {"x"}}).ok());

  const std::string expected =
      "# HELP kvblock_inflight_requests In flight.\n"
      "# TYPE kvblock_inflight_requests gauge\n"
      "kvblock_inflight_requests 2.5\n"
      "# HELP kvblock_request_duration_seconds Latency.\n"
      "# TYPE kvblock_request_duration_seconds histogram\n"
      "kvblock_request_duration_seconds_bucket{method=\"Get\",le=\"0.001\"} 2\n"
      "kvblock_request_duration_seconds_bucket{method=\"Get\",le=\"0.01\"} 3\n"
      "kvblock_request_duration_seconds_bucket{method=\"Get\",le=\"0.1\"} 4\n"
      "kvblock_request_duration_seconds_bucket{method=\"Get\",le=\"+Inf\"} 5\n"
      "kvblock_request_duration_seconds_sum{method=\"Get\"} 0.5535\n"
      "kvblock_request_duration_seconds_count{method=\"Get\"} 5\n"
      "# HELP kvblock_requests_total Requests finished.\n"
      "# TYPE kvblock_requests_total counter\n"
      "kvblock_requests_total{method=\"Get\",code=\"NOT_FOUND\"} 1\n"
      "kvblock_requests_total{method=\"Get\",code=\"OK\"} 41\n"
      "kvblock_requests_total{method=\"Put\",code=\"OK\"} 3\n";
  EXPECT_EQ(RenderPrometheusText(r), expected);
}

TEST(PrometheusTextTest, UnlabelledFamiliesExportZeroAtOnce) {
  MetricsRegistry r;
  ASSERT_TRUE(r.AddCounter({"kvblock_things_total", "Things.", {}}).ok());
  ASSERT_TRUE(r.AddHistogram({"kvblock_size_bytes", "Sizes.", {}}, {1024}).ok());
  EXPECT_EQ(RenderPrometheusText(r),
            "# HELP kvblock_size_bytes Sizes.\n"
            "# TYPE kvblock_size_bytes histogram\n"
            "kvblock_size_bytes_bucket{le=\"1024\"} 0\n"
            "kvblock_size_bytes_bucket{le=\"+Inf\"} 0\n"
            "kvblock_size_bytes_sum 0\n"
            "kvblock_size_bytes_count 0\n"
            "# HELP kvblock_things_total Things.\n"
            "# TYPE kvblock_things_total counter\n"
            "kvblock_things_total 0\n");
}

TEST(PrometheusTextTest, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(EscapeLabelValue("plain /path é"), "plain /path é");
  EXPECT_EQ(EscapeHelp("line1\nback\\slash \"quoted\""), "line1\\nback\\\\slash \"quoted\"");

  MetricsRegistry r;
  GaugeFamily* g = *r.AddGauge({"kvblock_weird", "Help with \\ and\nnewline.", {"path"}});
  (*g->WithLabels({"C:\\data\n\"x\""}))->Set(7);
  EXPECT_EQ(RenderPrometheusText(r),
            "# HELP kvblock_weird Help with \\\\ and\\nnewline.\n"
            "# TYPE kvblock_weird gauge\n"
            "kvblock_weird{path=\"C:\\\\data\\n\\\"x\\\"\"} 7\n");
}

TEST(PrometheusTextTest, FormatsValues) {
  EXPECT_EQ(FormatSampleValue(0), "0");
  EXPECT_EQ(FormatSampleValue(12345678901234.0), "12345678901234");
  EXPECT_EQ(FormatSampleValue(-3), "-3");
  EXPECT_EQ(FormatSampleValue(0.1), "0.1");
  EXPECT_EQ(FormatSampleValue(5e-05), "5e-05");
  EXPECT_EQ(FormatSampleValue(1.0 / 3.0), "0.3333333333333333");
  EXPECT_EQ(FormatSampleValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatSampleValue(-INFINITY), "-Inf");
  EXPECT_EQ(FormatSampleValue(NAN), "NaN");
  // Shortest form reads back exactly.
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> dist(-1e12, 1e12);
  for (int i = 0; i < 1000; ++i) {
    double v = dist(rng) / 997.0;
    EXPECT_EQ(std::stod(FormatSampleValue(v)), v);
  }
}

// Parses one exposition into "series{labels}" -> value, checking each line's shape.
std::map<std::string, double> ParseSamples(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line[0] == '#') continue;
    size_t space = line.rfind(' ');
    EXPECT_NE(space, absl::string_view::npos) << line;
    out[std::string(line.substr(0, space))] = std::stod(std::string(line.substr(space + 1)));
  }
  return out;
}

TEST(PrometheusTextTest, RandomHistogramMatchesIndependentCount) {
  std::mt19937_64 rng(std::random_device{}());
  std::lognormal_distribution<double> dist(-6.0, 1.5);  // latencies around 2.5 ms
  MetricsRegistry r;
  const std::vector<double> bounds = LatencyBuckets();
  Histogram* h =
      *(*r.AddHistogram({"kvblock_op_seconds", "Op latency.", {}}, bounds))->WithLabels({});
  const int n = 5000 + static_cast<int>(rng() % 5000);
  std::vector<double> values;
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    double v = dist(rng);
    values.push_back(v);
    sum += v;
    h->Observe(v);
  }
  std::map<std::string, double> samples = ParseSamples(RenderPrometheusText(r));
  for (double b : bounds) {
    int expected = 0;
    for (double v : values) expected += v <= b ? 1 : 0;
    const std::string key =
        absl::StrCat("kvblock_op_seconds_bucket{le=\"", FormatSampleValue(b), "\"}");
    ASSERT_TRUE(samples.count(key)) << key;
    EXPECT_EQ(samples[key], expected) << key;
  }
  EXPECT_EQ(samples["kvblock_op_seconds_bucket{le=\"+Inf\"}"], n);
  EXPECT_EQ(samples["kvblock_op_seconds_count"], n);
  EXPECT_NEAR(samples["kvblock_op_seconds_sum"], sum, 1e-9 * sum);
}

TEST(HistogramTest, BucketBoundariesAreInclusive) {
  Histogram h({1.0, 2.0});
  h.Observe(1.0);
  h.Observe(1.0000001);
  h.Observe(2.0);
  h.Observe(3.0);
  h.Observe(-5.0);
  h.Observe(NAN);  // ignored
  EXPECT_THAT(h.BucketCounts(), ::testing::ElementsAre(2, 2, 1));
  EXPECT_DOUBLE_EQ(h.Sum(), 1.0 + 1.0000001 + 2.0 + 3.0 - 5.0);
}

TEST(HistogramTest, BucketHelpers) {
  std::vector<double> lat = LatencyBuckets();
  ASSERT_EQ(lat.size(), 22u);
  EXPECT_DOUBLE_EQ(lat.front(), 50e-6);
  EXPECT_GT(lat.back(), 100.0);
  std::vector<double> size = SizeBuckets();
  EXPECT_DOUBLE_EQ(size.front(), 256.0);
  EXPECT_DOUBLE_EQ(size.back(), 1024.0 * 1024 * 1024);
  EXPECT_THAT(ExponentialBuckets(1, 10, 3), ::testing::ElementsAre(1, 10, 100));
}

TEST(RegistryTest, RejectsBadNamesAndLabels) {
  MetricsRegistry r;
  auto code = [](const absl::Status& s) { return s.code(); };
  EXPECT_EQ(code(r.AddCounter({"requests_total", "x", {}}).status()),
            absl::StatusCode::kInvalidArgument);  // no kvblock_ prefix
  EXPECT_EQ(code(r.AddCounter({"kvblock_Requests_total", "x", {}}).status()),
            absl::StatusCode::kInvalidArgument);  // not snake_case
  EXPECT_EQ(code(r.AddCounter({"kvblock_requests", "x", {}}).status()),
            absl::StatusCode::kInvalidArgument);  // counter without _total
  EXPECT_EQ(code(r.AddGauge({"kvblock_bytes_total", "x", {}}).status()),
            absl::StatusCode::kInvalidArgument);  // gauge with _total
  EXPECT_EQ(code(r.AddGauge({"kvblock_bytes", "", {}}).status()),
            absl::StatusCode::kInvalidArgument);  // no help
  EXPECT_EQ(code(r.AddGauge({"kvblock_bytes", "x", {"le"}}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(r.AddGauge({"kvblock_bytes", "x", {"__tier"}}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(r.AddGauge({"kvblock_bytes", "x", {"tier", "tier"}}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(r.AddGauge({"kvblock_bytes", "x", {"tier-name"}}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(r.AddHistogram({"kvblock_lat_seconds", "x", {}}, {1, 1}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(r.AddHistogram({"kvblock_lat_seconds", "x", {}}, {1, INFINITY}).status()),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(r.AddHistogram({"kvblock_lat_seconds", "x", {}}, {}).status()),
            absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(r.AddGauge({"kvblock_bytes", "x", {"tier"}}).ok());
  EXPECT_EQ(code(r.AddGauge({"kvblock_bytes", "x", {}}).status()),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(r.AddHistogram({"kvblock_lat_seconds", "x", {}}, {1}).ok());
  EXPECT_EQ(code(r.AddGauge({"kvblock_lat_seconds_count", "x", {}}).status()),
            absl::StatusCode::kAlreadyExists);  // collides with the histogram's series
  ASSERT_TRUE(r.AddGauge({"kvblock_op_seconds_sum", "x", {}}).ok());
  EXPECT_EQ(code(r.AddHistogram({"kvblock_op_seconds", "x", {}}, {1}).status()),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(code(r.AddCallbackGauge({"kvblock_bytes", "x", {}}, [](CollectorSink&) {}).status()),
            absl::StatusCode::kAlreadyExists);

  GaugeFamily* g = *r.AddGauge({"kvblock_two_labels", "x", {"a", "b"}});
  EXPECT_EQ(code(g->WithLabels({"only-one"}).status()), absl::StatusCode::kInvalidArgument);
  // The same label values always give the same handle.
  EXPECT_EQ(*g->WithLabels({"x", "y"}), *g->WithLabels({std::string("x"), std::string("y")}));
}

TEST(RegistryTest, CollectorsRunAtScrapeTimeAndDropBadSamples) {
  MetricsRegistry r;
  std::atomic<int> runs{0};
  std::mt19937_64 rng(std::random_device{}());
  const double base = 1 + static_cast<double>(rng() % 1000000);
  auto id =
      r.AddCollector({{{"kvblock_tier_bytes", "Bytes.", {"tier"}}, MetricType::kGauge},
                      {{"kvblock_reads_total", "Reads.", {}}, MetricType::kCounter}},
                     [&](CollectorSink& sink) {
                       const int run = ++runs;
                       sink.Add(0, std::vector<std::string>{"memory"}, base * run);
                       sink.Add(0, std::vector<std::string>{"disk"}, base * 2 * run);
                       sink.Add(0, std::vector<std::string>{"disk"}, 1);  // duplicate: dropped
                       sink.Add(0, 5);  // wrong label count: dropped
                       sink.Add(7, 5);  // no such family: dropped
                       sink.Add(1, 10.0 * run);
                     });
  ASSERT_TRUE(id.ok()) << id.status();
  std::map<std::string, double> first = ParseSamples(RenderPrometheusText(r));
  std::map<std::string, double> second = ParseSamples(RenderPrometheusText(r));
  EXPECT_EQ(runs.load(), 2);
  EXPECT_EQ(first["kvblock_tier_bytes{tier=\"memory\"}"], base);
  EXPECT_EQ(first["kvblock_tier_bytes{tier=\"disk\"}"], 2 * base);
  EXPECT_EQ(second["kvblock_tier_bytes{tier=\"disk\"}"], 4 * base);
  EXPECT_EQ(second["kvblock_reads_total"], 20);
  EXPECT_EQ(first.size(), 3u);
  EXPECT_EQ(r.dropped_samples(), 6u);
  std::string text = RenderPrometheusText(r);
  EXPECT_THAT(text, HasSubstr("# TYPE kvblock_reads_total counter\n"));
  // disk sorts before memory.
  EXPECT_LT(text.find("tier=\"disk\""), text.find("tier=\"memory\""));

  ASSERT_TRUE(r.RemoveCollector(*id).ok());
  EXPECT_EQ(RenderPrometheusText(r), "");
  EXPECT_EQ(r.RemoveCollector(*id).code(), absl::StatusCode::kNotFound);
  // The names are free again.
  EXPECT_TRUE(r.AddGauge({"kvblock_tier_bytes", "Again.", {}}).ok());
}

TEST(RegistryTest, RemoveCollectorWaitsForRunningCallback) {
  MetricsRegistry r;
  absl::Notification entered, release;
  std::atomic<bool> callback_done{false};
  auto id = r.AddCallbackGauge({"kvblock_slow", "Slow.", {}}, [&](CollectorSink& sink) {
    entered.Notify();
    release.WaitForNotification();
    sink.Add(0, 1);
    callback_done = true;
  });
  ASSERT_TRUE(id.ok());
  std::thread scraper([&] { (void)r.Collect(); });
  entered.WaitForNotification();
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    ASSERT_TRUE(r.RemoveCollector(*id).ok());
    EXPECT_TRUE(callback_done.load());  // returned only after the callback finished
    removed = true;
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(removed.load());
  release.Notify();
  scraper.join();
  remover.join();
  EXPECT_TRUE(removed.load());
}

TEST(RegistryTest, ConcurrentUpdatesAreExact) {
  MetricsRegistry r;
  CounterFamily* counters = *r.AddCounter({"kvblock_ops_total", "Ops.", {"thread_group"}});
  GaugeFamily* gauges = *r.AddGauge({"kvblock_level", "Level.", {}});
  HistogramFamily* hists = *r.AddHistogram({"kvblock_size_bytes", "Sizes.", {}}, SizeBuckets());
  constexpr int kThreads = 8;
  std::mt19937_64 seed_rng(std::random_device{}());
  const int per_thread = 20000 + static_cast<int>(seed_rng() % 20000);
  std::vector<std::thread> threads;
  std::vector<uint64_t> seeds;
  for (int t = 0; t < kThreads; ++t) seeds.push_back(seed_rng());
  std::atomic<bool> go{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seeds[t]);
      // Handles resolved concurrently with other threads: same label set, same handle.
      Counter* shared = *counters->WithLabels({"shared"});
      Counter* own = *counters->WithLabels({absl::StrCat("g", t % 2)});
      Gauge* level = *gauges->WithLabels({});
      Histogram* h = *hists->WithLabels({});
      while (!go.load()) {
      }
      for (int i = 0; i < per_thread; ++i) {
        shared->Increment();
        own->Increment(3);
        level->Add(1.0);
        h->Observe(static_cast<double>(1 + rng() % 4096));  // integers: the sum is exact
        // Scrapes racing with updates must not disturb them.
        if (t == 0 && i % 5000 == 0) (void)r.Collect();
      }
    });
  }
  go = true;
  for (auto& th : threads) th.join();

  double expected_sum = 0;
  uint64_t expected_small = 0;  // observations <= 256
  for (int t = 0; t < kThreads; ++t) {
    std::mt19937_64 rng(seeds[t]);
    for (int i = 0; i < per_thread; ++i) {
      double v = static_cast<double>(1 + rng() % 4096);
      expected_sum += v;
      expected_small += v <= 256 ? 1 : 0;
    }
  }
  const uint64_t total = static_cast<uint64_t>(kThreads) * per_thread;
  EXPECT_EQ((*counters->WithLabels({"shared"}))->Value(), total);
  EXPECT_EQ((*counters->WithLabels({"g0"}))->Value(), total / 2 * 3);
  EXPECT_EQ((*counters->WithLabels({"g1"}))->Value(), total / 2 * 3);
  EXPECT_EQ((*gauges->WithLabels({}))->Value(), static_cast<double>(total));
  Histogram* h = *hists->WithLabels({});
  std::vector<uint64_t> buckets = h->BucketCounts();
  uint64_t count = 0;
  for (uint64_t c : buckets) count += c;
  EXPECT_EQ(count, total);
  EXPECT_EQ(buckets[0], expected_small);
  EXPECT_EQ(h->Sum(), expected_sum);
  std::map<std::string, double> samples = ParseSamples(RenderPrometheusText(r));
  EXPECT_EQ(samples["kvblock_ops_total{thread_group=\"shared\"}"], total);
  EXPECT_EQ(samples["kvblock_size_bytes_count"], total);
}

}  // namespace
}  // namespace kvblock::metrics
