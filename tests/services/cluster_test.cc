// Multi-process cluster tests: real `kvblock cache-server` nodes on loopback driven by the real
// CacheClient and `kvblock cache-ctl`.
//  - 3 nodes, R=2: SIGKILL one under read load, every read of replicated data still succeeds;
//    restart it and it serves its blocks from RocksDB.
//  - SIGTERM drains and exits 0; the restart on the existing data dir is fast.
//  - 32 concurrent clients for a bounded time: throughput, p50/p99, errors (must be 0).
//  - cache-ctl subcommands and their exit codes.
#include <sys/wait.h>

#include <array>
#include <atomic>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/cache_client.h"
#include "tests/services/cluster_test_util.h"

namespace kvblock {
namespace {

using namespace kvblock::testing;  // NOLINT

constexpr char kToken[] = "cluster-token-42";

struct Node {
  int grpc_port = 0;
  int ucx_port = 0;
  std::string dir;
  std::unique_ptr<ChildProcess> process;
  double startup_ms = 0;
  std::string address() const { return absl::StrCat("127.0.0.1:", grpc_port); }
};

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override { WriteFile(dir_.Sub("token"), kToken); }

  void MakeNodes(int n) {
    for (int i = 0; i < n; ++i) {
      Node node;
      node.grpc_port = FreePort();
      node.ucx_port = FreePort();
      node.dir = dir_.Sub(absl::StrCat("node", i));
      nodes_.push_back(std::move(node));
    }
  }

  // Starts node i and waits for its ready file.
  void StartNode(int i) {
    Node& n = nodes_[i];
    const std::string ready = dir_.Sub(absl::StrCat("ready", i));
    std::remove(ready.c_str());
    n.process = std::make_unique<ChildProcess>();
    ASSERT_TRUE(n.process->Start(
        KVBLOCK_BIN,
        {"cache-server", "--listen", n.address(), "--ucx-listen",
         absl::StrCat("127.0.0.1:", n.ucx_port), "--data-dir", n.dir, "--memory-bytes", "64MiB",
         "--auth-token-file", dir_.Sub("token"), "--sync", "group-commit", "--ready-file", ready,
         "--drain-timeout-s", "5"},
        dir_.Sub(absl::StrCat("node", i, ".log"))));
    ASSERT_TRUE(WaitForFile(ready, std::chrono::seconds(30)))
        << ReadFileOrEmpty(dir_.Sub(absl::StrCat("node", i, ".log")));
    n.startup_ms = nlohmann::json::parse(ReadFileOrEmpty(ready))["startup_ms"].get<double>();
  }

  std::vector<std::string> Members() const {
    std::vector<std::string> m;
    for (const Node& n : nodes_) m.push_back(n.address());
    return m;
  }

  std::unique_ptr<CacheClient> Client(std::vector<std::string> members, uint32_t r, bool ucx) {
    CacheClientOptions o;
    o.members = std::move(members);
    o.replication = r;
    o.auth_token = kToken;
    o.use_data_plane = ucx;
    o.rpc_timeout = absl::Seconds(3);
    auto c = CacheClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  std::mt19937_64 rng_{std::random_device{}()};
  TempDir dir_;
  std::vector<Node> nodes_;
};

TEST_F(ClusterTest, KillOneOfThreeUnderLoadThenRecoverFromRocksDb) {
  MakeNodes(3);
  for (int i = 0; i < 3; ++i) StartNode(i);
  auto client = Client(Members(), 2, true);
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 120; ++i) {
    blocks.push_back(RandomBlock(rng_, 2 + rng_() % 6, 8 + rng_() % 56));
    ASSERT_TRUE(client->Put(blocks.back().key, blocks.back().payload).ok());
  }
  // Each block is on exactly its two top-ranked nodes.
  std::vector<std::unique_ptr<CacheClient>> single;
  for (int i = 0; i < 3; ++i) single.push_back(Client({nodes_[i].address()}, 1, false));
  int on_node0 = 0;
  for (const auto& b : blocks) {
    const std::vector<uint32_t> rank = client->Rank(b.key);
    for (int i = 0; i < 3; ++i) {
      std::vector<LookupResult> lr(1);
      single[i]->Lookup({b.key}, absl::MakeSpan(lr));
      const bool expected = static_cast<int>(rank[0]) == i || static_cast<int>(rank[1]) == i;
      EXPECT_EQ(lr[0].present, expected) << "node " << i;
    }
    on_node0 += (rank[0] == 0 || rank[1] == 0);
  }
  ASSERT_GT(on_node0, 40);

  // Readers: half FetchInto, half Get (both through shared memory, UCX or gRPC, whichever the
  // node offers); every result checked byte for byte.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> reads{0}, errors{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 6; ++t) {
    readers.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      while (!stop.load()) {
        const TestBlock& b = blocks[rng() % blocks.size()];
        bool ok;
        if (t % 2 == 0) {
          std::vector<uint8_t> buf(b.payload.size());
          auto n = client->FetchInto(b.key, absl::MakeSpan(buf));
          ok = n.ok() && buf == b.payload;
          if (!n.ok()) std::fprintf(stderr, "FetchInto: %s\n", n.status().ToString().c_str());
        } else {
          auto got = client->Get(b.key);
          ok = got.ok() && std::equal(got->bytes.begin(), got->bytes.end(), b.payload.begin(),
                                      b.payload.end());
          if (!got.ok()) std::fprintf(stderr, "Get: %s\n", got.status().ToString().c_str());
        }
        ++reads;
        if (!ok) ++errors;
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(800));
  const int64_t before_kill = reads.load();
  nodes_[0].process->Kill(SIGKILL);
  absl::SleepFor(absl::Milliseconds(2000));
  stop = true;
  for (auto& t : readers) t.join();
  std::printf("reads: %lld before the kill, %lld in total, %lld errors\n",
              static_cast<long long>(before_kill), static_cast<long long>(reads.load()),
              static_cast<long long>(errors.load()));
  EXPECT_GT(before_kill, 50);
  EXPECT_GT(reads.load() - before_kill, 50) << "reads stalled after the kill";
  EXPECT_EQ(errors.load(), 0);
  EXPECT_TRUE(client->IsEjected(0));

  // Restart: node 0 serves its blocks from RocksDB (its memory tier starts empty).
  StartNode(0);
  std::printf("node 0 restart: %.1f ms to serving\n", nodes_[0].startup_ms);
  EXPECT_LT(nodes_[0].startup_ms, 3000);
  auto fresh = Client({nodes_[0].address()}, 1, false);
  // gRPC shares connections per address inside a process: wait out the reconnect backoff the
  // old client's channels to the dead node are in.
  for (int i = 0; i < 100 && !fresh->NodeStats()[0].ok(); ++i) absl::SleepFor(absl::Milliseconds(50));
  int checked = 0;
  for (const auto& b : blocks) {
    const std::vector<uint32_t> rank = client->Rank(b.key);
    if (rank[0] != 0 && rank[1] != 0) continue;
    std::vector<ClusterLookupResult> lr = fresh->LookupCluster({b.key});
    ASSERT_TRUE(lr[0].present) << "block " << checked << " of " << on_node0 << ": "
                               << fresh->Get(b.key).status() << "\n"
                               << ReadFileOrEmpty(dir_.Sub("node0.log"));
    EXPECT_EQ(lr[0].tier, v1::TIER_DISK);
    auto got = fresh->Get(b.key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(std::equal(got->bytes.begin(), got->bytes.end(), b.payload.begin(), b.payload.end()));
    ++checked;
  }
  EXPECT_EQ(checked, on_node0);
  // The cluster client probes the node back in (probe intervals double while it is down, up to
  // max_eject_duration = 10 s).
  for (int i = 0; i < 240 && client->IsEjected(0); ++i) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(client->IsEjected(0));
}

TEST_F(ClusterTest, SigtermDrainsAndRestartIsFast) {
  MakeNodes(1);
  StartNode(0);
  auto client = Client(Members(), 1, false);
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 30; ++i) {
    blocks.push_back(RandomBlock(rng_, 4, 32));
    ASSERT_TRUE(client->Put(blocks.back().key, blocks.back().payload).ok());
  }
  const int status = nodes_[0].process->Kill(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_NE(ReadFileOrEmpty(dir_.Sub("node0.log")).find("stopped cleanly"), std::string::npos);
  StartNode(0);
  std::printf("restart on an existing data dir: %.1f ms\n", nodes_[0].startup_ms);
  EXPECT_LT(nodes_[0].startup_ms, 3000);
  for (const auto& b : blocks) {
    absl::StatusOr<BlockBytes> got;
    for (int i = 0; i < 50; ++i) {
      got = client->Get(b.key);
      if (got.ok()) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(std::equal(got->bytes.begin(), got->bytes.end(), b.payload.begin(), b.payload.end()));
  }
}

TEST_F(ClusterTest, ThirtyTwoConcurrentClientsBoundedLoad) {
  MakeNodes(3);
  for (int i = 0; i < 3; ++i) StartNode(i);
  constexpr int kClients = 32;
  const absl::Duration kRun = absl::Seconds(3);
  auto seed_client = Client(Members(), 2, false);
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 64; ++i) {
    blocks.push_back(RandomBlock(rng_, 4, 16 + rng_() % 48));
    ASSERT_TRUE(seed_client->Put(blocks.back().key, blocks.back().payload).ok());
  }
  std::vector<std::unique_ptr<CacheClient>> clients;
  for (int i = 0; i < kClients; ++i) clients.push_back(Client(Members(), 2, i % 2 == 0));
  // Warm up every client (connections, UCX sessions) before the clock starts.
  for (auto& c : clients) {
    std::vector<uint8_t> buf(blocks[0].payload.size());
    ASSERT_TRUE(c->FetchInto(blocks[0].key, absl::MakeSpan(buf)).ok());
    (void)c->LookupCluster({blocks[1].key});
  }
  std::atomic<int64_t> errors{0}, bytes{0};
  std::vector<std::vector<double>> lat(kClients);
  std::vector<std::array<std::vector<double>, 3>> kind_lat(kClients);
  std::vector<std::thread> threads;
  const absl::Time end = absl::Now() + kRun;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937_64 rng(1000 + c);
      for (int op = 0; op < 100000 && absl::Now() < end; ++op) {
        const absl::Time t0 = absl::Now();
        const int kind = static_cast<int>(rng() % 10);
        bool ok = true;
        if (kind < 6) {  // read
          const TestBlock& b = blocks[rng() % blocks.size()];
          std::vector<uint8_t> buf(b.payload.size());
          auto n = clients[c]->FetchInto(b.key, absl::MakeSpan(buf));
          ok = n.ok() && buf == b.payload;
          bytes += b.payload.size();
        } else if (kind < 8) {  // batch lookup of 16 keys, half absent
          std::vector<BlockKey> keys;
          for (int k = 0; k < 8; ++k) keys.push_back(blocks[rng() % blocks.size()].key);
          for (int k = 0; k < 8; ++k) keys.push_back(Hash128{rng(), rng()});
          auto r = clients[c]->LookupCluster(keys);
          for (int k = 0; k < 16; ++k) ok = ok && (r[k].present == (k < 8));
        } else {  // write a new block
          TestBlock b = RandomBlock(rng, 2, 16);
          ok = clients[c]->Put(b.key, b.payload).ok();
          bytes += b.payload.size();
        }
        if (!ok) ++errors;
        lat[c].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        kind_lat[c][kind < 6 ? 0 : kind < 8 ? 1 : 2].push_back(lat[c].back());
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  const double secs = absl::ToDoubleSeconds(kRun);
  const double ops = static_cast<double>(all.size());
  const double p50 = Percentile(all, 50), p99 = Percentile(all, 99);
  std::printf(
      "load: %d clients, %.1f s, %.0f ops (%.0f ops/s, %.1f MB/s), p50 %.2f ms, p99 %.2f ms, "
      "%lld errors\n",
      kClients, secs, ops, ops / secs, bytes.load() / secs / 1e6, p50, p99,
      static_cast<long long>(errors.load()));
  const char* names[] = {"read", "lookup16", "put"};
  for (int k = 0; k < 3; ++k) {
    std::vector<double> v;
    for (auto& a : kind_lat) v.insert(v.end(), a[k].begin(), a[k].end());
    const size_t n = v.size();
    const double p50k = Percentile(v, 50), p99k = Percentile(v, 99);
    std::printf("  %-8s %6zu ops, p50 %.2f ms, p99 %.2f ms\n", names[k], n, p50k, p99k);
  }
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(ops, 5 * kClients);
}

struct CtlResult {
  int exit_code;
  std::string out;
};

CtlResult Ctl(const std::string& args) {
  std::string cmd = std::string(KVBLOCK_BIN) + " cache-ctl " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  CtlResult r{-1, ""};
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

TEST_F(ClusterTest, CacheCtlCommandsAndExitCodes) {
  MakeNodes(2);
  for (int i = 0; i < 2; ++i) StartNode(i);
  WriteFile(dir_.Sub("members"), absl::StrCat("# test cluster\n", nodes_[0].address(), "\n",
                                              nodes_[1].address(), "  # second\n"));
  const std::string common = absl::StrCat("--cache ", dir_.Sub("members"),
                                          " --auth-token-file ", dir_.Sub("token"));
  TestBlock b = RandomBlock(rng_, 6, 40);
  const std::string file = dir_.Sub("block.bin");
  WriteFile(file, std::string(b.payload.begin(), b.payload.end()));
  CtlResult r = Ctl(common + " put " + file);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find(b.key.ToHex()), std::string::npos) << r.out;
  r = Ctl(common + " lookup " + b.key.ToHex());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("\"present\":true"), std::string::npos) << r.out;
  const std::string absent = Hash128{rng_(), rng_()}.ToHex();
  r = Ctl(common + " lookup " + b.key.ToHex() + " " + absent);
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = Ctl(common + " get " + b.key.ToHex() + " -o " + dir_.Sub("out.bin"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(ReadFileOrEmpty(dir_.Sub("out.bin")), std::string(b.payload.begin(), b.payload.end()));
  r = Ctl(common + " get " + absent + " -o " + dir_.Sub("none.bin"));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = Ctl(common + " stats");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("\"disk\""), std::string::npos) << r.out;
  r = Ctl(common + " drain 1");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("\"draining\":true"), std::string::npos) << r.out;
  r = Ctl(common + " drain " + nodes_[1].address() + " --undrain");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = Ctl(common + " delete " + b.key.ToHex());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = Ctl(common + " lookup " + b.key.ToHex());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  // Errors: bad key (1), wrong token (4), nobody listening (3), no --cache or a bad one (1).
  r = Ctl(common + " lookup not-a-key");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  WriteFile(dir_.Sub("bad-token"), "wrong");
  r = Ctl(absl::StrCat("--cache ", nodes_[0].address(), " --auth-token-file ",
                       dir_.Sub("bad-token"), " stats"));
  EXPECT_EQ(r.exit_code, 4) << r.out;
  r = Ctl(absl::StrCat("--cache 127.0.0.1:", FreePort(), " --timeout-s 1 stats"));
  EXPECT_EQ(r.exit_code, 3) << r.out;
  r = Ctl("stats");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  r = Ctl(absl::StrCat("--cache ", dir_.Sub("no-such-members"), " stats"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("no such members file"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kvblock
