// A real CacheServer in this process (TieredStore on a temp dir, gRPC on loopback, UCX data
// plane) driven by the real CacheClient and by raw gRPC calls: auth on every method, mTLS with
// certificates made by openssl at test time, limits over the wire, cut Put streams, health and
// reflection, UCX session authentication, metrics, a fuzz of malformed wire messages, and Get
// over UCX landing in buffers from a HostBufferSource (reused slabs; a vector when it refuses).
#include "services/cache_server.h"

#include <algorithm>
#include <random>

#include "absl/synchronization/mutex.h"
#include "cache/host_buffer_pool.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "services/cache_client.h"
#include "services/proto_convert.h"
#include "services/ucx_data_plane.h"
#include "tests/services/cluster_test_util.h"
#include "tests/tls_certs.h"
#include "tests/services/grpc_raw.h"

namespace kvblock {
namespace {

using testing::RandomBlock;
using testing::RawCall;
using testing::TempDir;
using testing::TestBlock;

constexpr char kToken[] = "tok-7f3a9c1e55d0";
const std::vector<std::string> kMethods = {"Lookup", "Put",           "Get",  "Delete",
                                           "Stats",  "OpenDataPlane", "Drain"};

std::string Method(const std::string& m) { return "/kvblock.v1.CacheService/" + m; }

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteFile(dir_.Sub("token"), std::string(kToken) + "\n");
    CacheServerOptions o;
    o.listen = "127.0.0.1:0";
    o.ucx_listen = "127.0.0.1:0";
    o.metrics_listen = "127.0.0.1:0";
    o.data_dir = dir_.Sub("data");
    o.memory_bytes = 64 << 20;
    o.auth_token_file = dir_.Sub("token");
    o.sync = "none";
    o.service.max_keys_per_call = 64;
    o.service.max_block_bytes = 4 << 20;
    auto s = CacheServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    channel_ = grpc::CreateChannel(server_->grpc_address(), grpc::InsecureChannelCredentials());
  }

  std::unique_ptr<CacheClient> Client(bool ucx, std::string token = kToken,
                                      HostBufferSource* buffers = nullptr) {
    CacheClientOptions o;
    o.members = {server_->grpc_address()};
    o.replication = 1;
    o.auth_token = std::move(token);
    o.use_data_plane = ucx;
    o.max_attempts = 1;
    o.buffers = buffers;
    auto c = CacheClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  std::mt19937_64 rng_{std::random_device{}()};
  TempDir dir_;
  std::unique_ptr<CacheServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServerTest, EveryMethodRefusesMissingOrWrongToken) {
  for (const auto& md : std::vector<std::vector<std::pair<std::string, std::string>>>{
           {}, {{"authorization", "Bearer wrong"}}, {{"authorization", kToken}}}) {
    for (const std::string& m : kMethods) {
      v1::GetRequest g;
      ToProto(Hash128{1, 2}, g.mutable_key());
      auto r = RawCall(channel_, Method(m), {m == "Get" ? g.SerializeAsString() : ""}, md);
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << m << ": " << r.status.error_message();
    }
  }
  // The client library with a wrong token gets the same.
  auto bad = Client(false, "nope");
  TestBlock b = RandomBlock(rng_);
  EXPECT_TRUE(absl::IsUnauthenticated(bad->Put(b.key, b.payload)));
  EXPECT_TRUE(absl::IsUnauthenticated(bad->Get(b.key).status()));
  // And with the right one it works.
  auto good = Client(false);
  EXPECT_TRUE(good->Put(b.key, b.payload).ok());
}

TEST_F(ServerTest, RoundTripOverGrpcAndUcxIsByteExact) {
  auto grpc_client = Client(false);
  auto ucx_client = Client(true);
  ASSERT_TRUE(ucx_client->HasDataPlane(0)) << "UCX session not opened";
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 6; ++i) blocks.push_back(RandomBlock(rng_, 4 + 4 * i, 16 + 40 * i));
  for (const auto& b : blocks) ASSERT_TRUE(grpc_client->Put(b.key, b.payload).ok());
  for (const auto& b : blocks) {
    auto got = grpc_client->Get(b.key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(std::vector<uint8_t>(got->bytes.begin(), got->bytes.end()), b.payload);
    for (CacheClient* c : {grpc_client.get(), ucx_client.get()}) {
      std::vector<uint8_t> buf(b.payload.size() + 100, 0xee);
      auto n = c->FetchInto(b.key, absl::MakeSpan(buf));
      ASSERT_TRUE(n.ok()) << n.status();
      ASSERT_EQ(*n, b.payload.size());
      EXPECT_TRUE(std::equal(b.payload.begin(), b.payload.end(), buf.begin()));
      EXPECT_EQ(buf[b.payload.size()], 0xee);  // nothing written past the payload
      std::vector<uint8_t> small(b.payload.size() - 1);
      EXPECT_TRUE(absl::IsOutOfRange(c->FetchInto(b.key, absl::MakeSpan(small)).status()));
    }
  }
  // UCX still healthy after the refused fetch; misses are NOT_FOUND on both paths.
  EXPECT_TRUE(ucx_client->HasDataPlane(0));
  std::vector<uint8_t> buf(1 << 16);
  EXPECT_TRUE(absl::IsNotFound(ucx_client->FetchInto(Hash128{rng_(), 1}, absl::MakeSpan(buf)).status()));
  EXPECT_TRUE(absl::IsNotFound(grpc_client->Get(Hash128{rng_(), 2}).status()));
  // Concurrent UCX fetches from several threads.
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const TestBlock& b = blocks[(t + i) % blocks.size()];
        std::vector<uint8_t> out(b.payload.size());
        auto n = ucx_client->FetchInto(b.key, absl::MakeSpan(out));
        if (!n.ok() || out != b.payload) ++bad;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  // Lookup batch, presence and sizes.
  std::vector<BlockKey> keys;
  for (const auto& b : blocks) keys.push_back(b.key);
  keys.push_back(Hash128{rng_(), 3});
  std::vector<LookupResult> lr(keys.size());
  grpc_client->Lookup(keys, absl::MakeSpan(lr));
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_TRUE(lr[i].present);
    EXPECT_EQ(lr[i].payload_bytes, blocks[i].payload.size());
    EXPECT_EQ(lr[i].tier, StoreTier::kRemote);
  }
  EXPECT_FALSE(lr.back().present);
  EXPECT_TRUE(grpc_client->Delete(blocks[0].key).ok());
  EXPECT_TRUE(absl::IsNotFound(grpc_client->Get(blocks[0].key).status()));
}

// A HostBufferPool that remembers the buffers it handed out, or refuses every Take.
class RecordingSource final : public HostBufferSource {
 public:
  explicit RecordingSource(bool refuse) : refuse_(refuse) {
    auto pool = HostBufferPool::Create({});
    EXPECT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
  }
  absl::StatusOr<HostBuffer> Take(uint64_t bytes) override {
    absl::MutexLock l(&mu_);
    ++takes_;
    if (refuse_) return absl::ResourceExhaustedError("refused by the test");
    absl::StatusOr<HostBuffer> b = pool_->Take(bytes);
    if (b.ok()) handed_.push_back(b->bytes);
    return b;
  }
  // Whether `bytes` lie inside one buffer handed out.
  bool HandedOut(absl::Span<const uint8_t> bytes) const {
    absl::MutexLock l(&mu_);
    return std::any_of(handed_.begin(), handed_.end(), [&](absl::Span<uint8_t> h) {
      return bytes.data() >= h.data() && bytes.data() + bytes.size() <= h.data() + h.size();
    });
  }
  int takes() const {
    absl::MutexLock l(&mu_);
    return takes_;
  }
  HostBufferPool& pool() { return *pool_; }

 private:
  const bool refuse_;
  std::unique_ptr<HostBufferPool> pool_;
  mutable absl::Mutex mu_;
  std::vector<absl::Span<uint8_t>> handed_ ABSL_GUARDED_BY(mu_);
  int takes_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST_F(ServerTest, GetOverUcxLandsInBuffersFromTheSource) {
  RecordingSource source(/*refuse=*/false), refusing(/*refuse=*/true);
  auto ucx_client = Client(true, kToken, &source);
  auto grpc_client = Client(false, kToken, &source);
  auto fallback_client = Client(true, kToken, &refusing);
  ASSERT_TRUE(ucx_client->HasDataPlane(0) && fallback_client->HasDataPlane(0));
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 5; ++i) blocks.push_back(RandomBlock(rng_, 2 + 3 * i, 32 + 96 * i));
  for (const auto& b : blocks) ASSERT_TRUE(grpc_client->Put(b.key, b.payload).ok());
  for (int round = 0; round < 2; ++round) {
    for (const auto& b : blocks) {
      auto got = ucx_client->Get(b.key);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(source.HandedOut(got->bytes));
      EXPECT_EQ(std::vector<uint8_t>(got->bytes.begin(), got->bytes.end()), b.payload);
      EXPECT_EQ(got->tier, StoreTier::kRemote);
      EXPECT_FALSE(got->verified);
    }
  }
  EXPECT_EQ(source.takes(), 2 * static_cast<int>(blocks.size()));
  EXPECT_EQ(ucx_client->buffer_fallbacks(), 0u);
  // Each Get's buffer went back when its BlockBytes did: the second round reused the slabs.
  const HostBufferPoolStats st = source.pool().Stats();
  EXPECT_GE(st.reuses, blocks.size());
  EXPECT_EQ(st.bytes_taken, 0u);
  // A held block keeps its buffer out of the pool, and its bytes stay intact.
  auto held = ucx_client->Get(blocks[4].key);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_GT(source.pool().Stats().bytes_taken, 0u);
  auto other = ucx_client->Get(blocks[3].key);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE(other->bytes.data(), held->bytes.data());
  EXPECT_EQ(std::vector<uint8_t>(held->bytes.begin(), held->bytes.end()), blocks[4].payload);
  // A miss is NOT_FOUND from the sizing Lookup, before any buffer is taken.
  const int takes = source.takes();
  EXPECT_TRUE(absl::IsNotFound(ucx_client->Get(Hash128{rng_(), 9}).status()));
  EXPECT_EQ(source.takes(), takes);
  // gRPC reads do not use the source.
  auto over_grpc = grpc_client->Get(blocks[1].key);
  ASSERT_TRUE(over_grpc.ok()) << over_grpc.status();
  EXPECT_FALSE(source.HandedOut(over_grpc->bytes));
  EXPECT_EQ(std::vector<uint8_t>(over_grpc->bytes.begin(), over_grpc->bytes.end()), blocks[1].payload);
  EXPECT_EQ(source.takes(), takes);
  // A source that refuses: every Get still succeeds, into a vector, and is counted.
  for (const auto& b : blocks) {
    auto got = fallback_client->Get(b.key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(std::vector<uint8_t>(got->bytes.begin(), got->bytes.end()), b.payload);
  }
  EXPECT_EQ(refusing.takes(), static_cast<int>(blocks.size()));
  EXPECT_EQ(fallback_client->buffer_fallbacks(), blocks.size());
}

TEST_F(ServerTest, UcxSessionNeedsAFreshTokenFromOpenDataPlane) {
  auto ucx = UcxClient::Create({.lanes = 1});
  ASSERT_TRUE(ucx.ok()) << ucx.status();
  std::string forged(32, 'x');
  auto s = (*ucx)->Connect({{server_->ucx_address(), forged}}, absl::Seconds(5));
  EXPECT_TRUE(absl::IsUnauthenticated(s.status())) << s.status();
  // A real token (from an authenticated OpenDataPlane call) works once.
  v1::OpenDataPlaneRequest req;
  req.set_client_worker_address((*ucx)->WorkerAddress(0));
  auto r = RawCall(channel_, Method("OpenDataPlane"), {req.SerializeAsString()},
                   {{"authorization", std::string("Bearer ") + kToken}});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  v1::OpenDataPlaneResponse resp;
  ASSERT_TRUE(resp.ParseFromString(r.responses.at(0)));
  EXPECT_EQ(resp.listener_address(), server_->ucx_address());
  const SessionTicket ticket{resp.listener_address(), resp.session_token()};
  auto session = (*ucx)->Connect({ticket}, absl::Seconds(5));
  ASSERT_TRUE(session.ok()) << session.status();
  TestBlock b = RandomBlock(rng_, 3, 50);
  ASSERT_TRUE(server_->store()->Put(b.key, b.payload).ok());
  std::vector<uint8_t> out(b.payload.size());
  auto n = (*ucx)->Fetch(*session, b.key, absl::MakeSpan(out), absl::Seconds(5));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(out, b.payload);
  auto again = (*ucx)->Connect({ticket}, absl::Seconds(5));
  EXPECT_TRUE(absl::IsUnauthenticated(again.status())) << "a token must be single-use";
}

TEST_F(ServerTest, LimitsComeBackWithCodesAndMessages) {
  auto c = Client(false);
  std::vector<BlockKey> many(65);
  for (auto& k : many) k = Hash128{rng_(), rng_()};
  v1::LookupRequest lr;
  for (const auto& k : many) ToProto(k, lr.add_keys());
  auto md = std::vector<std::pair<std::string, std::string>>{
      {"authorization", std::string("Bearer ") + kToken}};
  auto r = RawCall(channel_, Method("Lookup"), {lr.SerializeAsString()}, md);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("max_keys_per_call=64"), std::string::npos);
  // The client splits big batches itself when told the limit.
  TestBlock big = RandomBlock(rng_, 64, 160);  // 5 MiB > 4 MiB
  absl::Status s = c->Put(big.key, big.payload);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("max_block_bytes"), absl::string_view::npos) << s;
  // Malformed: a chunk first.
  v1::PutRequest chunk;
  chunk.set_chunk("abc");
  r = RawCall(channel_, Method("Put"), {chunk.SerializeAsString()}, md);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("header"), std::string::npos);
}

TEST_F(ServerTest, CutPutStreamLeavesNothingVisible) {
  auto c = Client(false);
  TestBlock b = RandomBlock(rng_, 16, 64);
  v1::PutRequest h;
  ToProto(b.key, h.mutable_header()->mutable_key());
  h.mutable_header()->set_payload_bytes(b.payload.size());
  std::vector<std::string> msgs = {h.SerializeAsString()};
  for (size_t off = 0; off < b.payload.size(); off += 65536) {
    v1::PutRequest m;
    m.set_chunk(reinterpret_cast<const char*>(b.payload.data() + off),
                std::min<size_t>(65536, b.payload.size() - off));
    msgs.push_back(m.SerializeAsString());
  }
  auto md = std::vector<std::pair<std::string, std::string>>{
      {"authorization", std::string("Bearer ") + kToken}};
  // Cancelled after half the chunks.
  auto r = RawCall(channel_, Method("Put"), msgs, md, static_cast<int>(msgs.size() / 2));
  EXPECT_FALSE(r.status.ok());
  // Half-closed early: the server sees a short stream.
  std::vector<std::string> half(msgs.begin(), msgs.begin() + msgs.size() / 2);
  r = RawCall(channel_, Method("Put"), half, md);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("ended after"), std::string::npos);
  for (int i = 0; i < 50 && server_->core()->put_buffer_bytes() != 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(server_->core()->put_buffer_bytes(), 0u);
  std::vector<LookupResult> lr(1);
  c->Lookup({b.key}, absl::MakeSpan(lr));
  EXPECT_FALSE(lr[0].present);
  // The full stream commits.
  r = RawCall(channel_, Method("Put"), msgs, md);
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  c->Lookup({b.key}, absl::MakeSpan(lr));
  EXPECT_TRUE(lr[0].present);
}

TEST_F(ServerTest, HealthReflectionAndDrain) {
  auto health = [&](const std::string& service) {
    std::string req;
    if (!service.empty()) req = std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
    auto r = RawCall(channel_, "/grpc.health.v1.Health/Check", {req});
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    return r.responses.empty() ? std::string() : r.responses[0];
  };
  const std::string serving("\x08\x01", 2), not_serving("\x08\x02", 2);
  EXPECT_EQ(health(""), serving);
  EXPECT_EQ(health("kvblock.v1.CacheService"), serving);
  // Reflection: list_services (field 7) answers with our service name.
  auto refl = RawCall(channel_, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                      {std::string("\x3a\x00", 2)});
  ASSERT_TRUE(refl.status.ok()) << refl.status.error_message();
  ASSERT_FALSE(refl.responses.empty());
  EXPECT_NE(refl.responses[0].find("kvblock.v1.CacheService"), std::string::npos);

  auto c = Client(false);
  TestBlock a = RandomBlock(rng_), b = RandomBlock(rng_);
  ASSERT_TRUE(c->Put(a.key, a.payload).ok());
  auto d = c->DrainNode(0, false);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->draining());
  EXPECT_EQ(health("kvblock.v1.CacheService"), not_serving);
  absl::Status s = c->Put(b.key, b.payload);
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(c->Get(a.key).ok());  // reads still served
  ASSERT_TRUE(c->DrainNode(0, true).ok());
  EXPECT_EQ(health("kvblock.v1.CacheService"), serving);
  for (int i = 0; i < 100 && !c->Put(b.key, b.payload).ok(); ++i) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_TRUE(c->Get(b.key).ok());
}

TEST_F(ServerTest, MetricsCountRequestsBytesAndHits) {
  auto c = Client(true);
  TestBlock b = RandomBlock(rng_, 8, 32);
  ASSERT_TRUE(c->Put(b.key, b.payload).ok());
  std::vector<uint8_t> out(b.payload.size());
  ASSERT_TRUE(c->FetchInto(b.key, absl::MakeSpan(out)).ok());
  std::vector<LookupResult> lr(2);
  c->Lookup({b.key, Hash128{rng_(), 9}}, absl::MakeSpan(lr));
  // Gets count as hits and misses too, over gRPC as over UCX.
  auto g = Client(false);
  ASSERT_TRUE(g->Get(b.key).ok());
  EXPECT_TRUE(absl::IsNotFound(g->Get(Hash128{rng_(), 10}).status()));
  const std::string addr = server_->metrics_address();
  httplib::Client http(addr.substr(0, addr.rfind(':')), std::stoi(addr.substr(addr.rfind(':') + 1)));
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  const std::string& text = res->body;
  for (const std::string& want :
       {std::string("kvblock_requests_total{method=\"Put\",code=\"OK\"} 1"),
        std::string("kvblock_requests_total{method=\"Lookup\",code=\"OK\"} 1"),
        std::string("kvblock_bytes_total{plane=\"ucx\",direction=\"out\"} ") +
            std::to_string(b.payload.size()),
        // Lookup 1 hit + 1 miss, UCX Get 1 hit, gRPC Get 1 hit + 1 miss.
        std::string("kvblock_cache_hits_total{tier=\"memory\"} 3"),
        std::string("kvblock_cache_misses_total 2"),
        // RocksDB's own numbers, through the store's Stats.
        std::string("kvblock_rocksdb_wal_written_bytes_total{tier=\"disk\"} "),
        std::string("kvblock_rocksdb_stall_seconds_total{tier=\"disk\"} 0"),
        std::string("kvblock_rocksdb_blob_cache_usage_bytes{tier=\"disk\"} "),
        // One data-plane session per lane of the UCX client.
        std::string("kvblock_cache_server_data_plane_sessions ") +
            std::to_string(CacheClientOptions().data_plane_lanes),
        std::string("kvblock_tier_blocks{tier=\"disk\"} 1")}) {
    EXPECT_NE(text.find(want), std::string::npos) << "missing: " << want;
  }
  auto ready = http.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
}

// Random bytes and mutated messages sent to every method of the live server: it answers each
// with a status and keeps serving.
TEST_F(ServerTest, FuzzLiveServerWithMalformedMessages) {
  auto md = std::vector<std::pair<std::string, std::string>>{
      {"authorization", std::string("Bearer ") + kToken}};
  TestBlock b = RandomBlock(rng_, 2, 8);
  v1::PutRequest h;
  ToProto(b.key, h.mutable_header()->mutable_key());
  h.mutable_header()->set_payload_bytes(b.payload.size());
  v1::PutRequest c;
  c.set_chunk(std::string(b.payload.begin(), b.payload.end()));
  const std::vector<std::string> seeds = {h.SerializeAsString(), c.SerializeAsString()};
  int calls = 0;
  const auto deadline = absl::Now() + absl::Seconds(15);
  for (int i = 0; i < 400 && absl::Now() < deadline; ++i) {
    std::vector<std::string> msgs;
    const int n = 1 + static_cast<int>(rng_() % 4);
    for (int j = 0; j < n; ++j) {
      std::string s = seeds[rng_() % seeds.size()];
      if (rng_() % 3 == 0) {
        s.assign(rng_() % 200, '\0');
        for (char& ch : s) ch = static_cast<char>(rng_());
      } else {
        for (int e = 0; e < 1 + static_cast<int>(rng_() % 4); ++e) {
          if (!s.empty()) s[rng_() % s.size()] ^= static_cast<char>(1 + rng_() % 255);
        }
      }
      msgs.push_back(std::move(s));
    }
    const std::string& m = kMethods[rng_() % kMethods.size()];
    if (m == "Drain") continue;
    auto r = RawCall(channel_, Method(m), msgs, md, rng_() % 5 == 0 ? 1 : -1,
                     std::chrono::seconds(2));
    ++calls;
  }
  EXPECT_GT(calls, 50);
  // Still serving, and no malformed Put became visible or kept buffer budget.
  auto client = Client(false);
  EXPECT_TRUE(client->Put(b.key, b.payload).ok());
  auto got = client->Get(b.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(std::vector<uint8_t>(got->bytes.begin(), got->bytes.end()), b.payload);
  EXPECT_EQ(server_->core()->put_buffer_bytes(), 0u);
}

// mTLS: certificates made with openssl now. A client with a CA-signed certificate is served; one
// without a certificate, with a self-signed one, or in plaintext is refused.
class MtlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string d = dir_.path();
    ASSERT_NO_FATAL_FAILURE(testing::MakeTestCertificates(d));
    CacheServerOptions o;
    o.listen = "127.0.0.1:0";
    o.data_dir = dir_.Sub("data");
    o.memory_bytes = 16 << 20;
    o.service.max_block_bytes = 1 << 20;
    o.sync = "none";
    o.tls_cert = d + "/server.pem";
    o.tls_key = d + "/server.key";
    o.client_ca = d + "/ca.pem";
    auto s = CacheServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }

  absl::Status TryStats(bool tls, const std::string& cert, const std::string& key) {
    CacheClientOptions o;
    o.members = {server_->grpc_address()};
    o.replication = 1;
    o.max_attempts = 1;
    o.use_data_plane = false;
    o.rpc_timeout = absl::Seconds(3);
    if (tls) {
      o.use_tls = true;
      o.tls_root_ca_pem = testing::ReadFileOrEmpty(dir_.Sub("ca.pem"));
      if (!cert.empty()) {
        o.tls_client_cert_pem = testing::ReadFileOrEmpty(dir_.Sub(cert));
        o.tls_client_key_pem = testing::ReadFileOrEmpty(dir_.Sub(key));
      }
    }
    auto c = CacheClient::Create(o);
    if (!c.ok()) return c.status();
    auto stats = (*c)->NodeStats();
    return stats[0].status();
  }

  std::mt19937_64 rng_{std::random_device{}()};
  TempDir dir_;
  std::unique_ptr<CacheServer> server_;
};

TEST_F(MtlsTest, OnlyCaSignedClientsAreServed) {
  EXPECT_TRUE(TryStats(true, "client.pem", "client.key").ok());
  EXPECT_FALSE(TryStats(true, "", "").ok()) << "no client certificate";
  EXPECT_FALSE(TryStats(true, "rogue.pem", "rogue.key").ok()) << "self-signed certificate";
  EXPECT_FALSE(TryStats(false, "", "").ok()) << "plaintext";
}

}  // namespace
}  // namespace kvblock
