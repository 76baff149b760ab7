// Cluster data-path benchmark: Get throughput and latency for 128 KiB / 1 MiB / 8 MiB payloads
// from a real `kvblock cache-server` process on loopback, over the UCX data plane vs the gRPC Get
// stream, against a plain memcpy bound measured in the same run (these machines are noisy: read
// the ratios). Also batch Lookup keys/s. Prints a markdown table (docs/benchmarks.md) and a JSON
// line. --smoke: tiny run under ctest that checks every payload byte for byte.
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "services/cache_client.h"
#include "tests/services/cluster_test_util.h"

namespace kvblock {
namespace {

using namespace kvblock::testing;  // NOLINT

struct Stat {
  double gbps = 0, p50_us = 0, p99_us = 0;
  int ops = 0;
};

// Runs `op` until `seconds` pass or `max_ops` ran; bytes per op `bytes`.
template <typename Fn>
Stat Measure(double seconds, int max_ops, uint64_t bytes, Fn&& op) {
  std::vector<double> lat;
  const absl::Time start = absl::Now(), end = start + absl::Seconds(seconds);
  while (absl::Now() < end && static_cast<int>(lat.size()) < max_ops) {
    const absl::Time t0 = absl::Now();
    if (!op(lat.size())) {
      std::fprintf(stderr, "operation failed\n");
      std::exit(1);
    }
    lat.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
  }
  const double total = absl::ToDoubleSeconds(absl::Now() - start);
  Stat s;
  s.ops = static_cast<int>(lat.size());
  s.gbps = static_cast<double>(bytes) * s.ops / total / 1e9;
  s.p50_us = Percentile(lat, 50);
  s.p99_us = Percentile(lat, 99);
  return s;
}

int Main(int argc, char** argv) {
  CLI::App app{"kvblock cluster data-path benchmark"};
  bool smoke = false;
  double seconds = 2.0;
  std::string binary = KVBLOCK_BIN;
  app.add_flag("--smoke", smoke, "Tiny run with byte checks (ctest)");
  app.add_option("--seconds", seconds, "Seconds per measurement")->capture_default_str();
  app.add_option("--kvblock", binary, "kvblock binary")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (smoke) seconds = 0.2;

  TempDir dir;
  WriteFile(dir.Sub("token"), "bench-token");
  const int grpc_port = FreePort(), ucx_port = FreePort();
  ChildProcess server;
  const std::string ready = dir.Sub("ready");
  if (!server.Start(binary,
                    {"cache-server", "--listen", absl::StrCat("127.0.0.1:", grpc_port),
                     "--ucx-listen", absl::StrCat("127.0.0.1:", ucx_port), "--data-dir",
                     dir.Sub("data"), "--memory-bytes", "512MiB", "--max-block-bytes", "16MiB",
                     "--auth-token-file", dir.Sub("token"), "--sync", "none", "--ready-file",
                     ready},
                    dir.Sub("server.log")) ||
      !WaitForFile(ready, std::chrono::seconds(30))) {
    std::fprintf(stderr, "server did not start: %s\n", ReadFileOrEmpty(dir.Sub("server.log")).c_str());
    return 1;
  }
  auto make = [&](bool ucx) {
    CacheClientOptions o;
    o.members = {absl::StrCat("127.0.0.1:", grpc_port)};
    o.replication = 1;
    o.auth_token = "bench-token";
    o.use_data_plane = ucx;
    o.rpc_timeout = absl::Seconds(30);
    auto c = CacheClient::Create(o);
    if (!c.ok()) std::abort();
    return *std::move(c);
  };
  auto ucx = make(true), grpc = make(false);
  if (!ucx->HasDataPlane(0)) {
    std::fprintf(stderr, "UCX data plane did not open\n");
    return 1;
  }

  std::mt19937_64 rng(42);
  struct Size {
    const char* name;
    uint32_t layers, tokens;  // payload = 96 + layers * tokens * 512
  };
  const std::vector<Size> sizes = {{"128 KiB", 8, 32}, {"1 MiB", 32, 64}, {"8 MiB", 32, 512}};
  nlohmann::json results = nlohmann::json::array();
  std::printf("| payload | memcpy GB/s | UCX GB/s | gRPC GB/s | UCX/memcpy | UCX/gRPC | "
              "UCX p50/p99 us | gRPC p50/p99 us |\n|---|---|---|---|---|---|---|---|\n");
  for (const Size& sz : sizes) {
    std::vector<TestBlock> blocks;
    for (int i = 0; i < 4; ++i) {
      blocks.push_back(RandomBlock(rng, sz.layers, sz.tokens));
      if (!grpc->Put(blocks.back().key, blocks.back().payload).ok()) return 1;
    }
    const uint64_t bytes = blocks[0].payload.size();
    std::vector<uint8_t> dst(bytes);
    const int max_ops = smoke ? 8 : 1000000;
    auto check = [&](size_t i) {
      return !smoke || std::memcmp(dst.data(), blocks[i % blocks.size()].payload.data(), bytes) == 0;
    };
    // Warm-up (connections, UCX registration caches).
    for (const auto& b : blocks) {
      (void)ucx->FetchInto(b.key, absl::MakeSpan(dst));
      (void)grpc->FetchInto(b.key, absl::MakeSpan(dst));
    }
    Stat mem = Measure(seconds, max_ops, bytes, [&](size_t i) {
      std::memcpy(dst.data(), blocks[i % blocks.size()].payload.data(), bytes);
      return check(i);
    });
    Stat u = Measure(seconds, max_ops, bytes, [&](size_t i) {
      auto n = ucx->FetchInto(blocks[i % blocks.size()].key, absl::MakeSpan(dst));
      return n.ok() && *n == bytes && check(i);
    });
    Stat g = Measure(seconds, max_ops, bytes, [&](size_t i) {
      auto n = grpc->FetchInto(blocks[i % blocks.size()].key, absl::MakeSpan(dst));
      return n.ok() && *n == bytes && check(i);
    });
    std::printf("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f / %.0f | %.0f / %.0f |\n", sz.name,
                mem.gbps, u.gbps, g.gbps, u.gbps / mem.gbps, u.gbps / g.gbps, u.p50_us, u.p99_us,
                g.p50_us, g.p99_us);
    results.push_back({{"payload", sz.name}, {"bytes", bytes},
                       {"memcpy_gbps", mem.gbps}, {"ucx_gbps", u.gbps}, {"grpc_gbps", g.gbps},
                       {"ucx_p50_us", u.p50_us}, {"ucx_p99_us", u.p99_us},
                       {"grpc_p50_us", g.p50_us}, {"grpc_p99_us", g.p99_us},
                       {"ops", {mem.ops, u.ops, g.ops}}});
    for (const auto& b : blocks) (void)grpc->Delete(b.key);
  }
  // Batch Lookup: 1024 keys per call, half present.
  std::vector<BlockKey> keys;
  for (int i = 0; i < 512; ++i) {
    TestBlock b = RandomBlock(rng, 1, 4);
    if (!grpc->Put(b.key, b.payload).ok()) return 1;
    keys.push_back(b.key);
    keys.push_back(Hash128{rng(), rng()});
  }
  Stat l = Measure(seconds, smoke ? 4 : 1000000, keys.size(), [&](size_t) {
    auto r = grpc->LookupCluster(keys);
    for (size_t i = 0; i < keys.size(); ++i) {
      if (r[i].present != (i % 2 == 0)) return false;
    }
    return true;
  });
  const double keys_per_s = l.gbps * 1e9;  // "bytes" were keys
  std::printf("\nbatch Lookup (1024 keys/call, half present): %.0f keys/s, p50 %.0f us, p99 %.0f us\n",
              keys_per_s, l.p50_us, l.p99_us);
  results.push_back({{"lookup_keys_per_s", keys_per_s}, {"lookup_p50_us", l.p50_us},
                     {"lookup_p99_us", l.p99_us}});
  std::printf("JSON %s\n", results.dump().c_str());
  const int st = server.Kill(SIGTERM);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}

}  // namespace
}  // namespace kvblock

int main(int argc, char** argv) { return kvblock::Main(argc, argv); }
