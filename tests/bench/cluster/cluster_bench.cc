// Cluster data-path benchmark: Get throughput and latency for 128 KiB / 1 MiB / 8 MiB payloads
// from a real `kvblock cache-server` process on loopback, through the same-host shared-memory
// data plane (Get: zero copy into the node's mapping, then one memcpy of the bytes, as a GPU copy
// would read them once), over the UCX data plane and over the gRPC Get stream, against a plain
// memcpy bound measured in the same run (these machines are noisy: read the ratios). Also batch Lookup keys/s. Then data-plane lanes: --fetchers threads calling
// FetchInto at once (each into its own buffer) for 8 MiB and 64 MiB payloads, per --lanes count,
// and through shared memory (Get + memcpy), against memcpy on one thread and on --fetchers threads, with the CPU the client and the server
// process used (cores busy = CPU seconds / wall seconds). Prints markdown tables
// (docs/benchmarks.md) and a JSON line. --smoke: tiny run under ctest that checks every payload
// byte for byte.
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
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

// CPU seconds (user + system) process `pid` has used so far (0 when /proc cannot tell).
double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  // Fields after "(comm)": state is field 3; utime and stime are fields 14 and 15.
  std::vector<std::string> f = absl::StrSplit(stat.substr(close + 2), ' ');
  if (f.size() < 13) return 0;
  return (std::stod(f[11]) + std::stod(f[12])) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// `threads` threads each run `op(thread, i)` (i = 0, 1, ...) until `seconds` pass or `max_ops`
// ran in total; returns GB/s over the wall time (bytes per op `bytes`) and the p50 latency.
template <typename Fn>
Stat MeasureParallel(int threads, double seconds, int max_ops, uint64_t bytes, Fn&& op) {
  std::atomic<int> ops{0};
  std::atomic<bool> failed{false};
  std::vector<std::vector<double>> lat(threads);
  const absl::Time start = absl::Now(), end = start + absl::Seconds(seconds);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t i = 0; absl::Now() < end && ops.fetch_add(1) < max_ops && !failed; ++i) {
        const absl::Time t0 = absl::Now();
        if (!op(t, i)) failed = true;
        lat[t].push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
      }
    });
  }
  for (auto& th : pool) th.join();
  if (failed) {
    std::fprintf(stderr, "operation failed\n");
    std::exit(1);
  }
  const double total = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  Stat s;
  s.ops = static_cast<int>(all.size());
  s.gbps = static_cast<double>(bytes) * s.ops / total / 1e9;
  s.p50_us = Percentile(all, 50);
  s.p99_us = Percentile(all, 99);
  return s;
}

// MeasureParallel on one thread: `op(i)` (i = 0, 1, ...).
template <typename Fn>
Stat Measure(double seconds, int max_ops, uint64_t bytes, Fn&& op) {
  return MeasureParallel(1, seconds, max_ops, bytes, [&](int, size_t i) { return op(i); });
}

int Main(int argc, char** argv) {
  CLI::App app{"kvblock cluster data-path benchmark"};
  bool smoke = false;
  double seconds = 2.0;
  std::string binary = KVBLOCK_BIN;
  app.add_flag("--smoke", smoke, "Tiny run with byte checks (ctest)");
  app.add_option("--seconds", seconds, "Seconds per measurement")->capture_default_str();
  app.add_option("--kvblock", binary, "kvblock binary")->capture_default_str();
  std::vector<uint32_t> lanes = {1, 2, 4, 8};
  int fetchers = 8;
  bool lanes_only = false;
  app.add_option("--lanes", lanes, "Data-plane lane counts to measure (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--fetchers", fetchers, "Threads calling FetchInto at once in the lane runs")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_flag("--lanes-only", lanes_only, "Only the lane runs (no single-fetch table, no Lookup)");
  CLI11_PARSE(app, argc, argv);
  if (smoke) {
    seconds = 0.2;
    lanes = {1, 2};
    fetchers = 2;
  }

  TempDir dir;
  WriteFile(dir.Sub("token"), "bench-token");
  const int grpc_port = FreePort(), ucx_port = FreePort();
  ChildProcess server;
  const std::string ready = dir.Sub("ready");
  if (!server.Start(
          binary,
          {"cache-server", "--listen", absl::StrCat("127.0.0.1:", grpc_port), "--ucx-listen",
           absl::StrCat("127.0.0.1:", ucx_port), "--data-dir", dir.Sub("data"), "--memory-bytes",
           "2GiB", "--max-block-bytes", "80MiB", "--auth-token-file", dir.Sub("token"), "--sync",
           "none", "--shm-socket", dir.Sub("shm.sock"), "--ready-file", ready},
          dir.Sub("server.log")) ||
      !WaitForFile(ready, std::chrono::seconds(30))) {
    std::fprintf(stderr, "server did not start: %s\n",
                 ReadFileOrEmpty(dir.Sub("server.log")).c_str());
    return 1;
  }
  // Each client reads over one path only: shared memory, UCX, or (neither) gRPC.
  auto make = [&](bool ucx, uint32_t lanes = CacheClientOptions().data_plane_lanes,
                  bool shm = false) {
    CacheClientOptions o;
    o.use_shared_memory = shm;
    o.members = {absl::StrCat("127.0.0.1:", grpc_port)};
    o.replication = 1;
    o.auth_token = "bench-token";
    o.use_data_plane = ucx;
    o.data_plane_lanes = lanes;
    o.rpc_timeout = absl::Seconds(30);
    auto c = CacheClient::Create(o);
    if (!c.ok()) std::abort();
    return *std::move(c);
  };
  auto ucx = make(true), grpc = make(false), shm = make(false, 1, true);
  if (!ucx->HasDataPlane(0) || !shm->HasSharedMemory(0)) {
    std::fprintf(stderr, "UCX or shared-memory data plane did not open\n");
    return 1;
  }
  // Shared memory as a consumer sees it: Get (zero copy, a lease on the node), then one pass
  // over the bytes into `dst` (what a GPU copy does), then the lease goes.
  auto shm_copy = [&](const TestBlock& b, std::vector<uint8_t>& dst) {
    absl::StatusOr<BlockBytes> got = shm->Get(b.key);
    if (!got.ok() || got->bytes.size() != dst.size()) return false;
    std::memcpy(dst.data(), got->bytes.data(), dst.size());
    return true;
  };

  std::mt19937_64 rng(42);
  struct Size {
    const char* name;
    uint32_t layers, tokens;  // payload = 96 + layers * tokens * 512
  };
  const std::vector<Size> sizes = {{"128 KiB", 8, 32}, {"1 MiB", 32, 64}, {"8 MiB", 32, 512}};
  nlohmann::json results = nlohmann::json::array();
  if (!lanes_only) {
    std::printf(
        "| payload | memcpy GB/s | shm Get+copy GB/s | UCX GB/s | gRPC GB/s | shm/memcpy | "
        "UCX/memcpy | shm/UCX | shm Get p50 us (no copy) | shm p50/p99 us | UCX p50/p99 us | "
        "gRPC p50/p99 us |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
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
        return !smoke ||
               std::memcmp(dst.data(), blocks[i % blocks.size()].payload.data(), bytes) == 0;
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
      Stat sh = Measure(seconds, max_ops, bytes, [&](size_t i) {
        return shm_copy(blocks[i % blocks.size()], dst) && check(i);
      });
      Stat get_only = Measure(seconds, max_ops, bytes, [&](size_t i) {
        absl::StatusOr<BlockBytes> got = shm->Get(blocks[i % blocks.size()].key);
        return got.ok() && got->bytes.size() == bytes;
      });
      Stat u = Measure(seconds, max_ops, bytes, [&](size_t i) {
        auto n = ucx->FetchInto(blocks[i % blocks.size()].key, absl::MakeSpan(dst));
        return n.ok() && *n == bytes && check(i);
      });
      Stat g = Measure(seconds, max_ops, bytes, [&](size_t i) {
        auto n = grpc->FetchInto(blocks[i % blocks.size()].key, absl::MakeSpan(dst));
        return n.ok() && *n == bytes && check(i);
      });
      std::printf(
          "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f / %.0f | %.0f / %.0f "
          "| %.0f / %.0f |\n",
          sz.name, mem.gbps, sh.gbps, u.gbps, g.gbps, sh.gbps / mem.gbps, u.gbps / mem.gbps,
          sh.gbps / u.gbps, get_only.p50_us, sh.p50_us, sh.p99_us, u.p50_us, u.p99_us, g.p50_us,
          g.p99_us);
      results.push_back({{"payload", sz.name},
                         {"bytes", bytes},
                         {"memcpy_gbps", mem.gbps},
                         {"shm_gbps", sh.gbps},
                         {"shm_get_p50_us", get_only.p50_us},
                         {"shm_p50_us", sh.p50_us},
                         {"shm_p99_us", sh.p99_us},
                         {"ucx_gbps", u.gbps},
                         {"grpc_gbps", g.gbps},
                         {"ucx_p50_us", u.p50_us},
                         {"ucx_p99_us", u.p99_us},
                         {"grpc_p50_us", g.p50_us},
                         {"grpc_p99_us", g.p99_us},
                         {"ops", {mem.ops, sh.ops, u.ops, g.ops}}});
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
    std::printf(
        "\nbatch Lookup (1024 keys/call, half present): %.0f keys/s, p50 %.0f us, p99 %.0f us\n",
        keys_per_s, l.p50_us, l.p99_us);
    results.push_back({{"lookup_keys_per_s", keys_per_s},
                       {"lookup_p50_us", l.p50_us},
                       {"lookup_p99_us", l.p99_us}});
  }

  // Data-plane lanes: `fetchers` threads at once, each into its own buffer, per lane count.
  const std::vector<Size> lane_sizes =
      smoke ? std::vector<Size>{{"1 MiB", 32, 64}, {"2 MiB", 32, 128}}
            : std::vector<Size>{{"8 MiB", 32, 512}, {"64 MiB", 32, 4096}};
  std::printf("\nlanes: %d fetchers, FetchInto into one buffer each, blocks rotated\n\n", fetchers);
  std::printf(
      "| payload | path | GB/s | memcpy 1 thread GB/s | memcpy %d threads GB/s | "
      "/ memcpy 1 thread | / memcpy %d threads | fetch p50 ms | client cores | "
      "server cores |\n|---|---|---|---|---|---|---|---|---|---|\n",
      fetchers, fetchers);
  for (const Size& sz : lane_sizes) {
    // 256 MiB or more of distinct blocks, at least one per fetcher (two per fetcher in the smoke
    // run). A large L3 (300 MiB on the GPU machine's host) may hold part of the 8 MiB set, for
    // memcpy and UCX alike; the 64 MiB set (512 MiB) does not fit.
    const uint64_t bytes = 96 + uint64_t{sz.layers} * sz.tokens * 512;
    const int count =
        smoke ? 2 * fetchers : std::max<int>(fetchers, static_cast<int>((256ull << 20) / bytes));
    std::vector<TestBlock> blocks;
    for (int i = 0; i < count; ++i) {
      blocks.push_back(RandomBlock(rng, sz.layers, sz.tokens));
      if (!grpc->Put(blocks.back().key, blocks.back().payload).ok()) return 1;
    }
    std::vector<std::vector<uint8_t>> dst(fetchers, std::vector<uint8_t>(bytes));
    const int max_ops = smoke ? 8 * fetchers : 1000000;
    auto source = [&](int t, size_t i) -> const TestBlock& {
      return blocks[(t * 7 + i) % blocks.size()];
    };
    auto check = [&](int t, size_t i) {
      return !smoke || std::memcmp(dst[t].data(), source(t, i).payload.data(), bytes) == 0;
    };
    auto copy = [&](int t, size_t i) {
      std::memcpy(dst[t].data(), source(t, i).payload.data(), bytes);
      return check(t, i);
    };
    Stat mem1 = MeasureParallel(1, seconds, max_ops, bytes, copy);
    Stat memn = MeasureParallel(fetchers, seconds, max_ops, bytes, copy);
    nlohmann::json runs = nlohmann::json::array();
    // Prints a path's row and records it in `runs`: `run` (the path's own keys) plus the rest.
    auto report = [&](const std::string& path, const Stat& u, double client_cores,
                      double server_cores, nlohmann::json run) {
      std::printf("| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", sz.name,
                  path.c_str(), u.gbps, mem1.gbps, memn.gbps, u.gbps / mem1.gbps,
                  u.gbps / memn.gbps, u.p50_us / 1000, client_cores, server_cores);
      run["p50_us"] = u.p50_us;
      run["p99_us"] = u.p99_us;
      run["ops"] = u.ops;
      run["client_cores"] = client_cores;
      run["server_cores"] = server_cores;
      runs.push_back(std::move(run));
    };
    auto measure = [&](auto&& fetch, double* client_cores, double* server_cores) {
      for (int t = 0; t < fetchers; ++t) {  // warm-up: connections, registration caches
        if (!fetch(t, 0)) std::exit(1);
      }
      const double client_cpu0 = CpuSeconds(getpid()), server_cpu0 = CpuSeconds(server.pid());
      const absl::Time t0 = absl::Now();
      Stat u = MeasureParallel(fetchers, seconds, max_ops, bytes, fetch);
      const double wall = absl::ToDoubleSeconds(absl::Now() - t0);
      *client_cores = (CpuSeconds(getpid()) - client_cpu0) / wall;
      *server_cores = (CpuSeconds(server.pid()) - server_cpu0) / wall;
      return u;
    };
    {
      double client_cores = 0, server_cores = 0;
      Stat u = measure(
          [&](int t, size_t i) { return shm_copy(source(t, i), dst[t]) && check(t, i); },
          &client_cores, &server_cores);
      report("shm", u, client_cores, server_cores, {{"path", "shm"}, {"gbps", u.gbps}});
    }
    for (uint32_t l : lanes) {
      auto client = make(true, l);
      if (!client->HasDataPlane(0)) {
        std::fprintf(stderr, "UCX data plane did not open with %u lanes\n", l);
        return 1;
      }
      double client_cores = 0, server_cores = 0;
      Stat u = measure(
          [&](int t, size_t i) {
            auto n = client->FetchInto(source(t, i).key, absl::MakeSpan(dst[t]));
            return n.ok() && *n == bytes && check(t, i);
          },
          &client_cores, &server_cores);
      report(absl::StrCat("UCX ", l, " lanes"), u, client_cores, server_cores,
             {{"lanes", l}, {"ucx_gbps", u.gbps}});
    }
    results.push_back({{"lanes_payload", sz.name},
                       {"bytes", bytes},
                       {"fetchers", fetchers},
                       {"memcpy_1_gbps", mem1.gbps},
                       {"memcpy_n_gbps", memn.gbps},
                       {"runs", runs}});
    for (const auto& b : blocks) (void)grpc->Delete(b.key);
  }
  std::printf("JSON %s\n", results.dump().c_str());
  const int st = server.Kill(SIGTERM);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}

}  // namespace
}  // namespace kvblock

int main(int argc, char** argv) { return kvblock::Main(argc, argv); }
