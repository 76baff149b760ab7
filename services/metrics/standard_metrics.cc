#include "services/metrics/standard_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

#ifndef KVBLOCK_VERSION
#define KVBLOCK_VERSION "unknown"
#endif
#ifndef KVBLOCK_BUILD_TYPE
#define KVBLOCK_BUILD_TYPE "unknown"
#endif

namespace kvblock::metrics {
namespace {

std::string CompilerName() {
#if defined(__clang__)
  return absl::StrCat("clang ", __clang_major__, ".", __clang_minor__, ".", __clang_patchlevel__);
#elif defined(__GNUC__)
  return absl::StrCat("gcc ", __GNUC__, ".", __GNUC_MINOR__, ".", __GNUC_PATCHLEVEL__);
#else
  return "unknown";
#endif
}

std::string ReadFile(const char* path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Fields of /proc/self/stat after the parenthesised command name (which may contain spaces),
// numbered from field 3 ("state") as in proc(5): fields[0] is field 3.
std::vector<std::string> ProcStatFields() {
  std::string stat = ReadFile("/proc/self/stat");
  size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 > stat.size()) return {};
  return absl::StrSplit(absl::string_view(stat).substr(close + 2), ' ', absl::SkipEmpty());
}

double ProcStatField(const std::vector<std::string>& fields, int field_number) {
  double v = 0;
  size_t i = static_cast<size_t>(field_number - 3);
  if (i < fields.size()) (void)absl::SimpleAtod(fields[i], &v);
  return v;
}

// Boot time (seconds since the epoch), from /proc/stat's btime line.
double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("btime ", 0) == 0) {
      double v = 0;
      if (absl::SimpleAtod(absl::string_view(line).substr(6), &v)) return v;
    }
  }
  return 0;
}

double ProcessStartTimeSeconds() {
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double boot = BootTimeSeconds();
  const double start_ticks = ProcStatField(ProcStatFields(), 22);
  if (boot <= 0 || ticks <= 0 || start_ticks <= 0)
    return absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  return boot + start_ticks / ticks;
}

int CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the descriptor of `dir` itself
}

}  // namespace

std::string KvblockVersion() { return KVBLOCK_VERSION; }

absl::Status RegisterProcessMetrics(MetricsRegistry* registry, BuildInfo build) {
  if (build.version.empty()) build.version = KvblockVersion();
  std::vector<std::string> build_labels = {build.component, build.version, CompilerName(),
                                           KVBLOCK_BUILD_TYPE};
  const double start_time = ProcessStartTimeSeconds();
  const double page_size = static_cast<double>(sysconf(_SC_PAGESIZE));
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  enum : size_t { kBuild, kStart, kUptime, kRss, kVms, kCpu, kThreads, kFds, kMaxFds };
  std::vector<CollectedFamilyInfo> families = {
      {{kBuildInfo,
        "Constant 1; the labels describe this build.",
        {"component", "version", "compiler", "build_type"}},
       MetricType::kGauge},
      {{kProcessStartTime, "Start time of the process since the Unix epoch, in seconds.", {}},
       MetricType::kGauge},
      {{kProcessUptime, "Seconds since the process started.", {}}, MetricType::kGauge},
      {{kProcessResidentMemory, "Resident set size of the process, in bytes.", {}},
       MetricType::kGauge},
      {{kProcessVirtualMemory, "Virtual memory size of the process, in bytes.", {}},
       MetricType::kGauge},
      {{kProcessCpuSeconds, "User and system CPU time of the process, in seconds.", {}},
       MetricType::kCounter},
      {{kProcessThreads, "Threads in the process.", {}}, MetricType::kGauge},
      {{kProcessOpenFds, "Open file descriptors.", {}}, MetricType::kGauge},
      {{kProcessMaxFds, "Limit on open file descriptors (RLIMIT_NOFILE soft limit).", {}},
       MetricType::kGauge},
  };
  auto id = registry->AddCollector(
      std::move(families), [build_labels, start_time, page_size, ticks](CollectorSink& sink) {
        sink.Add(kBuild, build_labels, 1.0);
        sink.Add(kStart, start_time);
        const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
        sink.Add(kUptime, std::max(0.0, now - start_time));
        std::vector<std::string> fields = ProcStatFields();
        if (!fields.empty()) {
          sink.Add(kRss, ProcStatField(fields, 24) * page_size);
          sink.Add(kVms, ProcStatField(fields, 23));
          sink.Add(kCpu, (ProcStatField(fields, 14) + ProcStatField(fields, 15)) / ticks);
          sink.Add(kThreads, ProcStatField(fields, 20));
        }
        if (int fds = CountOpenFds(); fds >= 0) sink.Add(kFds, fds);
        rlimit lim;
        if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
          sink.Add(kMaxFds, static_cast<double>(lim.rlim_cur));
        }
      });
  return id.status();
}

absl::StatusOr<ServiceMetrics> ServiceMetrics::Register(MetricsRegistry* registry) {
  ServiceMetrics m;
  auto requests = registry->AddCounter(
      {kRequests, "Requests finished, by method and status code.", {"method", "code"}});
  if (!requests.ok()) return requests.status();
  m.requests = *requests;
  auto duration = registry->AddHistogram(
      {kRequestDuration, "Request latency from start to last byte, in seconds.", {"method"}},
      LatencyBuckets());
  if (!duration.ok()) return duration.status();
  m.request_duration = *duration;
  auto bytes = registry->AddCounter(
      {kBytes,
       "Payload bytes moved, by plane (grpc, ucx, http) and direction (in, out).",
       {"plane", "direction"}});
  if (!bytes.ok()) return bytes.status();
  m.bytes = *bytes;
  auto hits = registry->AddCounter(
      {kCacheHits, "Requested block keys found, by the tier that served them.", {"tier"}});
  if (!hits.ok()) return hits.status();
  m.cache_hits = *hits;
  auto misses = registry->AddCounter({kCacheMisses, "Requested block keys found in no tier.", {}});
  if (!misses.ok()) return misses.status();
  m.cache_misses = *misses;
  return m;
}

absl::StatusOr<CollectorId> RegisterTierStatsCollector(
    MetricsRegistry* registry, std::function<std::vector<TierStats>()> stats) {
  if (!stats) return absl::InvalidArgumentError("tier stats callback is empty");
  enum : size_t { kBlocks, kBytesF, kCapacity, kHits, kMisses, kInserts, kEvictions, kCorrupt };
  const std::vector<std::string> tier = {"tier"};
  std::vector<CollectedFamilyInfo> families = {
      {{kTierBlocks, "Blocks held by a storage tier.", tier}, MetricType::kGauge},
      {{kTierBytes, "Bytes held by a storage tier, metadata included.", tier}, MetricType::kGauge},
      {{kTierCapacityBytes, "Byte budget of a storage tier (absent when unbounded).", tier},
       MetricType::kGauge},
      {{kTierHits, "Reads a storage tier answered.", tier}, MetricType::kCounter},
      {{kTierMisses, "Reads a storage tier could not answer.", tier}, MetricType::kCounter},
      {{kTierInserts, "Blocks inserted into a storage tier.", tier}, MetricType::kCounter},
      {{kTierEvictions, "Blocks evicted from a storage tier.", tier}, MetricType::kCounter},
      {{kTierCorruptRecords, "Records found corrupt (dropped and reported as misses).", tier},
       MetricType::kCounter},
  };
  // Engine numbers (TierStats::engine, e.g. RocksDB's) become families of their own, found by
  // asking once now: a store reports the same names on every call.
  absl::flat_hash_map<std::string, size_t> engine_family;
  for (const TierStats& t : stats()) {
    for (const EngineStat& e : t.engine) {
      const std::string name = absl::StrCat("kvblock_", e.name);
      if (engine_family.contains(name)) continue;
      engine_family[name] = families.size();
      families.push_back({{name, e.help, tier},
                          e.counter ? MetricType::kCounter : MetricType::kGauge});
    }
  }
  return registry->AddCollector(
      std::move(families),
      [stats = std::move(stats), engine_family = std::move(engine_family)](CollectorSink& sink) {
        for (const TierStats& t : stats()) {
          const std::vector<std::string> label = {std::string(StoreTierName(t.tier))};
          for (const EngineStat& e : t.engine) {
            auto it = engine_family.find(absl::StrCat("kvblock_", e.name));
            if (it != engine_family.end()) sink.Add(it->second, label, e.value);
          }
          sink.Add(kBlocks, label, static_cast<double>(t.blocks));
          sink.Add(kBytesF, label, static_cast<double>(t.bytes));
          if (t.capacity_bytes > 0)
            sink.Add(kCapacity, label, static_cast<double>(t.capacity_bytes));
          sink.Add(kHits, label, static_cast<double>(t.hits));
          sink.Add(kMisses, label, static_cast<double>(t.misses));
          sink.Add(kInserts, label, static_cast<double>(t.inserts));
          sink.Add(kEvictions, label, static_cast<double>(t.evictions));
          sink.Add(kCorrupt, label, static_cast<double>(t.corrupt_records));
        }
      });
}

absl::StatusOr<CollectorId> RegisterFilesystemCollector(MetricsRegistry* registry,
                                                        std::vector<std::string> paths) {
  if (paths.empty()) return absl::InvalidArgumentError("no filesystem paths given");
  std::vector<CollectedFamilyInfo> families = {
      {{kFilesystemSize, "Size of the filesystem holding a data directory, in bytes.", {"path"}},
       MetricType::kGauge},
      {{kFilesystemAvail, "Bytes available to the process on that filesystem.", {"path"}},
       MetricType::kGauge},
  };
  return registry->AddCollector(
      std::move(families), [paths = std::move(paths)](CollectorSink& sink) {
        for (const std::string& path : paths) {
          struct statvfs st;
          if (statvfs(path.c_str(), &st) != 0) continue;
          const std::vector<std::string> label = {path};
          sink.Add(0, label, static_cast<double>(st.f_blocks) * static_cast<double>(st.f_frsize));
          sink.Add(1, label, static_cast<double>(st.f_bavail) * static_cast<double>(st.f_frsize));
        }
      });
}

}  // namespace kvblock::metrics
