// The UCX data plane on loopback against a real MemoryTier:
//  - UcxServer reads blocks on reader threads: a fetch whose store read blocks (a slow disk) must
//    not stall fetches of other blocks on the same session, and its own reply still arrives
//    byte-exact once the read returns (a gate on one key: an explicit hook, no sleeps);
//  - lanes: concurrent fetches over several lanes come back byte-exact and use every lane; a
//    refused token on one lane fails the whole Connect and leaves nothing authenticated; a
//    stopped server fails every lane's fetches with UNAVAILABLE, promptly; a deadline on one
//    lane leaves the caller's buffer alone while the other lanes keep serving.
#include "services/ucx_data_plane.h"

#include <atomic>
#include <random>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "cache/memory_tier.h"
#include "gtest/gtest.h"
#include "tests/cache/store_test_util.h"

namespace kvblock {
namespace {

using testing::MakeBlock;
using testing::RandomModel;
using testing::TestBlock;

// Forwards to a real store; Get of `gated` waits until `open` is notified, and notifies `read`
// once the inner read returned.
class GatedStore final : public testing::ForwardingStore {
 public:
  GatedStore(BlockStore* inner, BlockKey gated) : ForwardingStore(inner), gated_(gated) {}
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override {
    if (key == gated_) {
      entered.Notify();
      open.WaitForNotification();
      absl::StatusOr<BlockBytes> r = inner_->Get(key);
      read.Notify();
      return r;
    }
    return inner_->Get(key);
  }

  absl::Notification entered, open, read;

 private:
  BlockKey gated_;
};

// Opens a session on every lane of `client` with fresh tokens from `server`.
absl::StatusOr<int> ConnectAllLanes(UcxServer& server, UcxClient& client) {
  std::vector<SessionTicket> tickets;
  for (int i = 0; i < client.lanes(); ++i) {
    absl::StatusOr<v1::OpenDataPlaneResponse> open = server.OpenSession(client.WorkerAddress(i));
    if (!open.ok()) return open.status();
    tickets.push_back({open->listener_address(), open->session_token()});
  }
  return client.Connect(tickets, absl::Seconds(10));
}

// A node serving blocks from a memory tier of its own (through a GatedStore when a gated key is
// given) and a client connected to it on every one of its lanes (members destroyed client first,
// then the node, then the stores).
struct LanesSetup {
  std::unique_ptr<MemoryTier> memory;
  std::unique_ptr<GatedStore> gate;  // null unless gated
  std::unique_ptr<UcxServer> server;
  std::unique_ptr<UcxClient> client;
  int session = -1;
};
absl::StatusOr<LanesSetup> ServeOverLanes(const std::vector<TestBlock>& blocks, uint32_t lanes,
                                          const BlockKey* gated = nullptr) {
  LanesSetup s;
  absl::StatusOr<std::unique_ptr<MemoryTier>> memory = MemoryTier::Create({});
  if (!memory.ok()) return memory.status();
  s.memory = *std::move(memory);
  for (const TestBlock& b : blocks) {
    if (absl::Status put = s.memory->Put(b.key, b.payload); !put.ok()) return put;
  }
  if (gated != nullptr) s.gate = std::make_unique<GatedStore>(s.memory.get(), *gated);
  BlockStore* store = s.gate != nullptr ? static_cast<BlockStore*>(s.gate.get()) : s.memory.get();
  absl::StatusOr<std::unique_ptr<UcxServer>> server = UcxServer::Start({}, store, nullptr);
  if (!server.ok()) return server.status();
  s.server = *std::move(server);
  absl::StatusOr<std::unique_ptr<UcxClient>> client = UcxClient::Create({.lanes = lanes});
  if (!client.ok()) return client.status();
  s.client = *std::move(client);
  absl::StatusOr<int> session = ConnectAllLanes(*s.server, *s.client);
  if (!session.ok()) return session.status();
  s.session = *session;
  return s;
}

// Waits (bounded) until `done` holds.
template <typename Fn>
bool Eventually(Fn&& done, absl::Duration limit = absl::Seconds(10)) {
  const absl::Time end = absl::Now() + limit;
  while (!done()) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

TEST(UcxServerTest, ASlowStoreReadDoesNotStallOtherFetches) {
  const ModelFingerprint m = RandomModel(std::random_device{}());
  TestBlock slow = MakeBlock(m, 1, 256, 4), fast = MakeBlock(m, 2, 256, 4);  // 128 KiB each
  absl::StatusOr<LanesSetup> setup = ServeOverLanes({slow, fast}, 1, &slow.key);  // one endpoint
  ASSERT_TRUE(setup.ok()) << setup.status();
  GatedStore& store = *setup->gate;
  UcxClient& client = *setup->client;
  const int session = setup->session;

  std::vector<uint8_t> slow_out(slow.payload.size()), fast_out(fast.payload.size());
  absl::StatusOr<uint64_t> slow_n = absl::UnknownError("not run");
  std::thread slow_fetch([&] {
    slow_n = client.Fetch(session, slow.key, absl::MakeSpan(slow_out), absl::Seconds(30));
  });
  ASSERT_TRUE(store.entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // The slow read is blocked inside the store; the same session still gets other blocks.
  for (int i = 0; i < 3; ++i) {
    auto n = client.Fetch(session, fast.key, absl::MakeSpan(fast_out), absl::Seconds(5));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(fast_out, fast.payload);
  }
  EXPECT_FALSE(store.open.HasBeenNotified());
  store.open.Notify();
  slow_fetch.join();
  ASSERT_TRUE(slow_n.ok()) << slow_n.status();
  EXPECT_EQ(*slow_n, slow.payload.size());
  EXPECT_EQ(slow_out, slow.payload);
}

TEST(UcxLanesTest, ConcurrentFetchesOverLanesAreByteExact) {
  std::mt19937_64 rng(std::random_device{}());
  const ModelFingerprint m = RandomModel(rng());
  // 24 blocks of 16 KiB .. 4.5 MiB (several rendezvous segments for the big ones).
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 24; ++i) {
    const uint32_t tokens = 32u << (i % 6), layers = 1 + i % 5;
    blocks.push_back(MakeBlock(m, rng(), tokens, layers, 8, 64));
  }
  absl::StatusOr<LanesSetup> setup = ServeOverLanes(blocks, 4);
  ASSERT_TRUE(setup.ok()) << setup.status();
  UcxClient* client = setup->client.get();
  const int session = setup->session;
  ASSERT_EQ(client->lanes(), 4);
  EXPECT_EQ(setup->server->authenticated_sessions(), 4);

  constexpr int kThreads = 8, kFetches = 30;
  std::atomic<int> good{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, seed = rng()] {
      std::mt19937_64 r(seed);
      std::vector<uint8_t> out;
      for (int i = 0; i < kFetches; ++i) {
        const TestBlock& b = blocks[r() % blocks.size()];
        // A buffer a little larger than the payload, filled with garbage first.
        out.assign(b.payload.size() + r() % 4096, static_cast<uint8_t>(r()));
        auto n = client->Fetch(session, b.key, absl::MakeSpan(out), absl::Seconds(30));
        const bool same = n.ok() && *n == b.payload.size() &&
                          std::equal(b.payload.begin(), b.payload.end(), out.begin());
        (same ? good : bad).fetch_add(1);
      }
      // The error answers travel the lanes too.
      auto absent =
          client->Fetch(session, Hash128{r(), r()}, absl::MakeSpan(out), absl::Seconds(30));
      if (!absl::IsNotFound(absent.status())) bad.fetch_add(1);
      std::vector<uint8_t> small(100);
      auto too_small =
          client->Fetch(session, blocks[0].key, absl::MakeSpan(small), absl::Seconds(30));
      if (!absl::IsOutOfRange(too_small.status())) bad.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(good.load(), kThreads * kFetches);
  const std::vector<uint64_t> per_lane = client->FetchesPerLane();
  ASSERT_EQ(per_lane.size(), 4u);
  uint64_t total = 0;
  for (uint64_t n : per_lane) {
    EXPECT_GT(n, 0u) << "every lane carries fetches";
    total += n;
  }
  EXPECT_EQ(total, static_cast<uint64_t>(kThreads * (kFetches + 2)));
}

TEST(UcxLanesTest, ARefusedTokenOnOneLaneFailsTheConnectCleanly) {
  const ModelFingerprint m = RandomModel(std::random_device{}());
  TestBlock b = MakeBlock(m, 7, 256, 4);
  auto memory = MemoryTier::Create({}).value();
  ASSERT_TRUE(memory->Put(b.key, b.payload).ok());
  auto server = UcxServer::Start({}, memory.get(), nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = UcxClient::Create({.lanes = 3});
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<SessionTicket> tickets;
  for (int i = 0; i < 3; ++i) {
    auto open = (*server)->OpenSession((*client)->WorkerAddress(i));
    ASSERT_TRUE(open.ok()) << open.status();
    tickets.push_back({open->listener_address(), open->session_token()});
  }
  EXPECT_EQ(
      (*client)->Connect(absl::MakeSpan(tickets).subspan(0, 2), absl::Seconds(5)).status().code(),
      absl::StatusCode::kInvalidArgument);
  const std::string lane1_token = tickets[1].token;
  tickets[1].token = std::string(32, 'x');  // forged
  auto s = (*client)->Connect(tickets, absl::Seconds(10));
  EXPECT_TRUE(absl::IsUnauthenticated(s.status())) << s.status();
  EXPECT_NE(s.status().message().find("lane 1"), absl::string_view::npos) << s.status();
  // The lanes that were accepted are closed again and their tokens are spent.
  EXPECT_TRUE(Eventually([&] { return (*server)->authenticated_sessions() == 0; }))
      << (*server)->authenticated_sessions() << " endpoints still authenticated";
  tickets[1].token = lane1_token;
  s = (*client)->Connect(tickets, absl::Seconds(10));
  EXPECT_TRUE(absl::IsUnauthenticated(s.status())) << "tokens are single-use: " << s.status();
  // Fresh tokens on every lane work, and the client is none the worse.
  auto session = ConnectAllLanes(**server, **client);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_TRUE(Eventually([&] { return (*server)->authenticated_sessions() == 3; }));
  std::vector<uint8_t> out(b.payload.size());
  for (int i = 0; i < 3; ++i) {
    auto n = (*client)->Fetch(*session, b.key, absl::MakeSpan(out), absl::Seconds(10));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(out, b.payload);
  }
}

TEST(UcxLanesTest, AStoppedServerFailsEveryLaneWithUnavailable) {
  std::mt19937_64 rng(std::random_device{}());
  const ModelFingerprint m = RandomModel(rng());
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 4; ++i) blocks.push_back(MakeBlock(m, rng(), 2048, 4, 8, 64));  // 8 MiB
  absl::StatusOr<LanesSetup> setup = ServeOverLanes(blocks, 4);
  ASSERT_TRUE(setup.ok()) << setup.status();
  UcxClient* client = setup->client.get();
  const int session = setup->session;

  constexpr int kThreads = 6;
  std::vector<absl::Status> last(kThreads);
  std::vector<int> ok(kThreads, 0);
  std::vector<absl::Time> ended(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> out(blocks[0].payload.size());
      // Bounded: at most 100,000 fetches or 60 s (the server stops long before).
      const absl::Time end = absl::Now() + absl::Seconds(60);
      for (int i = 0; i < 100000 && absl::Now() < end; ++i) {
        const TestBlock& b = blocks[(t + i) % blocks.size()];
        auto n = client->Fetch(session, b.key, absl::MakeSpan(out), absl::Seconds(30));
        if (!n.ok()) {
          last[t] = n.status();
          break;
        }
        if (out != b.payload) {
          last[t] = absl::DataLossError("payload differs");
          break;
        }
        ++ok[t];
      }
      ended[t] = absl::Now();
    });
  }
  // Stop the server once every lane has carried fetches (EXPECT: the threads must be joined).
  EXPECT_TRUE(Eventually([&] {
    for (uint64_t n : client->FetchesPerLane()) {
      if (n < 2) return false;
    }
    return true;
  }));
  const absl::Time stopped = absl::Now();
  setup->server.reset();
  for (auto& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_TRUE(absl::IsUnavailable(last[t])) << "thread " << t << ": " << last[t];
    EXPECT_LT(ended[t] - stopped, absl::Seconds(5)) << "thread " << t << " hung";
  }
  // Later fetches answer at once, with UNAVAILABLE.
  std::vector<uint8_t> out(blocks[0].payload.size());
  for (int i = 0; i < 4; ++i) {
    const absl::Time t0 = absl::Now();
    auto n = client->Fetch(session, blocks[0].key, absl::MakeSpan(out), absl::Seconds(30));
    EXPECT_TRUE(absl::IsUnavailable(n.status())) << n.status();
    EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
  }
}

TEST(UcxLanesTest, ADeadlineOnOneLaneLeavesTheBufferAloneAndOtherLanesServe) {
  const ModelFingerprint m = RandomModel(std::random_device{}());
  TestBlock slow = MakeBlock(m, 1, 1024, 4, 8, 64), fast = MakeBlock(m, 2, 256, 4, 8, 64);
  absl::StatusOr<LanesSetup> setup = ServeOverLanes({slow, fast}, 2, &slow.key);
  ASSERT_TRUE(setup.ok()) << setup.status();
  GatedStore& store = *setup->gate;
  UcxClient& client = *setup->client;
  const int session = setup->session;

  // The slow fetch takes lane 0 (all idle: the lowest); while it waits in the store, fetches
  // go to lane 1 (fewer bytes outstanding) and are served.
  std::vector<uint8_t> slow_out(slow.payload.size(), 0xAB);
  absl::StatusOr<uint64_t> slow_n = absl::UnknownError("not run");
  std::thread slow_fetch([&] {
    slow_n = client.Fetch(session, slow.key, absl::MakeSpan(slow_out), absl::Seconds(2));
  });
  const bool entered = store.entered.WaitForNotificationWithTimeout(absl::Seconds(10));
  if (!entered) slow_fetch.join();  // it timed out before reaching the store
  ASSERT_TRUE(entered);
  std::vector<uint8_t> fast_out(fast.payload.size());
  auto fetch_fast = [&] {
    return client.Fetch(session, fast.key, absl::MakeSpan(fast_out), absl::Seconds(10));
  };
  for (int i = 0; i < 3; ++i) {
    auto f = fetch_fast();
    EXPECT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(fast_out, fast.payload);
  }
  slow_fetch.join();
  EXPECT_TRUE(absl::IsDeadlineExceeded(slow_n.status())) << slow_n.status();
  EXPECT_EQ(client.FetchesPerLane(), (std::vector<uint64_t>{1, 3}));
  // The node now reads the block and would answer on lane 0, whose endpoint was closed.
  store.open.Notify();
  ASSERT_TRUE(store.read.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // A fetch that lands on the closed lane fails at once with UNAVAILABLE.
  auto f = fetch_fast();
  EXPECT_TRUE(absl::IsUnavailable(f.status())) << f.status();
  EXPECT_EQ(client.FetchesPerLane(), (std::vector<uint64_t>{2, 3}));
  EXPECT_TRUE(std::all_of(slow_out.begin(), slow_out.end(), [](uint8_t v) { return v == 0xAB; }))
      << "bytes were written into the buffer of a fetch that had returned";
}

TEST(UcxServerTest, ReaderOptionsAreValidated) {
  UcxServerOptions o;
  o.read_threads = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.read_threads = 2;
  o.max_reads_per_session = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.max_reads_per_session = 1;
  EXPECT_TRUE(o.Validate().ok());
}

TEST(UcxLanesTest, LaneOptionsAreValidated) {
  for (uint32_t lanes : {0u, UcxClientOptions::kMaxLanes + 1}) {
    EXPECT_EQ(UcxClient::Create({.lanes = lanes}).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(UcxClientOptions{.lanes = UcxClientOptions::kMaxLanes}.Validate().ok());
}

}  // namespace
}  // namespace kvblock
