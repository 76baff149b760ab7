// The metrics registry every kvblock process exposes: counters, gauges and histograms with label
// sets, plus collectors (callback families read at scrape time, e.g. memory use, RocksDB stats).
// Prometheus text exposition lives in prometheus_text.h, HTTP in metrics_http_server.h, and the
// standard kvblock families in standard_metrics.h; docs/metrics.md lists every metric.
//
// Hot paths: resolve a label set once (`family->WithLabels({...})`), keep the returned handle
// (valid for the registry's lifetime), and update it with one relaxed atomic operation.
//
//   MetricsRegistry registry;
//   CounterFamily* requests = *registry.AddCounter(
//       {"kvblock_requests_total", "Requests handled.", {"method", "code"}});
//   Counter* get_ok = *requests->WithLabels({"Get", "OK"});
//   get_ok->Increment();
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace kvblock::metrics {

enum class MetricType : uint8_t { kCounter, kGauge, kHistogram };
// "counter", "gauge", "histogram" (the Prometheus TYPE keyword).
std::string_view MetricTypeName(MetricType type);

// What a family is called and which labels each of its series carries.
struct MetricInfo {
  // Full metric name: `kvblock_` prefix, lowercase snake_case; counters end in `_total`, other
  // types must not; base units in the name (`_seconds`, `_bytes`).
  std::string name;
  // One line of help text shown in `# HELP`; must not be empty.
  std::string help;
  // Label names, lowercase snake_case, not starting with `__`; `le` is reserved. May be empty.
  std::vector<std::string> label_names;
};

// A monotonically increasing integer (requests, bytes, hits). Thread-safe, lock-free.
class Counter {
 public:
  void Increment(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down (queue depth, bytes in use). Thread-safe, lock-free.
class Gauge {
 public:
  void Set(double value);
  // Atomic read-modify-write (compare-and-swap loop).
  void Add(double delta);
  void Increment() { Add(1.0); }
  void Decrement() { Add(-1.0); }
  double Value() const;

 private:
  std::atomic<uint64_t> bits_{0};  // a double's bit pattern; 0 bits == 0.0
};

// A distribution over fixed buckets (latencies in seconds, sizes in bytes). Observe() is
// lock-free: a binary search over the bounds plus two atomic updates. Thread-safe.
class Histogram {
 public:
  // `upper_bounds` must be finite and strictly increasing (validated by the registry).
  explicit Histogram(std::vector<double> upper_bounds);

  // Counts `value` in the first bucket whose upper bound is >= value (the `le` semantics), or
  // in the implicit +Inf bucket. NaN is ignored.
  void Observe(double value);
  void ObserveDuration(absl::Duration d) { Observe(absl::ToDoubleSeconds(d)); }

  const std::vector<double>& upper_bounds() const { return upper_bounds_; }
  // Per-bucket (non-cumulative) counts, size upper_bounds().size() + 1 (last is +Inf).
  std::vector<uint64_t> BucketCounts() const;
  double Sum() const;

 private:
  const std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;
  std::atomic<uint64_t> sum_bits_{0};
};

// Observes the time between construction and destruction into a histogram (seconds).
class ScopedLatency {
 public:
  explicit ScopedLatency(Histogram* histogram) : histogram_(histogram), start_(absl::Now()) {}
  ~ScopedLatency() { histogram_->ObserveDuration(absl::Now() - start_); }
  ScopedLatency(const ScopedLatency&) = delete;
  ScopedLatency& operator=(const ScopedLatency&) = delete;

 private:
  Histogram* histogram_;
  absl::Time start_;
};

// Bucket helpers. Upper bounds `start * factor^i` for i in [0, count).
std::vector<double> ExponentialBuckets(double start, double factor, int count);
// Latencies in seconds: 50 us .. ~105 s in 22 doubling steps.
std::vector<double> LatencyBuckets();
// Sizes in bytes: 256 B .. 1 GiB in powers of 2 (23 buckets).
std::vector<double> SizeBuckets();

// One labelled series of a family, as read at one instant.
struct SeriesSnapshot {
  std::vector<std::string> label_values;  // same order as the family's label_names
  double value = 0;                       // counters and gauges
  // Histograms only: per-bucket (non-cumulative) counts, the last one for +Inf.
  std::vector<uint64_t> bucket_counts;
  double sum = 0;
  uint64_t count = 0;  // == sum of bucket_counts
};

// A family as read at one instant: series sorted by label values.
struct FamilySnapshot {
  MetricInfo info;
  MetricType type = MetricType::kCounter;
  std::vector<double> upper_bounds;  // histograms only
  std::vector<SeriesSnapshot> series;
};

// A family of series that share a name and label names; each distinct label-value tuple is one
// series, created on first use and kept for the registry's lifetime (keep label cardinality
// bounded: methods, codes, tiers, never keys or request ids).
template <typename M>
class MetricFamily {
 public:
  // Returns the series for `label_values` (one per label name, in order), creating it on first
  // use. The pointer stays valid for the registry's lifetime; callers on hot paths cache it.
  // Thread-safe (one mutex per family; taken only here and in Collect).
  // INVALID_ARGUMENT when the number of values differs from the number of label names.
  absl::StatusOr<M*> WithLabels(std::initializer_list<std::string_view> label_values);
  absl::StatusOr<M*> WithLabels(absl::Span<const std::string_view> label_values);
  absl::StatusOr<M*> WithLabels(absl::Span<const std::string> label_values);

  const MetricInfo& info() const { return info_; }

  // Internal: constructed by MetricsRegistry only.
  MetricFamily(MetricInfo info, std::vector<double> upper_bounds);
  FamilySnapshot Snapshot() const;

 private:
  const MetricInfo info_;
  const std::vector<double> upper_bounds_;  // histograms only
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<M>> series_ ABSL_GUARDED_BY(mu_);
};

using CounterFamily = MetricFamily<Counter>;
using GaugeFamily = MetricFamily<Gauge>;
using HistogramFamily = MetricFamily<Histogram>;

// A family whose values a collector produces at scrape time (counter or gauge).
struct CollectedFamilyInfo {
  MetricInfo info;
  MetricType type = MetricType::kGauge;  // kCounter or kGauge
};

// Receives the samples of one collector run. `family` indexes the collector's families.
class CollectorSink {
 public:
  virtual ~CollectorSink() = default;
  // Samples with a wrong label count or family index, or a label-value tuple already emitted
  // for that family in this run, are dropped (counted in MetricsRegistry::dropped_samples()).
  virtual void Add(size_t family, absl::Span<const std::string> label_values, double value) = 0;
  void Add(size_t family, double value) { Add(family, absl::Span<const std::string>(), value); }
};

// Called on every scrape from an HTTP thread, never with registry locks held; must be
// thread-safe and quick (it delays the scrape).
using CollectorFn = std::function<void(CollectorSink& sink)>;
using CollectorId = uint64_t;

// Owns every family of one process. Thread-safe: all methods may be called concurrently.
class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Register a family; the returned pointer is owned by the registry and valid for its lifetime.
  // A family without labels gets its single series at once (exported as 0 until updated).
  // INVALID_ARGUMENT: bad name, help or label names (see MetricInfo), or histogram bounds not
  // finite and strictly increasing. ALREADY_EXISTS: the name (or, for histograms, one of its
  // `_bucket`/`_sum`/`_count` series names) is taken.
  absl::StatusOr<CounterFamily*> AddCounter(MetricInfo info);
  absl::StatusOr<GaugeFamily*> AddGauge(MetricInfo info);
  absl::StatusOr<HistogramFamily*> AddHistogram(MetricInfo info, std::vector<double> upper_bounds);

  // Register families whose values `fn` produces at scrape time (one call per scrape for all of
  // them). Returns an id for RemoveCollector. Errors as for AddCounter, and INVALID_ARGUMENT for
  // an empty family list or a histogram type.
  absl::StatusOr<CollectorId> AddCollector(std::vector<CollectedFamilyInfo> families,
                                           CollectorFn fn);
  // Shorthands for a collector of one family.
  absl::StatusOr<CollectorId> AddCallbackGauge(MetricInfo info, CollectorFn fn);
  absl::StatusOr<CollectorId> AddCallbackCounter(MetricInfo info, CollectorFn fn);
  // Unregisters a collector and its families. Blocks until any run of its callback in progress
  // has returned, so the callback's captures may be destroyed afterwards.
  // NOT_FOUND for an unknown id.
  absl::Status RemoveCollector(CollectorId id);

  // Reads every family (running the collectors), sorted by name. Thread-safe.
  std::vector<FamilySnapshot> Collect() const;

  // Samples dropped from collectors since construction (wrong label count, duplicates).
  uint64_t dropped_samples() const { return dropped_samples_.load(std::memory_order_relaxed); }

 private:
  struct Collector;
  struct Entry;
  absl::Status CheckNameFree(std::string_view name, MetricType type) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  // Regular families by name (never removed, so handles stay valid).
  std::map<std::string, std::unique_ptr<Entry>, std::less<>> families_ ABSL_GUARDED_BY(mu_);
  // Names taken by collectors (name -> collector id).
  std::map<std::string, CollectorId, std::less<>> collected_names_ ABSL_GUARDED_BY(mu_);
  std::map<CollectorId, std::shared_ptr<Collector>> collectors_ ABSL_GUARDED_BY(mu_);
  CollectorId next_collector_id_ ABSL_GUARDED_BY(mu_) = 1;
  mutable std::atomic<uint64_t> dropped_samples_{0};
};

// Name and label checks used by the registry (exposed for tests and for owners that build
// names dynamically). INVALID_ARGUMENT with the reason.
absl::Status ValidateMetricInfo(const MetricInfo& info, MetricType type);

}  // namespace kvblock::metrics
