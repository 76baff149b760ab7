// Debian's `promtool check metrics` (the Prometheus project's own linter and parser) accepts what
// /metrics serves from a running process with moving values, and rejects broken expositions
// (so the check can fail).
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/services/metrics/external_tools.h"

namespace kvblock::metrics::testing {

const std::vector<std::string> kRequiredTools = {"promtool"};

namespace {

using ::testing::HasSubstr;

RunResult CheckMetrics(const std::string& exposition) {
  const std::string path = MakeTempDir("promtool") + "/metrics.txt";
  std::ofstream(path) << exposition;
  absl::StatusOr<RunResult> r =
      RunTool({*FindTool("promtool"), "check", "metrics"}, absl::Seconds(60), path);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : RunResult{};
}

TEST(PromtoolTest, AcceptsTheDemoServersMetrics) {
  absl::StatusOr<DemoServer> server = StartDemoServer({"--rate", "3000"});
  ASSERT_TRUE(server.ok()) << server.status();
  // Let traffic populate every family (methods, codes, tiers, planes).
  absl::SleepFor(absl::Milliseconds(800));
  for (int scrape = 0; scrape < 2; ++scrape) {
    absl::StatusOr<HttpResponse> res = HttpGet(server->port, "/metrics");
    ASSERT_TRUE(res.ok()) << res.status();
    ASSERT_EQ(res->status, 200);
    // Representative content is there, not an empty page promtool would wave through.
    for (const char* series :
         {"kvblock_build_info{component=\"metrics-demo\"", "kvblock_requests_total{method=\"Get\"",
          "kvblock_request_duration_seconds_bucket{method=\"Put\",le=\"+Inf\"}",
          "kvblock_bytes_total{plane=\"ucx\",direction=\"out\"}",
          "kvblock_cache_hits_total{tier=\"disk\"}",
          "kvblock_tier_evictions_total{tier=\"memory\"}",
          "kvblock_block_payload_bytes_bucket{method=\"Get\",le=\"1048576\"}",
          "kvblock_process_resident_memory_bytes ", "kvblock_filesystem_avail_bytes{path="}) {
      EXPECT_THAT(res->body, HasSubstr(series));
    }
    RunResult check = CheckMetrics(res->body);
    EXPECT_EQ(check.exit_code, 0) << check.output;
    EXPECT_EQ(check.output, "") << "promtool lint findings:\n" << check.output;
    absl::SleepFor(absl::Milliseconds(300));
  }
  EXPECT_EQ(server->process.Terminate(), 0) << server->process.Log();
}

TEST(PromtoolTest, AcceptsKvblockCacheServerMetrics) {
  absl::StatusOr<CacheServerProcess> server = StartCacheServer();
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(DriveLookups(*server, 3, 16).ok());
  absl::StatusOr<HttpResponse> res = HttpGet(server->metrics_port, "/metrics");
  ASSERT_TRUE(res.ok()) << res.status();
  ASSERT_EQ(res->status, 200);
  for (const char* series :
       {"kvblock_build_info{component=\"cache-server\"", "kvblock_requests_total{method=\"",
        "kvblock_request_duration_seconds_bucket{method=\"", "kvblock_cache_misses_total ",
        "kvblock_tier_bytes{tier=\"memory\"}", "kvblock_process_resident_memory_bytes ",
        "kvblock_rocksdb_written_bytes_total{tier=\"disk\"}",
        "kvblock_rocksdb_compaction_pending_bytes{tier=\"disk\"}"}) {
    EXPECT_THAT(res->body, HasSubstr(series));
  }
  RunResult check = CheckMetrics(res->body);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_EQ(check.output, "") << "promtool lint findings:\n" << check.output;
  // Its other endpoints are up too.
  EXPECT_EQ(HttpGet(server->metrics_port, "/readyz")->status, 200);
  EXPECT_EQ(HttpGet(server->metrics_port, "/dashboard")->status, 200);
  EXPECT_EQ(server->process.Terminate(), 0) << server->process.Log();
}

TEST(PromtoolTest, RejectsBrokenExpositions) {
  // Counter without _total (lint), malformed sample line (parse), histogram without +Inf.
  RunResult lint = CheckMetrics(
      "# HELP kvblock_requests Requests.\n# TYPE kvblock_requests counter\nkvblock_requests 3\n");
  EXPECT_NE(lint.exit_code, 0);
  EXPECT_THAT(lint.output, HasSubstr("_total"));
  RunResult parse = CheckMetrics("# TYPE kvblock_x gauge\nkvblock_x{le=\"1\" 3\n");
  EXPECT_NE(parse.exit_code, 0) << parse.output;
  RunResult no_help = CheckMetrics("# TYPE kvblock_x gauge\nkvblock_x 3\n");
  EXPECT_NE(no_help.exit_code, 0) << no_help.output;
}

}  // namespace
}  // namespace kvblock::metrics::testing
