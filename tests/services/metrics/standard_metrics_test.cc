// The standard families: process metrics read real /proc values that move with the process,
// service families have the documented labels, tier stats and filesystem collectors export
// what they are given.
#include "services/metrics/standard_metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/metrics/prometheus_text.h"

namespace kvblock::metrics {
namespace {

using ::testing::HasSubstr;

double Value(const MetricsRegistry& r, const std::string& name) {
  for (const FamilySnapshot& f : r.Collect()) {
    if (f.info.name == name && !f.series.empty()) return f.series[0].value;
  }
  ADD_FAILURE() << name << " not exported";
  return -1;
}

TEST(StandardMetricsTest, ProcessMetricsTrackTheProcess) {
  MetricsRegistry r;
  ASSERT_TRUE(RegisterProcessMetrics(&r, {.component = "test"}).ok());
  EXPECT_EQ(RegisterProcessMetrics(&r).code(), absl::StatusCode::kAlreadyExists);

  const double rss0 = Value(r, kProcessResidentMemory);
  EXPECT_GT(rss0, 1 << 20);
  EXPECT_LT(rss0, 64.0 * (1ull << 30));
  EXPECT_GE(Value(r, kProcessVirtualMemory), rss0);
  // Touch 96 MiB of fresh memory: RSS must grow by most of it.
  std::mt19937_64 rng(std::random_device{}());
  const size_t n = 96u << 20;
  std::vector<char> block(n);
  for (size_t i = 0; i < n; i += 4096) block[i] = static_cast<char>(rng() | 1);
  const double rss1 = Value(r, kProcessResidentMemory);
  EXPECT_GT(rss1 - rss0, 80.0 * (1 << 20)) << rss0 << " -> " << rss1;

  const int fds0 = static_cast<int>(Value(r, kProcessOpenFds));
  int fd = open("/proc/self/stat", O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(Value(r, kProcessOpenFds), fds0 + 1);
  close(fd);
  EXPECT_GT(Value(r, kProcessMaxFds), fds0);

  const double threads0 = Value(r, kProcessThreads);
  EXPECT_GE(threads0, 1);
  // Burn 0.3 s of CPU (measured on the process CPU clock, so a busy machine only makes it
  // take longer, bounded at 30 s): the metric must move by the same amount.
  auto process_cpu = [] {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  };
  const double cpu0 = Value(r, kProcessCpuSeconds);
  const double clock0 = process_cpu();
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  volatile uint64_t sink = block[rng() % n];
  while (process_cpu() - clock0 < 0.3 && absl::Now() < give_up) {
    for (int i = 0; i < 10000; ++i) sink = sink * 6364136223846793005ull + 1;
  }
  const double burnt = process_cpu() - clock0;
  const double cpu1 = Value(r, kProcessCpuSeconds);
  ASSERT_GE(burnt, 0.3);
  EXPECT_NEAR(cpu1 - cpu0, burnt, 0.05);  // /proc counts in 10 ms ticks
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  const double start = Value(r, kProcessStartTime);
  EXPECT_LT(start, now);
  EXPECT_GT(start, now - 3600);  // this test process started within the hour
  const double up = Value(r, kProcessUptime);
  EXPECT_NEAR(up, now - start, 1.0);
  EXPECT_GT(up, 0.3);  // we burnt 0.3 s of CPU above

  std::string text = RenderPrometheusText(r);
  EXPECT_THAT(text, HasSubstr("kvblock_build_info{component=\"test\",version=\"" +
                              KvblockVersion() + "\",compiler=\""));
  EXPECT_THAT(text, HasSubstr("# TYPE kvblock_process_cpu_seconds_total counter\n"));
  EXPECT_NE(KvblockVersion(), "unknown");
}

TEST(StandardMetricsTest, ServiceMetricsHaveDocumentedLabels) {
  MetricsRegistry r;
  auto m = ServiceMetrics::Register(&r);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(ServiceMetrics::Register(&r).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(m->requests->info().label_names, ::testing::ElementsAre("method", "code"));
  EXPECT_THAT(m->bytes->info().label_names, ::testing::ElementsAre("plane", "direction"));
  EXPECT_THAT(m->cache_hits->info().label_names, ::testing::ElementsAre("tier"));
  EXPECT_TRUE(m->cache_misses->info().label_names.empty());
  EXPECT_THAT(m->request_duration->info().label_names, ::testing::ElementsAre("method"));
  (*m->request_duration->WithLabels({"Get"}))->Observe(0.003);
  (*m->cache_misses->WithLabels({}))->Increment(4);
  std::string text = RenderPrometheusText(r);
  EXPECT_THAT(text, HasSubstr("kvblock_cache_misses_total 4\n"));
  EXPECT_THAT(
      text, HasSubstr("kvblock_request_duration_seconds_bucket{method=\"Get\",le=\"0.0032\"} 1\n"));
}

TEST(StandardMetricsTest, TierStatsCollector) {
  MetricsRegistry r;
  std::mt19937_64 rng(std::random_device{}());
  TierStats mem{.tier = StoreTier::kMemory,
                .blocks = 1 + rng() % 1000,
                .bytes = 1 + rng() % (1ull << 40),
                .capacity_bytes = 1ull << 41,
                .hits = 1 + rng() % 100000,
                .misses = 1 + rng() % 100000,
                .inserts = 1 + rng() % 1000,
                .evictions = 1 + rng() % 100,
                .corrupt_records = 0};
  TierStats disk = mem;
  disk.tier = StoreTier::kDisk;
  disk.capacity_bytes = 0;  // unbounded: no capacity series
  disk.corrupt_records = 1 + rng() % 5;
  disk.engine = {{"rocksdb_stall_seconds_total", "Stalled.", true, double(rng() % 1000) / 8},
                 {"rocksdb_sst_files_bytes", "SST bytes.", false, double(1 + rng() % 100000)}};
  auto id = RegisterTierStatsCollector(&r, [&] { return std::vector<TierStats>{mem, disk}; });
  ASSERT_TRUE(id.ok()) << id.status();
  std::string text = RenderPrometheusText(r);
  // Engine numbers: one family each, typed as the tier says, labelled by tier.
  EXPECT_THAT(text, HasSubstr("# TYPE kvblock_rocksdb_stall_seconds_total counter\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE kvblock_rocksdb_sst_files_bytes gauge\n"));
  EXPECT_THAT(text, HasSubstr("kvblock_rocksdb_stall_seconds_total{tier=\"disk\"} " +
                              FormatSampleValue(disk.engine[0].value) + "\n"));
  EXPECT_THAT(text, HasSubstr("kvblock_rocksdb_sst_files_bytes{tier=\"disk\"} " +
                              FormatSampleValue(disk.engine[1].value) + "\n"));
  disk.engine[1].value += 4096;  // read at every scrape
  EXPECT_THAT(RenderPrometheusText(r),
              HasSubstr("kvblock_rocksdb_sst_files_bytes{tier=\"disk\"} " +
                        FormatSampleValue(disk.engine[1].value) + "\n"));
  EXPECT_THAT(text, HasSubstr("kvblock_tier_bytes{tier=\"memory\"} " +
                              FormatSampleValue(static_cast<double>(mem.bytes)) + "\n"));
  EXPECT_THAT(text, HasSubstr("kvblock_tier_hits_total{tier=\"disk\"} " +
                              std::to_string(disk.hits) + "\n"));
  EXPECT_THAT(text, HasSubstr("kvblock_tier_corrupt_records_total{tier=\"disk\"} " +
                              std::to_string(disk.corrupt_records) + "\n"));
  EXPECT_THAT(text, HasSubstr("kvblock_tier_capacity_bytes{tier=\"memory\"} 2199023255552\n"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("kvblock_tier_capacity_bytes{tier=\"disk\"}")));
  mem.evictions += 17;
  EXPECT_THAT(RenderPrometheusText(r), HasSubstr("kvblock_tier_evictions_total{tier=\"memory\"} " +
                                                 std::to_string(mem.evictions) + "\n"));
  ASSERT_TRUE(r.RemoveCollector(*id).ok());
}

TEST(StandardMetricsTest, FilesystemCollector) {
  MetricsRegistry r;
  auto id = RegisterFilesystemCollector(&r, {"/", "/no/such/dir"});
  ASSERT_TRUE(id.ok());
  double size = -1, avail = -1;
  for (const FamilySnapshot& f : r.Collect()) {
    ASSERT_EQ(f.series.size(), 1u) << f.info.name;  // the missing dir is left out
    EXPECT_EQ(f.series[0].label_values[0], "/");
    if (f.info.name == kFilesystemSize) size = f.series[0].value;
    if (f.info.name == kFilesystemAvail) avail = f.series[0].value;
  }
  EXPECT_GT(size, 1 << 20);
  EXPECT_GT(avail, 0);
  EXPECT_LE(avail, size);
}

}  // namespace
}  // namespace kvblock::metrics
