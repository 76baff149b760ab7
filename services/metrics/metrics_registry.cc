#include "services/metrics/metrics_registry.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace kvblock::metrics {
namespace {

uint64_t ToBits(double v) { return std::bit_cast<uint64_t>(v); }
double FromBits(uint64_t b) { return std::bit_cast<double>(b); }

void AtomicAddDouble(std::atomic<uint64_t>& bits, double delta) {
  uint64_t old_bits = bits.load(std::memory_order_relaxed);
  while (!bits.compare_exchange_weak(old_bits, ToBits(FromBits(old_bits) + delta),
                                     std::memory_order_relaxed)) {
  }
}

bool IsSnakeCase(std::string_view s) {
  if (s.empty() || !(s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z'))) return false;
  for (char c : s) {
    if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::vector<std::string> ToStrings(std::initializer_list<std::string_view> values) {
  std::vector<std::string> out;
  out.reserve(values.size());
  for (std::string_view v : values) out.emplace_back(v);
  return out;
}

// The series names a family occupies in the exposition (histograms use three).
std::vector<std::string> SeriesNames(std::string_view name, MetricType type) {
  if (type != MetricType::kHistogram) return {std::string(name)};
  std::string n(name);
  return {n, n + "_bucket", n + "_sum", n + "_count"};
}

}  // namespace

std::string_view MetricTypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// ---------------------------------------------------------------------------------------------
// Gauge, Histogram

void Gauge::Set(double value) { bits_.store(ToBits(value), std::memory_order_relaxed); }
void Gauge::Add(double delta) { AtomicAddDouble(bits_, delta); }
double Gauge::Value() const { return FromBits(bits_.load(std::memory_order_relaxed)); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      buckets_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  size_t i =
      std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAddDouble(sum_bits_, value);
}

std::vector<uint64_t> Histogram::BucketCounts() const {
  std::vector<uint64_t> out(upper_bounds_.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) out[i] = buckets_[i].load(std::memory_order_relaxed);
  return out;
}

double Histogram::Sum() const { return FromBits(sum_bits_.load(std::memory_order_relaxed)); }

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> out;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) out.push_back(v);
  return out;
}

std::vector<double> LatencyBuckets() { return ExponentialBuckets(50e-6, 2.0, 22); }
std::vector<double> SizeBuckets() { return ExponentialBuckets(256.0, 2.0, 23); }

// ---------------------------------------------------------------------------------------------
// MetricFamily

namespace {
template <typename M>
std::unique_ptr<M> NewMetric(const std::vector<double>& upper_bounds) {
  return std::make_unique<M>();
}
template <>
std::unique_ptr<Histogram> NewMetric<Histogram>(const std::vector<double>& upper_bounds) {
  return std::make_unique<Histogram>(upper_bounds);
}

template <typename M>
constexpr MetricType TypeOf();
template <>
constexpr MetricType TypeOf<Counter>() {
  return MetricType::kCounter;
}
template <>
constexpr MetricType TypeOf<Gauge>() {
  return MetricType::kGauge;
}
template <>
constexpr MetricType TypeOf<Histogram>() {
  return MetricType::kHistogram;
}

void Fill(const Counter& c, SeriesSnapshot& s) { s.value = static_cast<double>(c.Value()); }
void Fill(const Gauge& g, SeriesSnapshot& s) { s.value = g.Value(); }
void Fill(const Histogram& h, SeriesSnapshot& s) {
  s.bucket_counts = h.BucketCounts();
  s.count = 0;
  for (uint64_t c : s.bucket_counts) s.count += c;
  s.sum = h.Sum();
}
}  // namespace

template <typename M>
MetricFamily<M>::MetricFamily(MetricInfo info, std::vector<double> upper_bounds)
    : info_(std::move(info)), upper_bounds_(std::move(upper_bounds)) {}

template <typename M>
absl::StatusOr<M*> MetricFamily<M>::WithLabels(absl::Span<const std::string> label_values) {
  if (label_values.size() != info_.label_names.size()) {
    return absl::InvalidArgumentError(absl::StrCat(info_.name, " takes ", info_.label_names.size(),
                                                   " label values, got ", label_values.size()));
  }
  std::vector<std::string> key(label_values.begin(), label_values.end());
  absl::MutexLock lock(&mu_);
  auto it = series_.find(key);
  if (it == series_.end()) {
    it = series_.emplace(std::move(key), NewMetric<M>(upper_bounds_)).first;
  }
  return it->second.get();
}

template <typename M>
absl::StatusOr<M*> MetricFamily<M>::WithLabels(
    std::initializer_list<std::string_view> label_values) {
  std::vector<std::string> values = ToStrings(label_values);
  return WithLabels(absl::Span<const std::string>(values));
}

template <typename M>
absl::StatusOr<M*> MetricFamily<M>::WithLabels(absl::Span<const std::string_view> label_values) {
  std::vector<std::string> values(label_values.begin(), label_values.end());
  return WithLabels(absl::Span<const std::string>(values));
}

template <typename M>
FamilySnapshot MetricFamily<M>::Snapshot() const {
  FamilySnapshot out;
  out.info = info_;
  out.type = TypeOf<M>();
  out.upper_bounds = upper_bounds_;
  absl::MutexLock lock(&mu_);
  out.series.reserve(series_.size());
  for (const auto& [labels, metric] : series_) {
    SeriesSnapshot s;
    s.label_values = labels;
    Fill(*metric, s);
    out.series.push_back(std::move(s));
  }
  return out;
}

template class MetricFamily<Counter>;
template class MetricFamily<Gauge>;
template class MetricFamily<Histogram>;

// ---------------------------------------------------------------------------------------------
// Validation

absl::Status ValidateMetricInfo(const MetricInfo& info, MetricType type) {
  if (!absl::StartsWith(info.name, "kvblock_") || info.name.size() <= 8 ||
      !IsSnakeCase(info.name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metric name '", info.name, "' must start with kvblock_ and be lowercase snake_case"));
  }
  const bool ends_total = absl::EndsWith(info.name, "_total");
  if (type == MetricType::kCounter && !ends_total) {
    return absl::InvalidArgumentError(
        absl::StrCat("counter name '", info.name, "' must end in _total"));
  }
  if (type != MetricType::kCounter && ends_total) {
    return absl::InvalidArgumentError(absl::StrCat(AbslView(MetricTypeName(type)), " name '",
                                                   info.name,
                                                   "' must not end in _total (counters only)"));
  }
  if (info.help.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("metric '", info.name, "' needs help text"));
  }
  std::set<std::string> seen;
  for (const std::string& label : info.label_names) {
    if (!IsSnakeCase(label) || absl::StartsWith(label, "__")) {
      return absl::InvalidArgumentError(absl::StrCat("label name '", label, "' of ", info.name,
                                                     " must be snake_case, not starting with __"));
    }
    if (label == "le" || label == "quantile") {
      return absl::InvalidArgumentError(
          absl::StrCat("label name '", label, "' of ", info.name, " is reserved"));
    }
    if (!seen.insert(label).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("label name '", label, "' repeated in ", info.name));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// MetricsRegistry

struct MetricsRegistry::Entry {
  MetricType type;
  std::unique_ptr<CounterFamily> counter;
  std::unique_ptr<GaugeFamily> gauge;
  std::unique_ptr<HistogramFamily> histogram;

  FamilySnapshot Snapshot() const {
    switch (type) {
      case MetricType::kCounter:
        return counter->Snapshot();
      case MetricType::kGauge:
        return gauge->Snapshot();
      case MetricType::kHistogram:
        return histogram->Snapshot();
    }
    return {};
  }
};

struct MetricsRegistry::Collector {
  std::vector<CollectedFamilyInfo> families;
  CollectorFn fn;
  // Held shared while `fn` runs, exclusively by RemoveCollector (which then sets `removed`).
  absl::Mutex run_mu;
  bool removed ABSL_GUARDED_BY(run_mu) = false;
};

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

absl::Status MetricsRegistry::CheckNameFree(std::string_view name, MetricType type) const {
  // Compare every exposition series name of the new family against those already taken.
  std::set<std::string, std::less<>> taken;
  for (const auto& [n, e] : families_) {
    for (std::string& s : SeriesNames(n, e->type)) taken.insert(std::move(s));
  }
  for (const auto& [n, id] : collected_names_) taken.insert(n);
  for (const std::string& s : SeriesNames(name, type)) {
    if (taken.count(s) > 0) {
      return absl::AlreadyExistsError(absl::StrCat("metric name '", std::string(name),
                                                   "' clashes with a registered '", s, "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CounterFamily*> MetricsRegistry::AddCounter(MetricInfo info) {
  if (absl::Status s = ValidateMetricInfo(info, MetricType::kCounter); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckNameFree(info.name, MetricType::kCounter); !s.ok()) return s;
  auto entry = std::make_unique<Entry>();
  entry->type = MetricType::kCounter;
  entry->counter = std::make_unique<CounterFamily>(info, std::vector<double>{});
  CounterFamily* family = entry->counter.get();
  if (info.label_names.empty()) (void)family->WithLabels(absl::Span<const std::string>());
  families_.emplace(info.name, std::move(entry));
  return family;
}

absl::StatusOr<GaugeFamily*> MetricsRegistry::AddGauge(MetricInfo info) {
  if (absl::Status s = ValidateMetricInfo(info, MetricType::kGauge); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckNameFree(info.name, MetricType::kGauge); !s.ok()) return s;
  auto entry = std::make_unique<Entry>();
  entry->type = MetricType::kGauge;
  entry->gauge = std::make_unique<GaugeFamily>(info, std::vector<double>{});
  GaugeFamily* family = entry->gauge.get();
  if (info.label_names.empty()) (void)family->WithLabels(absl::Span<const std::string>());
  families_.emplace(info.name, std::move(entry));
  return family;
}

absl::StatusOr<HistogramFamily*> MetricsRegistry::AddHistogram(MetricInfo info,
                                                               std::vector<double> upper_bounds) {
  if (absl::Status s = ValidateMetricInfo(info, MetricType::kHistogram); !s.ok()) return s;
  if (upper_bounds.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(info.name, ": histogram needs buckets"));
  }
  for (size_t i = 0; i < upper_bounds.size(); ++i) {
    if (!std::isfinite(upper_bounds[i]) || (i > 0 && upper_bounds[i] <= upper_bounds[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          info.name, ": bucket bounds must be finite and strictly increasing (+Inf is implicit)"));
    }
  }
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckNameFree(info.name, MetricType::kHistogram); !s.ok()) return s;
  auto entry = std::make_unique<Entry>();
  entry->type = MetricType::kHistogram;
  entry->histogram = std::make_unique<HistogramFamily>(info, std::move(upper_bounds));
  HistogramFamily* family = entry->histogram.get();
  if (info.label_names.empty()) (void)family->WithLabels(absl::Span<const std::string>());
  families_.emplace(info.name, std::move(entry));
  return family;
}

absl::StatusOr<CollectorId> MetricsRegistry::AddCollector(std::vector<CollectedFamilyInfo> families,
                                                          CollectorFn fn) {
  if (families.empty()) return absl::InvalidArgumentError("collector without families");
  if (!fn) return absl::InvalidArgumentError("collector without a callback");
  std::set<std::string> own;
  for (const CollectedFamilyInfo& f : families) {
    if (f.type == MetricType::kHistogram) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.info.name, ": collectors produce counters and gauges only"));
    }
    if (absl::Status s = ValidateMetricInfo(f.info, f.type); !s.ok()) return s;
    if (!own.insert(f.info.name).second) {
      return absl::AlreadyExistsError(absl::StrCat(f.info.name, " listed twice in a collector"));
    }
  }
  absl::MutexLock lock(&mu_);
  for (const CollectedFamilyInfo& f : families) {
    if (absl::Status s = CheckNameFree(f.info.name, f.type); !s.ok()) return s;
  }
  const CollectorId id = next_collector_id_++;
  auto collector = std::make_shared<Collector>();
  collector->families = std::move(families);
  collector->fn = std::move(fn);
  for (const CollectedFamilyInfo& f : collector->families) collected_names_[f.info.name] = id;
  collectors_.emplace(id, std::move(collector));
  return id;
}

absl::StatusOr<CollectorId> MetricsRegistry::AddCallbackGauge(MetricInfo info, CollectorFn fn) {
  return AddCollector({{std::move(info), MetricType::kGauge}}, std::move(fn));
}

absl::StatusOr<CollectorId> MetricsRegistry::AddCallbackCounter(MetricInfo info, CollectorFn fn) {
  return AddCollector({{std::move(info), MetricType::kCounter}}, std::move(fn));
}

absl::Status MetricsRegistry::RemoveCollector(CollectorId id) {
  std::shared_ptr<Collector> collector;
  {
    absl::MutexLock lock(&mu_);
    auto it = collectors_.find(id);
    if (it == collectors_.end()) {
      return absl::NotFoundError(absl::StrCat("no collector with id ", id));
    }
    collector = std::move(it->second);
    collectors_.erase(it);
    for (const CollectedFamilyInfo& f : collector->families) collected_names_.erase(f.info.name);
  }
  absl::MutexLock run_lock(&collector->run_mu);  // waits for a run in progress
  collector->removed = true;
  return absl::OkStatus();
}

namespace {

// Gathers one collector run into family snapshots, rejecting malformed samples.
class SnapshotSink : public CollectorSink {
 public:
  SnapshotSink(const std::vector<CollectedFamilyInfo>& families, std::atomic<uint64_t>* dropped)
      : dropped_(dropped) {
    for (const CollectedFamilyInfo& f : families) {
      FamilySnapshot snap;
      snap.info = f.info;
      snap.type = f.type;
      out_.push_back(std::move(snap));
    }
    seen_.resize(out_.size());
  }

  void Add(size_t family, absl::Span<const std::string> label_values, double value) override {
    if (family >= out_.size() || label_values.size() != out_[family].info.label_names.size()) {
      dropped_->fetch_add(1, std::memory_order_relaxed);
      return;
    }
    std::vector<std::string> key(label_values.begin(), label_values.end());
    if (!seen_[family].insert(key).second) {
      dropped_->fetch_add(1, std::memory_order_relaxed);
      return;
    }
    SeriesSnapshot s;
    s.label_values = std::move(key);
    s.value = value;
    out_[family].series.push_back(std::move(s));
  }

  std::vector<FamilySnapshot> Take() {
    for (FamilySnapshot& f : out_) {
      std::sort(f.series.begin(), f.series.end(),
                [](const SeriesSnapshot& a, const SeriesSnapshot& b) {
                  return a.label_values < b.label_values;
                });
    }
    return std::move(out_);
  }

 private:
  std::atomic<uint64_t>* dropped_;
  std::vector<FamilySnapshot> out_;
  std::vector<std::set<std::vector<std::string>>> seen_;
};

}  // namespace

std::vector<FamilySnapshot> MetricsRegistry::Collect() const {
  std::vector<const Entry*> entries;
  std::vector<std::shared_ptr<Collector>> collectors;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, entry] : families_) entries.push_back(entry.get());
    for (const auto& [id, c] : collectors_) collectors.push_back(c);
  }
  std::vector<FamilySnapshot> out;
  out.reserve(entries.size());
  for (const Entry* e : entries) out.push_back(e->Snapshot());
  for (const std::shared_ptr<Collector>& c : collectors) {
    absl::ReaderMutexLock run_lock(&c->run_mu);
    if (c->removed) continue;
    SnapshotSink sink(c->families, &dropped_samples_);
    c->fn(sink);
    for (FamilySnapshot& f : sink.Take()) out.push_back(std::move(f));
  }
  std::sort(out.begin(), out.end(), [](const FamilySnapshot& a, const FamilySnapshot& b) {
    return a.info.name < b.info.name;
  });
  return out;
}

}  // namespace kvblock::metrics
