// CacheServiceCore without a network, over a real TieredStore: limits and their codes, Put
// assembly (cut streams leave nothing, budgets are returned), chunked Get, Delete, Stats, Drain,
// and a bounded fuzz of malformed protobufs and chunk sequences that must never crash.
#include "services/cache_service_core.h"

#include <random>

#include "cache/tiered_store.h"
#include "gtest/gtest.h"
#include "services/proto_convert.h"
#include "tests/services/cluster_test_util.h"

namespace kvblock {
namespace {

using testing::RandomBlock;
using testing::TempDir;
using testing::TestBlock;

class CoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TieredStoreOptions o;
    o.memory.capacity_bytes = 64 << 20;
    o.rocks.path = dir_.Sub("db");
    o.rocks.create_if_missing = true;
    o.rocks.sync = SyncPolicy::kNone;
    auto s = TieredStore::Open(o);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
    options_.max_keys_per_call = 16;
    options_.max_block_bytes = 1 << 20;
    options_.max_put_buffer_bytes = 2 << 20;
    options_.default_chunk_bytes = 8192;
    options_.auth_token = "s3cret-token";
    ASSERT_TRUE(options_.Validate().ok());
    core_ = std::make_unique<CacheServiceCore>(options_, store_.get(), nullptr);
  }

  absl::Status PutAll(const TestBlock& b, size_t chunk = 5000) {
    auto session = core_->StartPut();
    v1::PutRequest h;
    ToProto(b.key, h.mutable_header()->mutable_key());
    h.mutable_header()->set_payload_bytes(b.payload.size());
    if (auto s = session->OnMessage(h); !s.ok()) return s;
    for (size_t off = 0; off < b.payload.size(); off += chunk) {
      v1::PutRequest c;
      c.set_chunk(reinterpret_cast<const char*>(b.payload.data() + off),
                  std::min(chunk, b.payload.size() - off));
      if (auto s = session->OnMessage(c); !s.ok()) return s;
    }
    return session->Finish().status();
  }

  bool Present(const BlockKey& key) {
    v1::LookupRequest r;
    ToProto(key, r.add_keys());
    v1::LookupResponse out;
    EXPECT_TRUE(core_->Lookup(r, &out).ok());
    return out.results(0).present();
  }

  std::mt19937_64 rng_{std::random_device{}()};
  TempDir dir_;
  std::unique_ptr<TieredStore> store_;
  CacheServiceOptions options_;
  std::unique_ptr<CacheServiceCore> core_;
};

TEST_F(CoreTest, AuthenticateChecksBearerToken) {
  EXPECT_TRUE(absl::IsUnauthenticated(core_->Authenticate(nullptr)));
  std::string wrong = "Bearer s3cret-tokeN", bare = "s3cret-token", right = "Bearer s3cret-token";
  std::string shorter = "Bearer s3cret";
  EXPECT_TRUE(absl::IsUnauthenticated(core_->Authenticate(&wrong)));
  EXPECT_TRUE(absl::IsUnauthenticated(core_->Authenticate(&bare)));
  EXPECT_TRUE(absl::IsUnauthenticated(core_->Authenticate(&shorter)));
  EXPECT_TRUE(core_->Authenticate(&right).ok());
}

TEST_F(CoreTest, PutLookupGetRoundTripByteExact) {
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 5; ++i) blocks.push_back(RandomBlock(rng_, 1 + i, 8 + 7 * i));
  for (const auto& b : blocks) ASSERT_TRUE(PutAll(b).ok());
  v1::LookupRequest lr;
  for (const auto& b : blocks) ToProto(b.key, lr.add_keys());
  TestBlock absent = RandomBlock(rng_);
  ToProto(absent.key, lr.add_keys());
  v1::LookupResponse lo;
  ASSERT_TRUE(core_->Lookup(lr, &lo).ok());
  ASSERT_EQ(lo.results_size(), 6);
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_TRUE(lo.results(i).present());
    EXPECT_EQ(lo.results(i).payload_bytes(), blocks[i].payload.size());
    EXPECT_EQ(FromProto(lo.results(i).key()), blocks[i].key);
    EXPECT_EQ(lo.results(i).tier(), v1::TIER_MEMORY);
  }
  EXPECT_FALSE(lo.results(5).present());
  EXPECT_EQ(lo.results(5).tier(), v1::TIER_NONE);

  for (const auto& b : blocks) {
    v1::GetRequest gr;
    ToProto(b.key, gr.mutable_key());
    gr.set_max_chunk_bytes(4096);
    auto stream = core_->StartGet(gr);
    ASSERT_TRUE(stream.ok()) << stream.status();
    v1::GetResponse m;
    ASSERT_TRUE((*stream)->Next(&m));
    ASSERT_EQ(m.payload_bytes(), b.payload.size());
    std::string got;
    int chunks = 0;
    while ((*stream)->Next(&m)) {
      ASSERT_EQ(m.part_case(), v1::GetResponse::kChunk);
      ASSERT_LE(m.chunk().size(), 4096u);
      got += m.chunk();
      ++chunks;
    }
    EXPECT_EQ(chunks, static_cast<int>((b.payload.size() + 4095) / 4096));
    EXPECT_EQ(got, std::string(b.payload.begin(), b.payload.end()));
  }
  v1::GetRequest miss;
  ToProto(absent.key, miss.mutable_key());
  EXPECT_TRUE(absl::IsNotFound(core_->StartGet(miss).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(core_->StartGet(v1::GetRequest()).status()));
}

TEST_F(CoreTest, PutOfPresentKeyReportsAlreadyPresent) {
  TestBlock b = RandomBlock(rng_);
  ASSERT_TRUE(PutAll(b).ok());
  auto session = core_->StartPut();
  v1::PutRequest h;
  ToProto(b.key, h.mutable_header()->mutable_key());
  h.mutable_header()->set_payload_bytes(b.payload.size());
  ASSERT_TRUE(session->OnMessage(h).ok());
  v1::PutRequest c;
  c.set_chunk(std::string(b.payload.begin(), b.payload.end()));
  ASSERT_TRUE(session->OnMessage(c).ok());
  auto r = session->Finish();
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->already_present());
}

TEST_F(CoreTest, TooManyKeysIsInvalidArgumentNamingTheLimit) {
  v1::LookupRequest r;
  for (int i = 0; i < 17; ++i) ToProto(Hash128{rng_(), rng_()}, r.add_keys());
  v1::LookupResponse out;
  absl::Status s = core_->Lookup(r, &out);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("max_keys_per_call=16"), absl::string_view::npos) << s;
  v1::DeleteRequest d;
  for (int i = 0; i < 17; ++i) ToProto(Hash128{rng_(), rng_()}, d.add_keys());
  v1::DeleteResponse dout;
  EXPECT_TRUE(absl::IsInvalidArgument(core_->Delete(d, &dout)));
}

TEST_F(CoreTest, OversizeBlockIsResourceExhausted) {
  TestBlock big = RandomBlock(rng_, 64, 64);  // 2 MiB > max_block_bytes (1 MiB)
  absl::Status s = PutAll(big);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("max_block_bytes"), absl::string_view::npos) << s;
  EXPECT_FALSE(Present(big.key));
  EXPECT_EQ(core_->put_buffer_bytes(), 0u);
}

TEST_F(CoreTest, PutBufferBudgetIsResourceExhaustedAndReturned) {
  // Two open streams of ~0.9 MiB fit in 2 MiB; a third does not.
  TestBlock a = RandomBlock(rng_, 28, 64), b = RandomBlock(rng_, 28, 64), c = RandomBlock(rng_, 28, 64);
  auto open = [&](const TestBlock& t) {
    auto session = core_->StartPut();
    v1::PutRequest h;
    ToProto(t.key, h.mutable_header()->mutable_key());
    h.mutable_header()->set_payload_bytes(t.payload.size());
    absl::Status s = session->OnMessage(h);
    return std::make_pair(std::move(session), s);
  };
  auto [sa, st_a] = open(a);
  auto [sb, st_b] = open(b);
  ASSERT_TRUE(st_a.ok() && st_b.ok());
  auto [sc, st_c] = open(c);
  EXPECT_TRUE(absl::IsResourceExhausted(st_c)) << st_c;
  EXPECT_NE(st_c.message().find("max_put_buffer_bytes"), absl::string_view::npos);
  sa.reset();  // a cut stream returns its budget
  auto [sc2, st_c2] = open(c);
  EXPECT_TRUE(st_c2.ok()) << st_c2;
}

TEST_F(CoreTest, MalformedStreamsAreInvalidArgument) {
  TestBlock b = RandomBlock(rng_);
  auto expect_invalid = [&](std::vector<v1::PutRequest> msgs, bool finish) {
    auto session = core_->StartPut();
    absl::Status s;
    for (const auto& m : msgs) {
      s = session->OnMessage(m);
      if (!s.ok()) break;
    }
    if (s.ok() && finish) s = session->Finish().status();
    EXPECT_TRUE(absl::IsInvalidArgument(s) || absl::IsDataLoss(s)) << s;
    return s;
  };
  v1::PutRequest header;
  ToProto(b.key, header.mutable_header()->mutable_key());
  header.mutable_header()->set_payload_bytes(b.payload.size());
  v1::PutRequest all;
  all.set_chunk(std::string(b.payload.begin(), b.payload.end()));
  v1::PutRequest empty;
  // Chunk before header; empty message; second header; header without key; tiny size.
  expect_invalid({all}, true);
  expect_invalid({empty}, true);
  expect_invalid({header, header}, true);
  v1::PutRequest nokey;
  nokey.mutable_header()->set_payload_bytes(b.payload.size());
  expect_invalid({nokey}, true);
  v1::PutRequest tiny = header;
  tiny.mutable_header()->set_payload_bytes(10);
  expect_invalid({tiny}, true);
  // More bytes than declared; fewer bytes than declared (the stream ends early).
  v1::PutRequest more = all;
  more.mutable_chunk()->push_back('x');
  expect_invalid({header, more}, true);
  v1::PutRequest fewer;
  fewer.set_chunk(std::string(b.payload.begin(), b.payload.end() - 1));
  expect_invalid({header, fewer}, true);
  // The payload names another key.
  v1::PutRequest other = header;
  ToProto(Hash128{rng_(), rng_()}, other.mutable_header()->mutable_key());
  absl::Status s = expect_invalid({other, all}, true);
  EXPECT_NE(s.message().find("differs"), absl::string_view::npos) << s;
  // Garbage block header.
  v1::PutRequest garbage = all;
  (*garbage.mutable_chunk())[0] ^= 0x5a;
  expect_invalid({header, garbage}, true);
  // Corrupt data: DATA_LOSS from the store's verification.
  v1::PutRequest corrupt = all;
  (*corrupt.mutable_chunk())[kBlockHeaderBytes + 17] ^= 0x01;
  auto session = core_->StartPut();
  ASSERT_TRUE(session->OnMessage(header).ok());
  ASSERT_TRUE(session->OnMessage(corrupt).ok());
  EXPECT_TRUE(absl::IsDataLoss(session->Finish().status()));
  EXPECT_FALSE(Present(b.key));
  EXPECT_EQ(core_->put_buffer_bytes(), 0u);
}

TEST_F(CoreTest, CutStreamLeavesNothingVisible) {
  TestBlock b = RandomBlock(rng_, 8, 64);
  {
    auto session = core_->StartPut();
    v1::PutRequest h;
    ToProto(b.key, h.mutable_header()->mutable_key());
    h.mutable_header()->set_payload_bytes(b.payload.size());
    ASSERT_TRUE(session->OnMessage(h).ok());
    v1::PutRequest c;
    c.set_chunk(reinterpret_cast<const char*>(b.payload.data()), b.payload.size() / 2);
    ASSERT_TRUE(session->OnMessage(c).ok());
    EXPECT_GT(core_->put_buffer_bytes(), 0u);
    EXPECT_FALSE(Present(b.key));
  }  // the stream is cut: no Finish
  EXPECT_FALSE(Present(b.key));
  EXPECT_EQ(core_->put_buffer_bytes(), 0u);
  ASSERT_TRUE(PutAll(b).ok());
  EXPECT_TRUE(Present(b.key));
}

TEST_F(CoreTest, DeleteStatsAndDrain) {
  TestBlock a = RandomBlock(rng_), b = RandomBlock(rng_);
  ASSERT_TRUE(PutAll(a).ok());
  ASSERT_TRUE(PutAll(b).ok());
  v1::StatsResponse st;
  ASSERT_TRUE(core_->Stats(v1::StatsRequest(), &st).ok());
  ASSERT_EQ(st.tiers_size(), 2);
  EXPECT_EQ(st.tiers(0).tier(), v1::TIER_MEMORY);
  EXPECT_EQ(st.tiers(0).blocks(), 2u);
  EXPECT_EQ(st.tiers(1).tier(), v1::TIER_DISK);
  EXPECT_EQ(st.tiers(1).blocks(), 2u);
  v1::DeleteRequest d;
  ToProto(a.key, d.add_keys());
  ToProto(Hash128{rng_(), rng_()}, d.add_keys());  // absent: not an error
  v1::DeleteResponse dout;
  ASSERT_TRUE(core_->Delete(d, &dout).ok());
  EXPECT_EQ(dout.deleted(), 1u);
  EXPECT_FALSE(Present(a.key));
  EXPECT_TRUE(Present(b.key));

  bool notified = false;
  core_->set_drain_listener([&](bool d) { notified = d; });
  v1::DrainRequest dr;
  v1::DrainResponse drr;
  ASSERT_TRUE(core_->Drain(dr, &drr).ok());
  EXPECT_TRUE(drr.draining());
  EXPECT_TRUE(notified);
  TestBlock c = RandomBlock(rng_);
  absl::Status s = PutAll(c);
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(Present(b.key));  // reads still served
  ASSERT_TRUE(core_->Stats(v1::StatsRequest(), &st).ok());
  EXPECT_TRUE(st.draining());
  dr.set_undrain(true);
  ASSERT_TRUE(core_->Drain(dr, &drr).ok());
  EXPECT_FALSE(notified);
  EXPECT_TRUE(PutAll(c).ok());
  v1::OpenDataPlaneResponse odr;
  EXPECT_TRUE(absl::IsFailedPrecondition(core_->OpenDataPlane(v1::OpenDataPlaneRequest(), &odr)));
}

// Random protobuf bytes and random chunk sequences: every handler returns a status, the core
// never crashes, budgets return to zero and only complete, verified blocks become visible.
TEST_F(CoreTest, FuzzMalformedMessagesNeverCrash) {
  std::vector<TestBlock> seeds;
  for (int i = 0; i < 4; ++i) seeds.push_back(RandomBlock(rng_, 2, 8));
  std::vector<std::string> wires;
  for (const auto& b : seeds) {
    v1::PutRequest h;
    ToProto(b.key, h.mutable_header()->mutable_key());
    h.mutable_header()->set_payload_bytes(b.payload.size());
    wires.push_back(h.SerializeAsString());
    v1::PutRequest c;
    c.set_chunk(std::string(b.payload.begin(), b.payload.end()));
    wires.push_back(c.SerializeAsString());
    v1::LookupRequest l;
    ToProto(b.key, l.add_keys());
    wires.push_back(l.SerializeAsString());
  }
  auto mutate = [&](std::string s) {
    const int edits = 1 + static_cast<int>(rng_() % 8);
    for (int e = 0; e < edits; ++e) {
      switch (rng_() % 4) {
        case 0:
          if (!s.empty()) s[rng_() % s.size()] ^= static_cast<char>(1 + rng_() % 255);
          break;
        case 1:
          if (!s.empty()) s.resize(rng_() % s.size());
          break;
        case 2:
          s.insert(s.begin() + (s.empty() ? 0 : rng_() % s.size()),
                   static_cast<char>(rng_() % 256));
          break;
        case 3:
          s += wires[rng_() % wires.size()].substr(0, rng_() % 64);
          break;
      }
    }
    return s;
  };
  int parsed = 0, committed = 0;
  const auto deadline = absl::Now() + absl::Seconds(10);
  for (int iter = 0; iter < 20000 && absl::Now() < deadline; ++iter) {
    const std::string bytes = mutate(wires[rng_() % wires.size()]);
    v1::LookupRequest l;
    if (l.ParseFromString(bytes)) {
      ++parsed;
      v1::LookupResponse out;
      (void)core_->Lookup(l, &out);
      v1::DeleteRequest d;
      if (d.ParseFromString(bytes) && rng_() % 8 == 0) {
        v1::DeleteResponse dout;
        (void)core_->Delete(d, &dout);
      }
    }
    v1::GetRequest g;
    if (g.ParseFromString(bytes)) {
      auto st = core_->StartGet(g);
      v1::GetResponse m;
      for (int i = 0; st.ok() && i < 1000 && (*st)->Next(&m); ++i) {
      }
    }
    // A chunk sequence: 1..6 messages, each a parse of mutated or intact wire bytes.
    auto session = core_->StartPut();
    absl::Status s;
    const int n = 1 + static_cast<int>(rng_() % 6);
    for (int i = 0; i < n && s.ok(); ++i) {
      v1::PutRequest p;
      const std::string& src = wires[rng_() % wires.size()];
      if (!p.ParseFromString(rng_() % 2 ? src : mutate(src))) continue;
      s = session->OnMessage(p);
    }
    if (s.ok() && rng_() % 2) {
      auto r = session->Finish();
      if (r.ok()) ++committed;
    }
  }
  EXPECT_GT(parsed, 100);
  EXPECT_EQ(core_->put_buffer_bytes(), 0u);
  // Whatever was committed is complete and verified.
  for (const auto& b : seeds) {
    auto got = store_->Get(b.key);
    if (got.ok()) {
      EXPECT_EQ(std::vector<uint8_t>(got->bytes.begin(), got->bytes.end()), b.payload);
    }
  }
  std::printf("fuzz: %d parsed lookups, %d commits\n", parsed, committed);
}

}  // namespace
}  // namespace kvblock
