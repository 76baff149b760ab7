// Test helper: serves a registry with the standard kvblock families and synthetic cache-server
// traffic (requests by method and code, latencies, bytes by plane and direction, hits by tier,
// moving tier stats) so promtool, Prometheus and Chromium have realistic, changing values to
// check. Not a kvblock component: the real `kvblock cache-server` exposes the same families.
//
//   metrics_demo_server --listen 127.0.0.1:0 --port-file /tmp/p --max-seconds 60
//
// Prints "listening on HOST:PORT", writes PORT to --port-file once serving, exits 0 on SIGTERM
// or SIGINT or after --max-seconds (bounded on purpose: a leaked helper cannot outlive a test
// run by much).
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/time/clock.h"
#include "services/metrics/metrics_http_server.h"
#include "services/metrics/standard_metrics.h"

namespace {

using kvblock::StoreTier;
using kvblock::TierStats;
using namespace kvblock::metrics;

struct Traffic {
  double requests_per_s = 2000;
  double hit_ratio = 0.8;
};

// Simulated tier state, read by the tier stats collector.
class FakeTiers {
 public:
  explicit FakeTiers(uint64_t memory_budget) : memory_budget_(memory_budget) {}
  void Insert(uint64_t bytes, bool to_memory) {
    absl::MutexLock lock(&mu_);
    TierStats& t = to_memory ? memory_ : disk_;
    t.blocks++;
    t.bytes += bytes;
    t.inserts++;
    while (memory_.bytes > memory_budget_ && memory_.blocks > 0) {  // evict to disk
      const uint64_t avg = memory_.bytes / memory_.blocks;
      memory_.bytes -= avg;
      memory_.blocks--;
      memory_.evictions++;
    }
  }
  void Read(StoreTier served_by) {
    absl::MutexLock lock(&mu_);
    if (served_by == StoreTier::kMemory) {
      memory_.hits++;
    } else {
      memory_.misses++;
      (served_by == StoreTier::kDisk ? disk_.hits : disk_.misses)++;
    }
  }
  std::vector<TierStats> Stats() const {
    absl::MutexLock lock(&mu_);
    TierStats m = memory_, d = disk_;
    m.tier = StoreTier::kMemory;
    m.capacity_bytes = memory_budget_;
    d.tier = StoreTier::kDisk;
    return {m, d};
  }

 private:
  const uint64_t memory_budget_;
  mutable absl::Mutex mu_;
  TierStats memory_ ABSL_GUARDED_BY(mu_);
  TierStats disk_ ABSL_GUARDED_BY(mu_);
};

void GenerateTraffic(const Traffic& traffic, ServiceMetrics m, HistogramFamily* payload_sizes,
                     FakeTiers* tiers, std::atomic<bool>* stop) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(0, 1);
  std::lognormal_distribution<double> lookup_s(std::log(0.0003), 0.5);
  std::lognormal_distribution<double> get_mem_s(std::log(0.002), 0.4);
  std::lognormal_distribution<double> get_disk_s(std::log(0.008), 0.5);
  std::lognormal_distribution<double> put_s(std::log(0.005), 0.6);
  std::lognormal_distribution<double> payload(std::log(1 << 20), 0.7);  // ~1 MiB blocks
  Histogram* size_get = *payload_sizes->WithLabels({"Get"});
  Histogram* size_put = *payload_sizes->WithLabels({"Put"});
  // Handles resolved once, as a server does: the loop below only touches atomics.
  Counter* hit_memory = *m.cache_hits->WithLabels({"memory"});
  Counter* hit_disk = *m.cache_hits->WithLabels({"disk"});
  Counter* misses = *m.cache_misses->WithLabels({});
  Counter* lookup_ok = *m.requests->WithLabels({"Lookup", "OK"});
  Counter* get_ok = *m.requests->WithLabels({"Get", "OK"});
  Counter* get_not_found = *m.requests->WithLabels({"Get", "NOT_FOUND"});
  Counter* put_ok = *m.requests->WithLabels({"Put", "OK"});
  Counter* put_too_big = *m.requests->WithLabels({"Put", "RESOURCE_EXHAUSTED"});
  Histogram* lookup_latency = *m.request_duration->WithLabels({"Lookup"});
  Histogram* get_latency = *m.request_duration->WithLabels({"Get"});
  Histogram* put_latency = *m.request_duration->WithLabels({"Put"});
  Counter* ucx_out = *m.bytes->WithLabels({"ucx", "out"});
  Counter* grpc_out = *m.bytes->WithLabels({"grpc", "out"});
  Counter* grpc_in = *m.bytes->WithLabels({"grpc", "in"});
  const absl::Duration tick = absl::Milliseconds(10);
  double carry = 0;
  absl::Time next = absl::Now();
  while (!stop->load()) {
    carry += traffic.requests_per_s * absl::ToDoubleSeconds(tick);
    for (; carry >= 1; carry -= 1) {
      const double r = u(rng);
      if (r < 0.5) {  // Lookup of 8 keys
        for (int k = 0; k < 8; ++k) {
          if (u(rng) < traffic.hit_ratio) {
            const bool mem = u(rng) < 0.7;
            (mem ? hit_memory : hit_disk)->Increment();
          } else {
            misses->Increment();
          }
        }
        lookup_ok->Increment();
        lookup_latency->Observe(lookup_s(rng));
      } else if (r < 0.85) {  // Get of one block
        const bool hit = u(rng) < traffic.hit_ratio;
        const bool mem = hit && u(rng) < 0.7;
        tiers->Read(hit ? (mem ? StoreTier::kMemory : StoreTier::kDisk) : StoreTier::kNone);
        if (hit) {
          (mem ? hit_memory : hit_disk)->Increment();
          const double bytes = payload(rng);
          size_get->Observe(bytes);
          (u(rng) < 0.8 ? ucx_out : grpc_out)->Increment(static_cast<uint64_t>(bytes));
        } else {
          misses->Increment();
        }
        (hit ? get_ok : get_not_found)->Increment();
        get_latency->Observe(mem ? get_mem_s(rng) : get_disk_s(rng));
      } else {  // Put of one block
        const double bytes = payload(rng);
        size_put->Observe(bytes);
        tiers->Insert(static_cast<uint64_t>(bytes), /*to_memory=*/true);
        tiers->Insert(static_cast<uint64_t>(bytes), /*to_memory=*/false);
        grpc_in->Increment(static_cast<uint64_t>(bytes));
        const bool too_big = u(rng) < 0.002;
        (too_big ? put_too_big : put_ok)->Increment();
        put_latency->Observe(put_s(rng));
      }
    }
    next += tick;
    absl::SleepFor(next - absl::Now());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Serves synthetic kvblock metrics for the metrics tests"};
  MetricsHttpServerOptions options;
  options.title = "metrics-demo";
  std::string port_file, data_dir = "/tmp";
  double max_seconds = 60;
  Traffic traffic;
  app.add_option("--listen", options.listen_address, "host:port (port 0: any free port)");
  app.add_option("--port-file", port_file, "write the bound port here once serving");
  app.add_option("--max-seconds", max_seconds, "exit after this long")->check(CLI::Range(1, 3600));
  app.add_option("--title", options.title, "dashboard title");
  app.add_option("--rate", traffic.requests_per_s, "synthetic requests per second")
      ->check(CLI::Range(1, 100000));
  app.add_option("--hit-ratio", traffic.hit_ratio, "fraction of keys found")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--data-dir", data_dir, "directory whose filesystem is reported");
  CLI11_PARSE(app, argc, argv);

  // SIGTERM/SIGINT are taken synchronously by the main thread (blocked in every thread).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  MetricsRegistry registry;
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "metrics_demo_server: %s\n", s.ToString().c_str());
    return 1;
  };
  if (absl::Status s = RegisterProcessMetrics(&registry, {.component = "metrics-demo"}); !s.ok()) {
    return fail(s);
  }
  auto service = ServiceMetrics::Register(&registry);
  if (!service.ok()) return fail(service.status());
  auto sizes = registry.AddHistogram(
      {"kvblock_block_payload_bytes", "Size of block payloads moved, by method.", {"method"}},
      SizeBuckets());
  if (!sizes.ok()) return fail(sizes.status());
  FakeTiers tiers(/*memory_budget=*/256ull << 20);
  if (auto s = RegisterTierStatsCollector(&registry, [&tiers] { return tiers.Stats(); }); !s.ok()) {
    return fail(s.status());
  }
  if (auto s = RegisterFilesystemCollector(&registry, {data_dir}); !s.ok()) {
    return fail(s.status());
  }

  MetricsHttpServer server(&registry, options);
  if (absl::Status s = server.Start(); !s.ok()) return fail(s);
  const absl::Time started = absl::Now();
  server.SetReadinessCheck([started]() -> absl::Status {
    if (absl::Now() - started < absl::Milliseconds(300)) {
      return absl::UnavailableError("warming up");
    }
    return absl::OkStatus();
  });

  std::atomic<bool> stop{false};
  std::thread load(GenerateTraffic, traffic, *service, *sizes, &tiers, &stop);

  std::printf("listening on %s\n", server.address().c_str());
  std::fflush(stdout);
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << server.port() << "\n";
    std::rename(tmp.c_str(), port_file.c_str());
  }

  const absl::Time deadline = absl::Now() + absl::Seconds(max_seconds);
  int exit_signal = 0;
  while (exit_signal <= 0 && absl::Now() < deadline) {
    timespec wait{0, 100 * 1000 * 1000};
    exit_signal = sigtimedwait(&signals, nullptr, &wait);
  }
  stop = true;
  load.join();
  server.Stop();
  std::printf("stopped (%s)\n", exit_signal > 0 ? "signal" : "max-seconds reached");
  return 0;
}
