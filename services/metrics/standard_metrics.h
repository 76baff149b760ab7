// The metric families every kvblock process shares, so the cache server, the worker and the
// dashboard agree on names (docs/metrics.md lists them all):
//  - RegisterProcessMetrics: build info, uptime, start time, resident/virtual memory, CPU time,
//    threads and file descriptors (read from /proc at scrape time).
//  - ServiceMetrics: requests by method and code, request latency, bytes by plane and
//    direction, cache hits and misses; the dashboard's charts read these names.
//  - RegisterTierStatsCollector: a BlockStore's per-tier TierStats (blocks, bytes, hits,
//    misses, evictions, ...), read at scrape time.
//  - RegisterFilesystemCollector: size and free space of data directories.
// An owner registers its own families directly on the registry (metrics_registry.h), with the
// `kvblock_<subsystem>_` naming of docs/metrics.md.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/block_store.h"
#include "services/metrics/metrics_registry.h"

namespace kvblock::metrics {

// Standard family names (the dashboard's defaults in DashboardOptions refer to these).
inline constexpr char kBuildInfo[] = "kvblock_build_info";
inline constexpr char kProcessStartTime[] = "kvblock_process_start_time_seconds";
inline constexpr char kProcessUptime[] = "kvblock_process_uptime_seconds";
inline constexpr char kProcessResidentMemory[] = "kvblock_process_resident_memory_bytes";
inline constexpr char kProcessVirtualMemory[] = "kvblock_process_virtual_memory_bytes";
inline constexpr char kProcessCpuSeconds[] = "kvblock_process_cpu_seconds_total";
inline constexpr char kProcessThreads[] = "kvblock_process_threads";
inline constexpr char kProcessOpenFds[] = "kvblock_process_open_fds";
inline constexpr char kProcessMaxFds[] = "kvblock_process_max_fds";

inline constexpr char kRequests[] = "kvblock_requests_total";
inline constexpr char kRequestDuration[] = "kvblock_request_duration_seconds";
inline constexpr char kBytes[] = "kvblock_bytes_total";
inline constexpr char kCacheHits[] = "kvblock_cache_hits_total";
inline constexpr char kCacheMisses[] = "kvblock_cache_misses_total";

inline constexpr char kTierBlocks[] = "kvblock_tier_blocks";
inline constexpr char kTierBytes[] = "kvblock_tier_bytes";
inline constexpr char kTierCapacityBytes[] = "kvblock_tier_capacity_bytes";
inline constexpr char kTierHits[] = "kvblock_tier_hits_total";
inline constexpr char kTierMisses[] = "kvblock_tier_misses_total";
inline constexpr char kTierInserts[] = "kvblock_tier_inserts_total";
inline constexpr char kTierEvictions[] = "kvblock_tier_evictions_total";
inline constexpr char kTierCorruptRecords[] = "kvblock_tier_corrupt_records_total";

inline constexpr char kFilesystemSize[] = "kvblock_filesystem_size_bytes";
inline constexpr char kFilesystemAvail[] = "kvblock_filesystem_avail_bytes";

// What kvblock_build_info reports.
struct BuildInfo {
  // Which kvblock process this is, e.g. "cache-server", "worker". Default: "kvblock".
  std::string component = "kvblock";
  // Release version. Default: the project version CMake was configured with.
  std::string version;
  // Compiler and build type are filled in from the build; not settable.
};

// The kvblock version string of this build (CMake project version).
std::string KvblockVersion();

// Registers kvblock_build_info (constant 1 with labels component, version, compiler,
// build_type) and the kvblock_process_* families (one collector reading /proc/self at scrape
// time). Call once per registry. Errors as MetricsRegistry::AddCollector (ALREADY_EXISTS when
// called twice).
absl::Status RegisterProcessMetrics(MetricsRegistry* registry, BuildInfo build = {});

// The service families; handles are owned by the registry. Labels:
//   requests{method, code}: one per finished RPC/HTTP request; `code` is the absl/gRPC status
//     code name ("OK", "NOT_FOUND", ...).
//   request_duration{method}: seconds from request start to its last byte (LatencyBuckets).
//   bytes{plane, direction}: payload bytes; plane "grpc" | "ucx" | "shm" | "http", direction
//     "in" | "out" ("shm": bytes leased to same-host readers).
//   cache_hits{tier}: block keys found, by the tier that served them ("gpu", "memory", "disk",
//     "remote"); cache_misses{}: block keys found nowhere. Count each requested key once.
struct ServiceMetrics {
  CounterFamily* requests = nullptr;
  HistogramFamily* request_duration = nullptr;
  CounterFamily* bytes = nullptr;
  CounterFamily* cache_hits = nullptr;
  CounterFamily* cache_misses = nullptr;

  // Registers the families on `registry` (not owned; must outlive the handles).
  // ALREADY_EXISTS when they are registered already.
  static absl::StatusOr<ServiceMetrics> Register(MetricsRegistry* registry);
};

// Exports `stats()` (called once per scrape; must be thread-safe and stay valid until the
// returned collector is removed) as the kvblock_tier_* families, labelled tier, plus one family
// kvblock_<name>{tier} per TierStats::engine entry (e.g. kvblock_rocksdb_stall_seconds_total),
// whose names are read from one call made here. INVALID_ARGUMENT for an empty callback or an
// engine name the registry refuses.
absl::StatusOr<CollectorId> RegisterTierStatsCollector(
    MetricsRegistry* registry, std::function<std::vector<TierStats>()> stats);

// Exports kvblock_filesystem_size_bytes / kvblock_filesystem_avail_bytes{path} for each path
// (statvfs at scrape time; a path that cannot be read is left out of that scrape).
absl::StatusOr<CollectorId> RegisterFilesystemCollector(MetricsRegistry* registry,
                                                        std::vector<std::string> paths);

}  // namespace kvblock::metrics
