// What `/api/stats` serves and `/dashboard` draws: every metric as JSON plus the derived numbers
// a human wants at a glance (hit rate, requests/s, bytes/s, latency percentiles estimated from
// histogram buckets, memory and disk use), current and as a short history sampled in the
// background. Percentiles and rates are computed here so the page stays a thin renderer.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "services/metrics/metrics_registry.h"

namespace kvblock::metrics {

// One series (or the sum of several) that the dashboard plots, e.g. the memory tier's bytes.
struct SeriesSelector {
  // Shown in the legend. Default: none.
  std::string title;
  // Family name (counter or gauge). Default: none.
  std::string name;
  // Only series whose labels have these values are summed; empty = all series. Default: empty.
  std::vector<std::pair<std::string, std::string>> match;
};

// Which families feed the dashboard's charts. Defaults are the standard families of
// standard_metrics.h; a family that is absent just leaves its chart empty.
struct DashboardOptions {
  // Counter of finished requests. Default: "kvblock_requests_total".
  std::string requests_counter = "kvblock_requests_total";
  // Label of requests_counter holding the status code. Default: "code".
  std::string code_label = "code";
  // Code values that are not errors (a cache's NOT_FOUND is a miss, counted in the hit rate).
  // Default: {"OK", "NOT_FOUND"}.
  std::vector<std::string> ok_codes = {"OK", "NOT_FOUND"};
  // Latency histogram (seconds); all its series are merged for p50/p90/p99.
  // Default: "kvblock_request_duration_seconds".
  std::string latency_histogram = "kvblock_request_duration_seconds";
  // Counter of payload bytes. Default: "kvblock_bytes_total".
  std::string bytes_counter = "kvblock_bytes_total";
  // Label of bytes_counter whose values split the throughput chart. Default: "direction".
  std::string bytes_split_label = "direction";
  // Counters whose ratio hits / (hits + misses) is the hit rate.
  // Default: "kvblock_cache_hits_total" and "kvblock_cache_misses_total".
  std::string hits_counter = "kvblock_cache_hits_total";
  std::string misses_counter = "kvblock_cache_misses_total";
  // Memory chart lines (gauges, bytes). Default: process RSS, memory tier bytes and capacity.
  std::vector<SeriesSelector> memory = {
      {"Resident memory", "kvblock_process_resident_memory_bytes", {}},
      {"Memory tier", "kvblock_tier_bytes", {{"tier", "memory"}}},
      {"Memory tier budget", "kvblock_tier_capacity_bytes", {{"tier", "memory"}}},
      {"GPU tier", "kvblock_tier_bytes", {{"tier", "gpu"}}}};
  // Disk chart lines (gauges, bytes). Default: disk tier bytes, free space of data dirs.
  std::vector<SeriesSelector> disk = {{"Disk tier", "kvblock_tier_bytes", {{"tier", "disk"}}},
                                      {"Filesystem free", "kvblock_filesystem_avail_bytes", {}}};

  absl::Status Validate() const;
};

// The value below which a fraction `q` (0..1) of observations fall, estimated from bucket counts
// (non-cumulative, last one +Inf) by linear interpolation inside the bucket, as Prometheus'
// histogram_quantile() does: the first bucket starts at 0 (or at its bound if negative), and a
// quantile landing in the +Inf bucket returns the largest finite bound. NaN when empty.
double HistogramQuantile(double q, const std::vector<double>& upper_bounds,
                         const std::vector<uint64_t>& bucket_counts);

// Running totals the derived numbers are computed from (one per sample).
struct DashboardTotals {
  absl::Time time;
  double requests = 0;
  double errors = 0;
  double bytes = 0;
  std::vector<std::pair<std::string, double>> bytes_by;  // by bytes_split_label value, sorted
  double hits = 0;
  double misses = 0;
  bool has_hit_data = false;
  std::vector<double> latency_bounds;
  std::vector<uint64_t> latency_buckets;  // merged over series, non-cumulative
  std::vector<double> memory;             // per DashboardOptions::memory; NaN if absent
  std::vector<double> disk;               // per DashboardOptions::disk; NaN if absent
};

DashboardTotals ComputeTotals(const std::vector<FamilySnapshot>& families,
                              const DashboardOptions& options, absl::Time now);

// Rates and percentiles between two totals (`newer` later than `older`). Fields are NaN where
// there is no data (no requests in the window: no latency; no lookups: no hit rate).
struct DashboardPoint {
  absl::Time time;
  double window_s = 0;
  double requests_per_s = 0;
  double errors_per_s = 0;
  double bytes_per_s = 0;
  std::vector<std::pair<std::string, double>> bytes_per_s_by;
  double hit_rate = 0;
  double p50_s = 0, p90_s = 0, p99_s = 0;
  std::vector<double> memory;
  std::vector<double> disk;
};

DashboardPoint ComputePoint(const DashboardTotals& older, const DashboardTotals& newer);

// Samples DashboardTotals periodically (driven by the owner, e.g. MetricsHttpServer's sampler
// thread) and keeps the history the dashboard draws. Thread-safe.
class StatsHistory {
 public:
  // `history_points`: points kept; `rate_window`: span rates and percentiles are computed over.
  StatsHistory(DashboardOptions options, int history_points, absl::Duration rate_window);

  // Collects `registry` now and appends a point. Thread-safe.
  void Sample(const MetricsRegistry& registry, absl::Time now);

  // The `/api/stats` document: title, times, `current` (live totals against the sample about
  // rate_window ago), `history` (column arrays), and `metrics` (every family, histograms with
  // cumulative buckets and p50/p90/p99). Thread-safe.
  nlohmann::json StatsJson(const MetricsRegistry& registry, const std::string& title,
                           absl::Time now) const;

 private:
  const DashboardOptions options_;
  const size_t history_points_;
  const absl::Duration rate_window_;
  mutable absl::Mutex mu_;
  std::deque<DashboardTotals> totals_ ABSL_GUARDED_BY(mu_);  // samples within the rate window
  std::deque<DashboardPoint> points_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvblock::metrics
