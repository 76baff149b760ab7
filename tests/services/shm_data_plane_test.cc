// The same-host shared-memory data plane (services/shm_data_plane.h): the ShmServer over a real
// memory tier, spoken to with ShmClient and raw protocol frames (leases across Delete and
// eviction, disconnects, limits, malformed frames), and a real CacheServer on loopback + a Unix
// socket in a temp dir read by the real CacheClient (zero-copy Get, memory reclaimed after
// release, absent keys, fallback to UCX when the socket is missing).
#include "services/shm_data_plane.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <functional>
#include <random>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "cache/memory_tier.h"
#include "cache/tiered_store.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "services/cache_client.h"
#include "services/cache_server.h"
#include "services/internal/shm_wire.h"
#include "tests/services/cluster_test_util.h"

namespace kvblock {
namespace {

namespace wire = internal::shm;
using testing::RandomBlock;
using testing::TempDir;
using testing::TestBlock;

// Waits (bounded: 5 s) until `done` holds.
template <typename Fn>
bool WaitFor(Fn done) {
  const absl::Time end = absl::Now() + absl::Seconds(5);
  while (!done()) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

bool Same(absl::Span<const uint8_t> a, const std::vector<uint8_t>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), b.size()) == 0;
}

// Records the regions a client maps and unmaps.
class RecordingListener final : public HostRegionListener {
 public:
  void OnMapped(absl::Span<const uint8_t> region) override {
    absl::MutexLock l(&mu_);
    mapped_.push_back(region);
  }
  void OnUnmapping(absl::Span<const uint8_t> region) override {
    absl::MutexLock l(&mu_);
    unmapped_.push_back(region);
  }
  bool Inside(absl::Span<const uint8_t> bytes) const {
    absl::MutexLock l(&mu_);
    for (absl::Span<const uint8_t> r : mapped_) {
      if (bytes.data() >= r.data() && bytes.data() + bytes.size() <= r.data() + r.size()) {
        return true;
      }
    }
    return false;
  }
  size_t mapped() const {
    absl::MutexLock l(&mu_);
    return mapped_.size();
  }
  size_t unmapped() const {
    absl::MutexLock l(&mu_);
    return unmapped_.size();
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<absl::Span<const uint8_t>> mapped_, unmapped_;
};

// ShmServer over a shared memory tier, spoken to with raw frames and with ShmClient.
class ShmServerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(ShmServerOptions o) {
    server_.reset();
    MemoryTierOptions mo;
    mo.capacity_bytes = 8 << 20;
    mo.num_shards = 2;
    mo.shared_arena = true;
    mo.eviction = EvictionPolicyKind::kLru;  // a block read once is still evicted by newer ones
    auto tier = MemoryTier::Create(mo);
    ASSERT_TRUE(tier.ok()) << tier.status();
    tier_ = *std::move(tier);
    o.socket_path = dir_.Sub("shm.sock");
    auto s = ShmServer::Start(o, tier_.get(), &tier_->arena(), nullptr);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }

  std::string Token() {
    v1::OpenDataPlaneResponse r;
    EXPECT_TRUE(server_->OpenLocalSession(&r).ok());
    EXPECT_EQ(r.shm_socket_path(), server_->socket_path());
    return r.shm_token();
  }

  TestBlock PutBlock(uint32_t layers = 4, uint32_t tokens = 16) {
    TestBlock b = RandomBlock(rng_, layers, tokens);
    EXPECT_TRUE(tier_->Put(b.key, b.payload).ok());
    return b;
  }

  // A raw connection that presented a valid token and received (and closed) the region fds.
  int RawSession() {
    absl::StatusOr<int> fd = wire::ConnectUnix(server_->socket_path());
    EXPECT_TRUE(fd.ok()) << fd.status();
    wire::HelloBody hello;
    const std::string token = Token();
    std::memcpy(hello.token, token.data(), sizeof(hello.token));
    EXPECT_TRUE(wire::SendStruct(*fd, wire::kHello, hello).ok());
    auto ack = wire::RecvFrame(*fd, absl::Now() + absl::Seconds(5), -1, false);
    EXPECT_TRUE(ack.ok()) << ack.status();
    auto body = wire::BodyAs<wire::HelloAckBody>(*ack);
    EXPECT_TRUE(body.ok() && body->code == 0);
    for (uint32_t got = 0; got < tier_->arena().num_regions();) {
      auto regions = wire::RecvFrame(*fd, absl::Now() + absl::Seconds(5), -1, true);
      EXPECT_TRUE(regions.ok()) << regions.status();
      if (!regions.ok()) break;
      got += regions->fds.size();
      for (int f : regions->fds) close(f);
    }
    return *fd;
  }

  absl::StatusOr<wire::AcquiredBody> RawAcquire(int fd, const BlockKey& key) {
    if (auto s = wire::SendStruct(fd, wire::kAcquire, wire::AcquireBody{key.hi, key.lo}); !s.ok()) {
      return s;
    }
    auto f = wire::RecvFrame(fd, absl::Now() + absl::Seconds(5), -1, false);
    if (!f.ok()) return f.status();
    return wire::BodyAs<wire::AcquiredBody>(*f);
  }

  // True when the server closed `fd` (end of stream within 5 s).
  static bool ClosedByServer(int fd) {
    auto f = wire::RecvFrame(fd, absl::Now() + absl::Seconds(5), -1, false);
    return absl::IsUnavailable(f.status());
  }

  std::mt19937_64 rng_{std::random_device{}()};
  TempDir dir_;
  std::unique_ptr<MemoryTier> tier_;
  std::unique_ptr<ShmServer> server_;
};

TEST_F(ShmServerTest, AcquireReadsTheTiersBytesInPlace) {
  RecordingListener listener;
  auto client = ShmClient::Connect(server_->socket_path(), Token(), {.region_listener = &listener});
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->num_regions(), tier_->arena().num_regions());
  EXPECT_EQ(listener.mapped(), tier_->arena().num_regions());
  std::vector<TestBlock> blocks = {PutBlock(1, 1), PutBlock(4, 16), PutBlock(8, 256),
                                   PutBlock(4, 1024)};
  std::vector<BlockBytes> held;
  for (const TestBlock& b : blocks) {
    auto got = (*client)->Acquire(b.key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(Same(got->bytes, b.payload)) << b.payload.size();
    EXPECT_TRUE(listener.Inside(got->bytes));
    EXPECT_EQ(got->tier, StoreTier::kMemory);
    held.push_back(*std::move(got));
  }
  EXPECT_EQ(server_->leases(), blocks.size());
  EXPECT_TRUE(absl::IsNotFound((*client)->Acquire(Hash128{rng_(), rng_()}).status()));
  client->reset();  // the connection lives on while blocks are held
  EXPECT_EQ(listener.unmapped(), 0u);
  EXPECT_TRUE(Same(held[2].bytes, blocks[2].payload));
  held.clear();
  EXPECT_TRUE(WaitFor([&] { return server_->connections() == 0 && server_->leases() == 0; }));
  EXPECT_EQ(listener.unmapped(), listener.mapped());
}

TEST_F(ShmServerTest, OpenDataPlaneHandsOutTheSocketWhenAsked) {
  CacheServiceCore core(CacheServiceOptions(), tier_.get(), /*data_plane=*/nullptr, nullptr,
                        server_.get());
  v1::OpenDataPlaneRequest request;
  v1::OpenDataPlaneResponse response;
  // A node with shared memory but no UCX: only a client asking for shared memory gets a session.
  EXPECT_TRUE(absl::IsFailedPrecondition(core.OpenDataPlane(request, &response)));
  request.set_want_shared_memory(true);
  ASSERT_TRUE(core.OpenDataPlane(request, &response).ok());
  EXPECT_TRUE(response.listener_address().empty());
  EXPECT_EQ(response.shm_socket_path(), server_->socket_path());
  auto client = ShmClient::Connect(response.shm_socket_path(), response.shm_token(), {});
  EXPECT_TRUE(client.ok()) << client.status();
  v1::DrainResponse drained;
  ASSERT_TRUE(core.Drain(v1::DrainRequest(), &drained).ok());
  EXPECT_TRUE(absl::IsUnavailable(core.OpenDataPlane(request, &response)));
}

TEST_F(ShmServerTest, LeasedBlockSurvivesDeleteAndEviction) {
  auto client = ShmClient::Connect(server_->socket_path(), Token(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  TestBlock deleted = PutBlock(8, 256), evicted = PutBlock(8, 256);  // 1 MiB each
  auto a = (*client)->Acquire(deleted.key);
  auto b = (*client)->Acquire(evicted.key);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(tier_->Delete(deleted.key).ok());
  // Fill the 8 MiB tier several times over: `evicted` goes, its allocation must not be reused.
  for (int i = 0; i < 24; ++i) PutBlock(8, 256);
  LookupResult r;
  tier_->Lookup({&evicted.key, 1}, {&r, 1});
  EXPECT_FALSE(r.present);
  EXPECT_TRUE(Same(a->bytes, deleted.payload));
  EXPECT_TRUE(Same(b->bytes, evicted.payload));
  const uint64_t before = tier_->arena().allocated_bytes();
  const uint64_t size = tier_->arena().RoundUp(deleted.payload.size());
  *a = BlockBytes();
  ASSERT_TRUE(WaitFor([&] { return server_->leases() == 1; }));
  EXPECT_EQ(tier_->arena().allocated_bytes(), before - size);  // reclaimed after release
  *b = BlockBytes();
  ASSERT_TRUE(WaitFor([&] { return server_->leases() == 0; }));
  EXPECT_EQ(tier_->arena().allocated_bytes(), before - 2 * size);
}

TEST_F(ShmServerTest, TokensAreCheckedAndUsedOnce) {
  std::string wrong(SessionTokens::kTokenBytes, '\0');
  for (char& c : wrong) c = static_cast<char>(rng_());
  auto bad = ShmClient::Connect(server_->socket_path(), wrong, {});
  EXPECT_TRUE(absl::IsUnauthenticated(bad.status())) << bad.status();
  const std::string token = Token();
  auto first = ShmClient::Connect(server_->socket_path(), token, {});
  EXPECT_TRUE(first.ok()) << first.status();
  auto again = ShmClient::Connect(server_->socket_path(), token, {});
  EXPECT_TRUE(absl::IsUnauthenticated(again.status())) << again.status();
  EXPECT_TRUE(WaitFor([&] { return server_->connections() == 1; }));
}

TEST_F(ShmServerTest, MissingSocketIsUnavailable) {
  auto c = ShmClient::Connect(dir_.Sub("absent.sock"), Token(), {});
  EXPECT_TRUE(absl::IsUnavailable(c.status())) << c.status();
}

TEST_F(ShmServerTest, ClientDisconnectDropsLeases) {
  std::vector<TestBlock> blocks = {PutBlock(), PutBlock(), PutBlock()};
  const int fd = RawSession();
  for (const TestBlock& b : blocks) {
    auto a = RawAcquire(fd, b.key);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->code, 0);
    EXPECT_EQ(a->length, b.payload.size());
  }
  EXPECT_EQ(server_->leases(), 3u);
  for (const TestBlock& b : blocks) ASSERT_TRUE(tier_->Delete(b.key).ok());
  EXPECT_GT(tier_->arena().allocated_bytes(), 0u);  // pinned by the leases
  close(fd);  // no RELEASE: the closed connection drops them
  EXPECT_TRUE(WaitFor([&] { return server_->leases() == 0 && server_->connections() == 0; }));
  EXPECT_EQ(tier_->arena().allocated_bytes(), 0u);
}

TEST_F(ShmServerTest, LeaseLimitPerConnection) {
  ShmServerOptions o;
  o.max_leases_per_connection = 4;
  Start(o);
  auto client = ShmClient::Connect(server_->socket_path(), Token(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  const TestBlock b = PutBlock();
  std::vector<BlockBytes> held;
  for (int i = 0; i < 4; ++i) {
    auto got = (*client)->Acquire(b.key);
    ASSERT_TRUE(got.ok()) << got.status();
    held.push_back(*std::move(got));
  }
  auto over = (*client)->Acquire(b.key);
  EXPECT_TRUE(absl::IsResourceExhausted(over.status())) << over.status();
  EXPECT_TRUE((*client)->healthy());
  held.pop_back();
  ASSERT_TRUE(WaitFor([&] { return server_->leases() == 3; }));
  auto again = (*client)->Acquire(b.key);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(Same(again->bytes, b.payload));
}

TEST_F(ShmServerTest, ConnectionLimit) {
  ShmServerOptions o;
  o.max_connections = 2;
  Start(o);
  auto c1 = ShmClient::Connect(server_->socket_path(), Token(), {});
  auto c2 = ShmClient::Connect(server_->socket_path(), Token(), {});
  ASSERT_TRUE(c1.ok() && c2.ok());
  ASSERT_TRUE(WaitFor([&] { return server_->connections() == 2; }));
  auto c3 = ShmClient::Connect(server_->socket_path(), Token(), {});
  EXPECT_TRUE(absl::IsUnavailable(c3.status())) << c3.status();
}

TEST_F(ShmServerTest, BlockOutsideTheArenaIsNotLocal) {
  // A store whose bytes are not in the served arena (as a write-back buffer or a disk read the
  // memory tier could not take): FAILED_PRECONDITION, so the client reads it another way.
  auto other = MemoryTier::Create({.capacity_bytes = 4 << 20});
  ASSERT_TRUE(other.ok());
  const TestBlock b = RandomBlock(rng_);
  ASSERT_TRUE((*other)->Put(b.key, b.payload).ok());
  server_.reset();
  auto s = ShmServer::Start({.socket_path = dir_.Sub("other.sock")}, other->get(), &tier_->arena(),
                            nullptr);
  ASSERT_TRUE(s.ok()) << s.status();
  server_ = *std::move(s);
  auto client = ShmClient::Connect(server_->socket_path(), Token(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  auto got = (*client)->Acquire(b.key);
  EXPECT_TRUE(absl::IsFailedPrecondition(got.status())) << got.status();
  EXPECT_TRUE((*client)->healthy());
}

TEST_F(ShmServerTest, MalformedFramesCloseTheConnection) {
  const TestBlock b = PutBlock();
  const uint64_t unknown_lease = 777;
  struct Case {
    const char* name;
    bool hello;  // present a token first
    uint32_t type;
    std::vector<uint8_t> body;
  };
  const std::vector<Case> cases = {
      {"acquire before hello", false, wire::kAcquire, std::vector<uint8_t>(16, 1)},
      {"unknown type", true, 99, {}},
      {"short acquire", true, wire::kAcquire, std::vector<uint8_t>(15, 1)},
      {"second hello", true, wire::kHello, std::vector<uint8_t>(SessionTokens::kTokenBytes, 2)},
      {"release of an unknown lease", true, wire::kRelease,
       std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(&unknown_lease),
                            reinterpret_cast<const uint8_t*>(&unknown_lease) + 8)},
      {"ragged release", true, wire::kRelease, std::vector<uint8_t>(12, 0)},
      {"empty release", true, wire::kRelease, {}},
      {"server-bound frame type", true, wire::kAcquired, std::vector<uint8_t>(40, 0)},
  };
  for (const Case& c : cases) {
    int fd;
    if (c.hello) {
      fd = RawSession();
      auto a = RawAcquire(fd, b.key);  // a lease the close must drop
      ASSERT_TRUE(a.ok() && a->code == 0) << c.name;
    } else {
      auto raw = wire::ConnectUnix(server_->socket_path());
      ASSERT_TRUE(raw.ok());
      fd = *raw;
    }
    ASSERT_TRUE(wire::SendFrame(fd, c.type, c.body).ok()) << c.name;
    EXPECT_TRUE(ClosedByServer(fd)) << c.name;
    close(fd);
    EXPECT_TRUE(WaitFor([&] { return server_->leases() == 0 && server_->connections() == 0; }))
        << c.name;
  }
  // Frames the helpers would not send: longer than the limit, a header that lies about its
  // length, and descriptors from the client.
  for (int variant = 0; variant < 3; ++variant) {
    const int fd = RawSession();
    if (variant == 0) {
      std::vector<uint8_t> big(sizeof(wire::FrameHeader) + wire::kMaxBodyBytes + 64, 0);
      const wire::FrameHeader h{wire::kRelease, static_cast<uint32_t>(big.size() - 8)};
      std::memcpy(big.data(), &h, sizeof(h));
      ASSERT_EQ(send(fd, big.data(), big.size(), MSG_NOSIGNAL), static_cast<ssize_t>(big.size()));
    } else if (variant == 1) {
      const wire::FrameHeader h{wire::kAcquire, 16};  // but no body follows
      ASSERT_EQ(send(fd, &h, sizeof(h), MSG_NOSIGNAL), static_cast<ssize_t>(sizeof(h)));
    } else {
      const int fds[1] = {fd};
      ASSERT_TRUE(wire::SendFrame(fd, wire::kAcquire, std::vector<uint8_t>(16, 0), fds).ok());
    }
    EXPECT_TRUE(ClosedByServer(fd)) << variant;
    close(fd);
    EXPECT_TRUE(WaitFor([&] { return server_->connections() == 0; })) << variant;
  }
  // The server still serves well-formed clients.
  auto client = ShmClient::Connect(server_->socket_path(), Token(), {});
  ASSERT_TRUE(client.ok()) << client.status();
  auto got = (*client)->Acquire(b.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(Same(got->bytes, b.payload));
}

TEST_F(ShmServerTest, SilentConnectionIsClosedAfterTheIoTimeout) {
  ShmServerOptions o;
  o.io_timeout = absl::Milliseconds(200);
  Start(o);
  auto fd = wire::ConnectUnix(server_->socket_path());
  ASSERT_TRUE(fd.ok());
  EXPECT_TRUE(ClosedByServer(*fd));
  close(*fd);
}

TEST_F(ShmServerTest, StaleSocketIsReplacedLiveOneRefused) {
  auto twin = ShmServer::Start({.socket_path = server_->socket_path()}, tier_.get(),
                               &tier_->arena(), nullptr);
  EXPECT_TRUE(absl::IsAlreadyExists(twin.status())) << twin.status();
  auto plain = MemoryTier::Create({.capacity_bytes = 1 << 20});
  ASSERT_TRUE(plain.ok());
  auto unshared = ShmServer::Start({.socket_path = dir_.Sub("x.sock")}, plain->get(),
                                   &(*plain)->arena(), nullptr);
  EXPECT_TRUE(absl::IsFailedPrecondition(unshared.status())) << unshared.status();
  // A socket file nobody listens on (a killed server's) is taken over.
  const std::string path = server_->socket_path();
  const int stale = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  server_.reset();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  ASSERT_EQ(bind(stale, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  close(stale);
  auto again = ShmServer::Start({.socket_path = path}, tier_.get(), &tier_->arena(), nullptr);
  EXPECT_TRUE(again.ok()) << again.status();
}

// A real cache server (gRPC + UCX + shm socket) and the real cluster client.
class ShmClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CacheServerOptions o;
    o.listen = "127.0.0.1:0";
    o.ucx_listen = "127.0.0.1:0";
    o.shm_socket = dir_.Sub("node.sock");
    o.metrics_listen = "127.0.0.1:0";
    o.data_dir = dir_.Sub("data");
    o.memory_bytes = 16 << 20;
    o.service.max_block_bytes = 4 << 20;
    o.sync = "none";
    auto s = CacheServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    ASSERT_EQ(server_->shm_socket(), dir_.Sub("node.sock"));
  }

  // A client of the node; `adjust` changes its options from the defaults used here.
  std::unique_ptr<CacheClient> Client(HostRegionListener* listener = nullptr,
                                      const std::function<void(CacheClientOptions&)>& adjust = {}) {
    CacheClientOptions o;
    o.members = {server_->grpc_address()};
    o.replication = 1;
    o.max_attempts = 1;
    o.data_plane_lanes = 2;
    o.region_listener = listener;
    if (adjust) adjust(o);
    auto c = CacheClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  MemoryTier& Memory() { return static_cast<TieredStore*>(server_->store())->memory(); }

  // The node's /metrics page; empty (after a test failure) if it cannot be read.
  std::string Metrics() {
    const std::string addr = server_->metrics_address();
    httplib::Client http(addr.substr(0, addr.rfind(':')), std::stoi(addr.substr(addr.rfind(':') + 1)));
    auto res = http.Get("/metrics");
    EXPECT_TRUE(res && res->status == 200);
    return res && res->status == 200 ? res->body : std::string();
  }

  std::mt19937_64 rng_{std::random_device{}()};
  TempDir dir_;
  std::unique_ptr<CacheServer> server_;
};

TEST_F(ShmClusterTest, GetIsZeroCopyFromTheNodesMemory) {
  RecordingListener listener;
  std::unique_ptr<CacheClient> client = Client(&listener);
  ASSERT_TRUE(client->HasSharedMemory(0));
  EXPECT_TRUE(client->HasDataPlane(0));
  EXPECT_EQ(listener.mapped(), 1u);
  std::vector<TestBlock> blocks = {RandomBlock(rng_, 1, 1), RandomBlock(rng_, 4, 16),
                                   RandomBlock(rng_, 8, 256), RandomBlock(rng_, 4, 1024)};
  for (const TestBlock& b : blocks) ASSERT_TRUE(client->Put(b.key, b.payload).ok());
  for (const TestBlock& b : blocks) {
    auto got = client->Get(b.key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(Same(got->bytes, b.payload));
    EXPECT_TRUE(listener.Inside(got->bytes)) << "not read in place";
    EXPECT_EQ(got->tier, StoreTier::kRemote);
    EXPECT_TRUE(got->verified);  // checked by the node's memory tier, never left this host
    std::vector<uint8_t> buffer(b.payload.size() + 100);
    auto n = client->FetchInto(b.key, absl::MakeSpan(buffer));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_TRUE(Same(absl::MakeConstSpan(buffer).first(*n), b.payload));
    std::vector<uint8_t> small(b.payload.size() - 1);
    EXPECT_TRUE(absl::IsOutOfRange(client->FetchInto(b.key, absl::MakeSpan(small)).status()));
  }
  auto absent = client->Get(Hash128{rng_(), rng_()});
  EXPECT_TRUE(absl::IsNotFound(absent.status())) << absent.status();
  client.reset();
  EXPECT_EQ(listener.unmapped(), 1u);
}

TEST_F(ShmClusterTest, HeldBlockSurvivesDeleteAndIsReclaimedAfterRelease) {
  std::unique_ptr<CacheClient> client = Client();
  const TestBlock b = RandomBlock(rng_, 8, 512);  // 2 MiB
  ASSERT_TRUE(client->Put(b.key, b.payload).ok());
  auto got = client->Get(b.key);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(client->Delete(b.key).ok());
  EXPECT_TRUE(absl::IsNotFound(client->Get(b.key).status()));
  // Churn the 16 MiB memory tier with other blocks.
  for (int i = 0; i < 16; ++i) {
    const TestBlock other = RandomBlock(rng_, 8, 512);
    ASSERT_TRUE(client->Put(other.key, other.payload).ok());
  }
  EXPECT_TRUE(Same(got->bytes, b.payload));
  const uint64_t before = Memory().arena().allocated_bytes();
  *got = BlockBytes();
  EXPECT_TRUE(WaitFor([&] {
    return Memory().arena().allocated_bytes() == before - Memory().arena().RoundUp(b.payload.size());
  }));
}

TEST_F(ShmClusterTest, MetricsShowConnectionsLeasesAndBytes) {
  std::unique_ptr<CacheClient> client = Client();
  const TestBlock b = RandomBlock(rng_, 4, 64);
  ASSERT_TRUE(client->Put(b.key, b.payload).ok());
  auto got = client->Get(b.key);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(absl::IsNotFound(client->Get(Hash128{rng_(), rng_()}).status()));
  const std::string metrics = Metrics();
  for (const std::string& want :
       {std::string("kvblock_cache_server_shm_connections 1"),
        std::string("kvblock_cache_server_shm_leases 1"),
        "kvblock_bytes_total{plane=\"shm\",direction=\"out\"} " + std::to_string(b.payload.size()),
        std::string("kvblock_cache_hits_total{tier=\"memory\"} 1"),
        std::string("kvblock_cache_misses_total 1")}) {
    EXPECT_NE(metrics.find(want), std::string::npos) << "missing: " << want;
  }
}

// Without shared memory, Get reads over UCX (a Lookup sizes its buffer), not the gRPC stream:
// the node counts the payload's bytes on the UCX plane and none on gRPC.
TEST_F(ShmClusterTest, GetWithoutSharedMemoryReadsOverUcx) {
  std::unique_ptr<CacheClient> client = Client(nullptr, [](CacheClientOptions& o) { o.use_shared_memory = false; });
  ASSERT_TRUE(client->HasDataPlane(0));
  const TestBlock b = RandomBlock(rng_, 8, 256);
  ASSERT_TRUE(client->Put(b.key, b.payload).ok());
  auto got = client->Get(b.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(Same(got->bytes, b.payload));
  EXPECT_FALSE(got->verified);  // crossed a connection: consumers re-hash it
  EXPECT_TRUE(absl::IsNotFound(client->Get(Hash128{rng_(), rng_()}).status()));
  const std::string metrics = Metrics();
  EXPECT_NE(metrics.find("kvblock_bytes_total{plane=\"ucx\",direction=\"out\"} " +
                           std::to_string(b.payload.size())),
            std::string::npos)
      << metrics;
  EXPECT_EQ(metrics.find("kvblock_bytes_total{plane=\"grpc\",direction=\"out\"}"), std::string::npos)
      << metrics;
}

// A relay given to the client at creation hands the regions mapped so far to each target
// attached later (a worker's backend exists only after its client), takes them back from the
// previous one, and forwards the unmapping when the client goes.
TEST_F(ShmClusterTest, RelayHandsMappedRegionsToTargetsAttachedLater) {
  HostRegionRelay relay;
  RecordingListener first, second;
  std::unique_ptr<CacheClient> client = Client(&relay);
  ASSERT_TRUE(client->HasSharedMemory(0));
  const TestBlock b = RandomBlock(rng_, 4, 64);
  ASSERT_TRUE(client->Put(b.key, b.payload).ok());
  {
    auto got = client->Get(b.key);
    ASSERT_TRUE(got.ok()) << got.status();
    relay.Attach(&first);
    EXPECT_EQ(first.mapped(), 1u);
    EXPECT_TRUE(first.Inside(got->bytes));
  }
  relay.Attach(&second);
  EXPECT_EQ(first.unmapped(), 1u);
  EXPECT_EQ(second.mapped(), 1u);
  EXPECT_EQ(second.unmapped(), 0u);
  client.reset();
  EXPECT_EQ(second.unmapped(), 1u);
  EXPECT_EQ(first.mapped(), 1u);  // detached: told nothing more
  relay.Attach(nullptr);
}

// verify_shared_memory: the same zero-copy read, not marked verified (consumers re-hash it).
TEST_F(ShmClusterTest, VerifySharedMemoryClearsTheVerifiedMark) {
  RecordingListener listener;
  std::unique_ptr<CacheClient> client =
      Client(&listener, [](CacheClientOptions& o) { o.verify_shared_memory = true; });
  ASSERT_TRUE(client->HasSharedMemory(0));
  const TestBlock b = RandomBlock(rng_, 4, 64);
  ASSERT_TRUE(client->Put(b.key, b.payload).ok());
  auto got = client->Get(b.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(listener.Inside(got->bytes));
  EXPECT_TRUE(Same(got->bytes, b.payload));
  EXPECT_FALSE(got->verified);
}

TEST_F(ShmClusterTest, MissingSocketFallsBackToUcx) {
  ASSERT_EQ(unlink(server_->shm_socket().c_str()), 0);
  std::unique_ptr<CacheClient> client = Client();
  EXPECT_FALSE(client->HasSharedMemory(0));
  ASSERT_TRUE(client->HasDataPlane(0));
  const TestBlock b = RandomBlock(rng_, 8, 256);
  ASSERT_TRUE(client->Put(b.key, b.payload).ok());
  std::vector<uint8_t> buffer(b.payload.size());
  auto n = client->FetchInto(b.key, absl::MakeSpan(buffer));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_TRUE(Same(buffer, b.payload));
  auto got = client->Get(b.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(Same(got->bytes, b.payload));
  EXPECT_FALSE(got->verified);  // crossed a connection: consumers re-hash it
}

TEST_F(ShmClusterTest, ClientWithoutSharedMemoryUsesUcx) {
  CacheClientOptions o;
  o.members = {server_->grpc_address()};
  o.replication = 1;
  o.data_plane_lanes = 1;
  o.use_shared_memory = false;
  auto client = CacheClient::Create(o);
  ASSERT_TRUE(client.ok());
  EXPECT_FALSE((*client)->HasSharedMemory(0));
  EXPECT_TRUE((*client)->HasDataPlane(0));
}

}  // namespace
}  // namespace kvblock
