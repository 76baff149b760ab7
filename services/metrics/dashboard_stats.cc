#include "services/metrics/dashboard_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "services/metrics/standard_metrics.h"

namespace kvblock::metrics {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const FamilySnapshot* Find(const std::vector<FamilySnapshot>& families, const std::string& name) {
  auto it = std::lower_bound(
      families.begin(), families.end(), name,
      [](const FamilySnapshot& f, const std::string& n) { return f.info.name < n; });
  if (it != families.end() && it->info.name == name) return &*it;
  // Collect() sorts by name, but tolerate unsorted input from other callers.
  for (const FamilySnapshot& f : families) {
    if (f.info.name == name) return &f;
  }
  return nullptr;
}

int LabelIndex(const FamilySnapshot& f, const std::string& label) {
  for (size_t i = 0; i < f.info.label_names.size(); ++i) {
    if (f.info.label_names[i] == label) return static_cast<int>(i);
  }
  return -1;
}

double SumSeries(const FamilySnapshot* f) {
  double sum = 0;
  if (f == nullptr) return 0;
  for (const SeriesSnapshot& s : f->series) sum += s.value;
  return sum;
}

double SelectorValue(const std::vector<FamilySnapshot>& families, const SeriesSelector& sel) {
  const FamilySnapshot* f = Find(families, sel.name);
  if (f == nullptr || f->type == MetricType::kHistogram) return kNaN;
  std::vector<std::pair<int, std::string>> match;
  for (const auto& [label, value] : sel.match) {
    int i = LabelIndex(*f, label);
    if (i < 0) return kNaN;
    match.emplace_back(i, value);
  }
  double sum = 0;
  bool any = false;
  for (const SeriesSnapshot& s : f->series) {
    bool ok = true;
    for (const auto& [i, value] : match) ok = ok && s.label_values[i] == value;
    if (!ok) continue;
    sum += s.value;
    any = true;
  }
  return any ? sum : kNaN;
}

// Counter delta that survives a reset (a restarted process starts from 0 again).
double Delta(double older, double newer) { return newer >= older ? newer - older : newer; }

// A double for JSON: NaN and infinities become null.
nlohmann::json Num(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

double UnixSeconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

}  // namespace

absl::Status DashboardOptions::Validate() const {
  for (const std::string* name :
       {&requests_counter, &latency_histogram, &bytes_counter, &hits_counter, &misses_counter}) {
    if (name->empty()) return absl::InvalidArgumentError("dashboard metric names must be set");
  }
  for (const auto* list : {&memory, &disk}) {
    for (const SeriesSelector& s : *list) {
      if (s.title.empty() || s.name.empty()) {
        return absl::InvalidArgumentError("dashboard series need a title and a metric name");
      }
    }
  }
  return absl::OkStatus();
}

double HistogramQuantile(double q, const std::vector<double>& upper_bounds,
                         const std::vector<uint64_t>& bucket_counts) {
  if (bucket_counts.size() != upper_bounds.size() + 1 || std::isnan(q)) return kNaN;
  uint64_t total = 0;
  for (uint64_t c : bucket_counts) total += c;
  if (total == 0) return kNaN;
  q = std::clamp(q, 0.0, 1.0);
  const double rank = q * static_cast<double>(total);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bucket_counts.size(); ++i) {
    const uint64_t before = cumulative;
    cumulative += bucket_counts[i];
    if (static_cast<double>(cumulative) < rank || bucket_counts[i] == 0) continue;
    if (i == upper_bounds.size()) return upper_bounds.empty() ? kNaN : upper_bounds.back();
    const double upper = upper_bounds[i];
    const double lower = i == 0 ? std::min(0.0, upper) : upper_bounds[i - 1];
    const double fraction =
        (rank - static_cast<double>(before)) / static_cast<double>(bucket_counts[i]);
    return lower + (upper - lower) * fraction;
  }
  return upper_bounds.empty() ? kNaN : upper_bounds.back();
}

DashboardTotals ComputeTotals(const std::vector<FamilySnapshot>& families,
                              const DashboardOptions& options, absl::Time now) {
  DashboardTotals t;
  t.time = now;
  if (const FamilySnapshot* f = Find(families, options.requests_counter)) {
    const int code = LabelIndex(*f, options.code_label);
    for (const SeriesSnapshot& s : f->series) {
      t.requests += s.value;
      if (code >= 0 && std::find(options.ok_codes.begin(), options.ok_codes.end(),
                                 s.label_values[code]) == options.ok_codes.end()) {
        t.errors += s.value;
      }
    }
  }
  if (const FamilySnapshot* f = Find(families, options.bytes_counter)) {
    const int split = LabelIndex(*f, options.bytes_split_label);
    std::map<std::string, double> by;
    for (const SeriesSnapshot& s : f->series) {
      t.bytes += s.value;
      if (split >= 0) by[s.label_values[split]] += s.value;
    }
    t.bytes_by.assign(by.begin(), by.end());
  }
  const FamilySnapshot* hits = Find(families, options.hits_counter);
  const FamilySnapshot* misses = Find(families, options.misses_counter);
  t.has_hit_data = hits != nullptr || misses != nullptr;
  t.hits = SumSeries(hits);
  t.misses = SumSeries(misses);
  if (const FamilySnapshot* f = Find(families, options.latency_histogram);
      f != nullptr && f->type == MetricType::kHistogram) {
    t.latency_bounds = f->upper_bounds;
    t.latency_buckets.assign(f->upper_bounds.size() + 1, 0);
    for (const SeriesSnapshot& s : f->series) {
      for (size_t i = 0; i < s.bucket_counts.size() && i < t.latency_buckets.size(); ++i) {
        t.latency_buckets[i] += s.bucket_counts[i];
      }
    }
  }
  for (const SeriesSelector& sel : options.memory) t.memory.push_back(SelectorValue(families, sel));
  for (const SeriesSelector& sel : options.disk) t.disk.push_back(SelectorValue(families, sel));
  return t;
}

DashboardPoint ComputePoint(const DashboardTotals& older, const DashboardTotals& newer) {
  DashboardPoint p;
  p.time = newer.time;
  p.window_s = absl::ToDoubleSeconds(newer.time - older.time);
  p.memory = newer.memory;
  p.disk = newer.disk;
  if (p.window_s <= 0) {
    p.requests_per_s = p.errors_per_s = p.bytes_per_s = p.hit_rate = kNaN;
    p.p50_s = p.p90_s = p.p99_s = kNaN;
    return p;
  }
  p.requests_per_s = Delta(older.requests, newer.requests) / p.window_s;
  p.errors_per_s = Delta(older.errors, newer.errors) / p.window_s;
  p.bytes_per_s = Delta(older.bytes, newer.bytes) / p.window_s;
  for (const auto& [key, value] : newer.bytes_by) {
    double before = 0;
    for (const auto& [k, v] : older.bytes_by) {
      if (k == key) before = v;
    }
    p.bytes_per_s_by.emplace_back(key, Delta(before, value) / p.window_s);
  }
  const double dh = Delta(older.hits, newer.hits);
  const double dm = Delta(older.misses, newer.misses);
  p.hit_rate = dh + dm > 0 ? dh / (dh + dm) : kNaN;
  std::vector<uint64_t> window = newer.latency_buckets;
  if (older.latency_bounds == newer.latency_bounds &&
      older.latency_buckets.size() == window.size()) {
    bool reset = false;
    for (size_t i = 0; i < window.size(); ++i)
      reset = reset || window[i] < older.latency_buckets[i];
    if (!reset) {
      for (size_t i = 0; i < window.size(); ++i) window[i] -= older.latency_buckets[i];
    }
  }
  p.p50_s = HistogramQuantile(0.50, newer.latency_bounds, window);
  p.p90_s = HistogramQuantile(0.90, newer.latency_bounds, window);
  p.p99_s = HistogramQuantile(0.99, newer.latency_bounds, window);
  return p;
}

StatsHistory::StatsHistory(DashboardOptions options, int history_points, absl::Duration rate_window)
    : options_(std::move(options)),
      history_points_(static_cast<size_t>(std::max(1, history_points))),
      rate_window_(rate_window) {}

void StatsHistory::Sample(const MetricsRegistry& registry, absl::Time now) {
  DashboardTotals totals = ComputeTotals(registry.Collect(), options_, now);
  absl::MutexLock lock(&mu_);
  totals_.push_back(std::move(totals));
  // Keep the newest sample at or before `now - rate_window` as the base, and all after it.
  while (totals_.size() >= 3 && totals_[1].time <= now - rate_window_) totals_.pop_front();
  if (totals_.size() >= 2) {
    points_.push_back(ComputePoint(totals_.front(), totals_.back()));
    while (points_.size() > history_points_) points_.pop_front();
  }
}

nlohmann::json StatsHistory::StatsJson(const MetricsRegistry& registry, const std::string& title,
                                       absl::Time now) const {
  const std::vector<FamilySnapshot> families = registry.Collect();
  const DashboardTotals live = ComputeTotals(families, options_, now);
  nlohmann::json out;
  out["title"] = title;
  out["version"] = KvblockVersion();
  out["now_unix_s"] = UnixSeconds(now);
  out["rate_window_s"] = absl::ToDoubleSeconds(rate_window_);

  auto process_value = [&](const char* name) {
    const FamilySnapshot* f = Find(families, name);
    return Num(f != nullptr && !f->series.empty() ? f->series[0].value : kNaN);
  };
  out["process"] = {{"uptime_s", process_value(kProcessUptime)},
                    {"resident_memory_bytes", process_value(kProcessResidentMemory)},
                    {"cpu_seconds", process_value(kProcessCpuSeconds)},
                    {"threads", process_value(kProcessThreads)},
                    {"open_fds", process_value(kProcessOpenFds)}};

  std::vector<DashboardPoint> points;
  DashboardPoint current;
  {
    absl::MutexLock lock(&mu_);
    points.assign(points_.begin(), points_.end());
    // Base: the newest sample at least rate_window old, else the oldest one.
    const DashboardTotals* base = nullptr;
    for (const DashboardTotals& t : totals_) {
      if (t.time <= now - rate_window_ || base == nullptr) base = &t;
    }
    current = base != nullptr ? ComputePoint(*base, live) : ComputePoint(live, live);
  }

  auto selector_titles = [](const std::vector<SeriesSelector>& list) {
    nlohmann::json titles = nlohmann::json::array();
    for (const SeriesSelector& s : list) titles.push_back(s.title);
    return titles;
  };
  auto named_values = [](const std::vector<SeriesSelector>& list, const std::vector<double>& v) {
    nlohmann::json out = nlohmann::json::array();
    for (size_t i = 0; i < list.size() && i < v.size(); ++i) {
      out.push_back({{"title", list[i].title}, {"bytes", Num(v[i])}});
    }
    return out;
  };
  nlohmann::json bytes_by = nlohmann::json::object();
  for (const auto& [k, v] : current.bytes_per_s_by) bytes_by[k] = Num(v);
  out["current"] = {
      {"window_s", Num(current.window_s)},
      {"requests_per_s", Num(current.requests_per_s)},
      {"errors_per_s", Num(current.errors_per_s)},
      {"bytes_per_s", Num(current.bytes_per_s)},
      {"bytes_per_s_by", bytes_by},
      {"hit_rate", Num(current.hit_rate)},
      {"p50_s", Num(current.p50_s)},
      {"p90_s", Num(current.p90_s)},
      {"p99_s", Num(current.p99_s)},
      {"requests_total", live.requests},
      {"errors_total", live.errors},
      {"bytes_total", live.bytes},
      {"hits_total", live.has_hit_data ? nlohmann::json(live.hits) : nlohmann::json(nullptr)},
      {"misses_total", live.has_hit_data ? nlohmann::json(live.misses) : nlohmann::json(nullptr)},
      {"memory", named_values(options_.memory, live.memory)},
      {"disk", named_values(options_.disk, live.disk)},
  };

  // History as columns (compact, and what a chart wants).
  nlohmann::json h;
  nlohmann::json t = nlohmann::json::array(), rps = t, eps = t, bps = t, hr = t, p50 = t, p90 = t,
                 p99 = t;
  std::map<std::string, nlohmann::json> bps_by;
  std::vector<nlohmann::json> mem(options_.memory.size(), nlohmann::json::array());
  std::vector<nlohmann::json> disk(options_.disk.size(), nlohmann::json::array());
  for (const DashboardPoint& p : points) {
    t.push_back(UnixSeconds(p.time));
    rps.push_back(Num(p.requests_per_s));
    eps.push_back(Num(p.errors_per_s));
    bps.push_back(Num(p.bytes_per_s));
    hr.push_back(Num(p.hit_rate));
    p50.push_back(Num(p.p50_s));
    p90.push_back(Num(p.p90_s));
    p99.push_back(Num(p.p99_s));
    for (size_t i = 0; i < mem.size() && i < p.memory.size(); ++i)
      mem[i].push_back(Num(p.memory[i]));
    for (size_t i = 0; i < disk.size() && i < p.disk.size(); ++i) disk[i].push_back(Num(p.disk[i]));
  }
  // bytes/s split: one column per key seen anywhere in the history (null where absent).
  for (const DashboardPoint& p : points) {
    for (const auto& [k, v] : p.bytes_per_s_by) bps_by.emplace(k, nlohmann::json::array());
  }
  for (auto& [k, col] : bps_by) {
    for (const DashboardPoint& p : points) {
      nlohmann::json v = nullptr;
      for (const auto& [key, value] : p.bytes_per_s_by) {
        if (key == k) v = Num(value);
      }
      col.push_back(v);
    }
  }
  h["t"] = std::move(t);
  h["requests_per_s"] = std::move(rps);
  h["errors_per_s"] = std::move(eps);
  h["bytes_per_s"] = std::move(bps);
  h["bytes_per_s_by"] = bps_by;
  h["hit_rate"] = std::move(hr);
  h["p50_s"] = std::move(p50);
  h["p90_s"] = std::move(p90);
  h["p99_s"] = std::move(p99);
  h["memory_titles"] = selector_titles(options_.memory);
  h["memory"] = mem;
  h["disk_titles"] = selector_titles(options_.disk);
  h["disk"] = disk;
  out["history"] = std::move(h);

  nlohmann::json metrics = nlohmann::json::array();
  for (const FamilySnapshot& f : families) {
    nlohmann::json fam = {{"name", f.info.name},
                          {"type", std::string(MetricTypeName(f.type))},
                          {"help", f.info.help},
                          {"label_names", f.info.label_names}};
    nlohmann::json series = nlohmann::json::array();
    for (const SeriesSnapshot& s : f.series) {
      nlohmann::json labels = nlohmann::json::object();
      for (size_t i = 0; i < f.info.label_names.size(); ++i) {
        labels[f.info.label_names[i]] = s.label_values[i];
      }
      nlohmann::json js = {{"labels", labels}};
      if (f.type == MetricType::kHistogram) {
        nlohmann::json buckets = nlohmann::json::array();
        uint64_t cumulative = 0;
        for (size_t i = 0; i < s.bucket_counts.size(); ++i) {
          cumulative += s.bucket_counts[i];
          nlohmann::json le = i < f.upper_bounds.size() ? nlohmann::json(f.upper_bounds[i])
                                                        : nlohmann::json("+Inf");
          buckets.push_back({le, cumulative});
        }
        js["count"] = s.count;
        js["sum"] = Num(s.sum);
        js["buckets"] = std::move(buckets);
        js["p50"] = Num(HistogramQuantile(0.50, f.upper_bounds, s.bucket_counts));
        js["p90"] = Num(HistogramQuantile(0.90, f.upper_bounds, s.bucket_counts));
        js["p99"] = Num(HistogramQuantile(0.99, f.upper_bounds, s.bucket_counts));
      } else {
        js["value"] = Num(s.value);
      }
      series.push_back(std::move(js));
    }
    fam["series"] = std::move(series);
    metrics.push_back(std::move(fam));
  }
  out["metrics"] = std::move(metrics);
  return out;
}

}  // namespace kvblock::metrics
