#include "cache/memory_tier.h"

#include <sys/mman.h>

#include <cstring>
#include <random>
#include <set>

#include "cache/arena.h"
#include "cache/eviction_policy.h"
#include "gtest/gtest.h"
#include "tests/cache/store_test_util.h"

namespace kvblock {
namespace {

using testing::MakeBlock;
using testing::MakeBlockOfSize;
using testing::RandomModel;
using testing::TestBlock;

std::vector<uint8_t> Copy(const BlockBytes& b) { return {b.bytes.begin(), b.bytes.end()}; }

// ---- Arena -------------------------------------------------------------------------------

TEST(ArenaTest, AllocatesAlignedDisjointRangesAndCoalescesOnFree) {
  ArenaOptions o;
  o.capacity_bytes = 1 << 20;
  o.alignment = 64;
  auto arena = Arena::Create(o).value();
  std::mt19937 rng(7);
  std::vector<std::pair<uint8_t*, uint64_t>> live;
  for (int round = 0; round < 2000; ++round) {
    if (live.empty() || rng() % 3 != 0) {
      uint64_t size = 1 + rng() % 20000;
      auto p = arena->Allocate(size);
      if (!p.ok()) {
        EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
        continue;
      }
      ASSERT_EQ(reinterpret_cast<uintptr_t>(*p) % 64, 0u);
      std::memset(*p, round & 0xff, size);  // the whole range is writable
      live.push_back({*p, size});
    } else {
      size_t i = rng() % live.size();
      arena->Free(live[i].first, live[i].second);
      live.erase(live.begin() + i);
    }
    // No two live ranges overlap.
    std::vector<std::pair<uint8_t*, uint64_t>> sorted = live;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 1; i < sorted.size(); ++i) {
      ASSERT_LE(sorted[i - 1].first + arena->RoundUp(sorted[i - 1].second), sorted[i].first);
    }
  }
  uint64_t expect = 0;
  for (auto& [p, s] : live) expect += arena->RoundUp(s);
  EXPECT_EQ(arena->allocated_bytes(), expect);
  for (auto& [p, s] : live) arena->Free(p, s);
  EXPECT_EQ(arena->allocated_bytes(), 0u);
  // Everything coalesced back into one range: the whole capacity is allocatable at once.
  EXPECT_EQ(arena->largest_free_range(), arena->capacity_bytes());
  auto all = arena->Allocate(arena->capacity_bytes());
  EXPECT_TRUE(all.ok()) << all.status();
}

TEST(ArenaTest, RegionsAreStableAndLocateFindsEveryAllocation) {
  ArenaOptions o;
  o.capacity_bytes = 4 << 20;
  o.region_bytes = 1 << 20;
  auto arena = Arena::Create(o).value();
  std::vector<std::pair<void*, size_t>> regions;
  arena->ForEachRegion([&](void* base, size_t len) { regions.push_back({base, len}); });
  ASSERT_EQ(regions.size(), 4u);
  for (auto& r : regions) EXPECT_EQ(r.second, 1u << 20);
  for (int i = 0; i < 12; ++i) {
    auto p = arena->Allocate(300 << 10).value();  // 3 fit per region
    auto loc = arena->Locate(p);
    ASSERT_TRUE(loc.has_value());
    EXPECT_EQ(static_cast<uint8_t*>(regions[loc->region].first) + loc->offset, p);
    auto inner = arena->Locate(p + 1000);
    ASSERT_TRUE(inner.has_value());
    EXPECT_EQ(inner->offset, loc->offset + 1000);
  }
  EXPECT_FALSE(arena->Allocate(300 << 10).ok());  // a 4th does not fit in any region
  int local = 0;
  EXPECT_FALSE(arena->Locate(&local).has_value());
  EXPECT_FALSE(arena->Allocate((1 << 20) + 64).ok());  // larger than a region
}

TEST(ArenaTest, SharedRegionFdMapsTheSamePages) {
  ArenaOptions o;
  o.capacity_bytes = 4 << 20;
  o.region_bytes = 1 << 20;
  o.shared = true;
  auto arena = Arena::Create(o);
  ASSERT_TRUE(arena.ok()) << arena.status();
  ASSERT_EQ((*arena)->num_regions(), 4u);
  auto p = (*arena)->Allocate(3000);
  ASSERT_TRUE(p.ok());
  std::mt19937_64 rng{std::random_device{}()};
  for (int i = 0; i < 3000; ++i) (*p)[i] = static_cast<uint8_t>(rng());
  const std::optional<ArenaLocation> loc = (*arena)->Locate(*p);
  ASSERT_TRUE(loc.has_value());
  const int fd = (*arena)->region_fd(loc->region);
  ASSERT_GE(fd, 0);
  const uint64_t length = (*arena)->region_length(loc->region);
  void* view = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(view, MAP_FAILED);
  EXPECT_EQ(std::memcmp(static_cast<uint8_t*>(view) + loc->offset, *p, 3000), 0);
  (*p)[17] ^= 0xff;  // a write through the arena is seen through the other mapping
  EXPECT_EQ(static_cast<uint8_t*>(view)[loc->offset + 17], (*p)[17]);
  munmap(view, length);
  EXPECT_EQ((*arena)->region_fd(4), -1);

  o.shared = false;
  auto plain = Arena::Create(o);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->region_fd(0), -1);
}

TEST(ArenaTest, RejectsBadOptions) {
  ArenaOptions o;
  o.alignment = 48;
  EXPECT_EQ(Arena::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = ArenaOptions();
  o.capacity_bytes = 0;
  EXPECT_EQ(Arena::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Eviction policies -------------------------------------------------------------------

BlockKey K(uint64_t i) { return Hash128{i, i * 31 + 1}; }

TEST(EvictionPolicyTest, LruEvictsLeastRecentlyUsed) {
  auto p = MakeEvictionPolicy(EvictionPolicyKind::kLru);
  for (uint64_t i = 0; i < 5; ++i) p->Insert(K(i), 100);
  p->Touch(K(0));
  p->Touch(K(2));
  p->Erase(K(3));
  std::vector<BlockKey> order;
  while (auto v = p->Evict()) order.push_back(*v);
  EXPECT_EQ(order, (std::vector<BlockKey>{K(1), K(4), K(0), K(2)}));
  EXPECT_EQ(p->size(), 0u);
}

TEST(EvictionPolicyTest, S3FifoEvictsOneHitWondersFirstAndReadmitsGhostsToMain) {
  auto p = MakeEvictionPolicy(EvictionPolicyKind::kS3Fifo);
  // 10 hot keys, each hit once while in the small queue, then a scan of 100 one-hit keys.
  for (uint64_t i = 0; i < 10; ++i) p->Insert(K(i), 100);
  for (uint64_t i = 0; i < 10; ++i) p->Touch(K(i));
  for (uint64_t i = 100; i < 200; ++i) {
    p->Insert(K(i), 100);
    if (p->size() > 20) {
      auto v = p->Evict();
      ASSERT_TRUE(v.has_value());
      EXPECT_GE(v->hi, 100u) << "a hot key was evicted by the scan";
    }
  }
  for (uint64_t i = 0; i < 10; ++i) p->Touch(K(i));
  // Ghost re-admission: an evicted scan key that comes back goes to main and outlives new ones.
  std::set<uint64_t> tracked_scan;
  auto victim = p->Evict();
  ASSERT_TRUE(victim.has_value());
  EXPECT_GE(victim->hi, 100u);
  p->Insert(*victim, 100);  // back from the ghost list
  for (uint64_t i = 1000; i < 1010; ++i) p->Insert(K(i), 100);
  for (int n = 0; n < 10; ++n) {
    auto v = p->Evict();
    ASSERT_TRUE(v.has_value());
    EXPECT_NE(*v, *victim);
  }
  size_t count = p->size();
  while (p->Evict()) --count;
  EXPECT_EQ(count, 0u);
}

TEST(EvictionPolicyTest, LruLosesTheHotSetToAScan) {
  auto p = MakeEvictionPolicy(EvictionPolicyKind::kLru);
  for (uint64_t i = 0; i < 10; ++i) p->Insert(K(i), 100);
  for (uint64_t i = 0; i < 10; ++i) p->Touch(K(i));
  int hot_evicted = 0;
  for (uint64_t i = 100; i < 200; ++i) {
    p->Insert(K(i), 100);
    if (p->size() > 20) hot_evicted += p->Evict()->hi < 100;
  }
  EXPECT_EQ(hot_evicted, 10);  // the contrast with S3-FIFO above
}

TEST(EvictionPolicyTest, NamesRoundTrip) {
  for (auto k : {EvictionPolicyKind::kLru, EvictionPolicyKind::kS3Fifo}) {
    EXPECT_EQ(ParseEvictionPolicy(EvictionPolicyName(k)).value(), k);
  }
  EXPECT_FALSE(ParseEvictionPolicy("arc").ok());
}

// ---- MemoryTier --------------------------------------------------------------------------

std::unique_ptr<MemoryTier> MakeTier(uint64_t capacity, EvictionPolicyKind policy,
                                     uint32_t shards = 4) {
  MemoryTierOptions o;
  o.capacity_bytes = capacity;
  o.num_shards = shards;
  o.eviction = policy;
  return MemoryTier::Create(o).value();
}

class MemoryTierTest : public ::testing::TestWithParam<EvictionPolicyKind> {};

TEST_P(MemoryTierTest, PutGetRoundTripIsZeroCopyFromTheArena) {
  auto tier = MakeTier(8 << 20, GetParam());
  const ModelFingerprint model = RandomModel(1);
  std::vector<TestBlock> blocks;
  for (uint64_t i = 0; i < 20; ++i) blocks.push_back(MakeBlock(model, i, 4 + i));
  for (auto& b : blocks) ASSERT_TRUE(tier->Put(b.key, b.payload).ok());
  for (auto& b : blocks) {
    auto got = tier->Get(b.key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Copy(*got), b.payload);
    auto loc = tier->arena().Locate(got->bytes.data());
    ASSERT_TRUE(loc.has_value()) << "Get must point into the arena, not a copy";
    auto again = tier->Get(b.key).value();
    EXPECT_EQ(again.bytes.data(), got->bytes.data());
  }
  auto missing = tier->Get(MakeBlock(model, 999).key);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  auto s = tier->Stats()[0];
  EXPECT_EQ(s.tier, StoreTier::kMemory);
  EXPECT_EQ(s.blocks, 20u);
  EXPECT_EQ(s.hits, 40u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.inserts, 20u);
  uint64_t charged = 0;
  for (auto& b : blocks) charged += tier->ChargeFor(b.payload.size());
  EXPECT_EQ(s.bytes, charged);
  // A present key is a no-op.
  ASSERT_TRUE(tier->Put(blocks[0].key, blocks[0].payload).ok());
  EXPECT_EQ(tier->Stats()[0].inserts, 20u);
}

TEST_P(MemoryTierTest, RejectsMismatchedAndCorruptPayloads) {
  auto tier = MakeTier(8 << 20, GetParam());
  TestBlock a = MakeBlock(RandomModel(1), 1), b = MakeBlock(RandomModel(1), 2);
  auto wrong_key = tier->Put(b.key, a.payload);
  EXPECT_EQ(wrong_key.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_key.message().find("header names block"), std::string::npos);
  TestBlock other_model = MakeBlock(RandomModel(2), 1);  // same tokens, other model: other key
  EXPECT_EQ(tier->Put(a.key, other_model.payload).code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> flipped = a.payload;
  flipped[flipped.size() / 2] ^= 0x10;
  EXPECT_EQ(tier->Put(a.key, flipped).code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> truncated(a.payload.begin(), a.payload.end() - 1);
  EXPECT_EQ(tier->Put(a.key, truncated).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->Stats()[0].blocks, 0u);
  EXPECT_EQ(tier->Stats()[0].bytes, 0u);
}

TEST_P(MemoryTierTest, ByteBudgetIsNeverExceededAndEvictionKeepsWhatFits) {
  const uint64_t capacity = 1 << 20;
  auto tier = MakeTier(capacity, GetParam());
  std::mt19937 rng(3);
  const ModelFingerprint model = RandomModel(3);
  std::vector<TestBlock> all;
  for (uint64_t i = 0; i < 200; ++i) {
    all.push_back(MakeBlock(model, i, 1 + rng() % 64));  // 350 B - 16 KiB payloads
    ASSERT_TRUE(tier->Put(all.back().key, all.back().payload).ok());
    auto s = tier->Stats()[0];
    ASSERT_LE(s.bytes, capacity);
  }
  // Resident blocks are exactly those Lookup reports, their charges add up to Stats.bytes, and
  // every one reads back intact.
  std::vector<BlockKey> keys;
  for (auto& b : all) keys.push_back(b.key);
  std::vector<LookupResult> found(keys.size());
  tier->Lookup(keys, absl::MakeSpan(found));
  uint64_t resident = 0, charged = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    if (!found[i].present) continue;
    ++resident;
    charged += tier->ChargeFor(all[i].payload.size());
    EXPECT_EQ(found[i].tier, StoreTier::kMemory);
    EXPECT_EQ(found[i].payload_bytes, all[i].payload.size());
    EXPECT_EQ(Copy(tier->Get(all[i].key).value()), all[i].payload);
  }
  auto s = tier->Stats()[0];
  EXPECT_EQ(s.blocks, resident);
  EXPECT_EQ(s.bytes, charged);
  EXPECT_EQ(s.evictions, 200 - resident);
  EXPECT_GT(s.evictions, 0u);
  // Eviction frees what is needed, not much more (arena fragmentation costs a few blocks).
  EXPECT_GT(charged, capacity * 9 / 10);
}

TEST_P(MemoryTierTest, ReadersPinEvictedBlocksAndTheirBytesStayCharged) {
  const ModelFingerprint model = RandomModel(4);
  std::vector<TestBlock> b;
  for (uint64_t i = 0; i < 6; ++i) b.push_back(MakeBlock(model, i, 64));
  MemoryTierOptions o;
  o.num_shards = 1;
  o.eviction = GetParam();
  o.capacity_bytes = 1 << 20;
  const uint64_t charge = MemoryTier::Create(o).value()->ChargeFor(b[0].payload.size());
  o.capacity_bytes = 3 * charge + charge / 2;  // room for exactly three blocks
  auto tier = MemoryTier::Create(o).value();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(tier->Put(b[i].key, b[i].payload).ok());
  BlockBytes held = tier->Get(b[0].key).value();
  ASSERT_TRUE(tier->Delete(b[0].key).ok());
  EXPECT_EQ(tier->Stats()[0].blocks, 2u);
  EXPECT_EQ(tier->Stats()[0].bytes, 3 * charge);  // still pinned by `held`
  for (int i = 3; i < 6; ++i) {
    ASSERT_TRUE(tier->Put(b[i].key, b[i].payload).ok());
    EXPECT_LE(tier->Stats()[0].bytes, o.capacity_bytes);
    EXPECT_EQ(Copy(held), b[0].payload) << "a pinned allocation was reused";
  }
  EXPECT_EQ(tier->Stats()[0].blocks, 2u);  // pinned block + 2 resident
  held = BlockBytes();
  EXPECT_EQ(tier->Stats()[0].bytes, 2 * charge);

  // All three resident blocks pinned by readers: a new Put cannot make room.
  ASSERT_TRUE(tier->Put(b[0].key, b[0].payload).ok());
  std::vector<BlockBytes> pins;
  for (const TestBlock& x : b) {
    if (auto got = tier->Get(x.key); got.ok()) pins.push_back(*got);
  }
  ASSERT_EQ(pins.size(), 3u);
  TestBlock extra = MakeBlock(model, 100, 64);
  EXPECT_EQ(tier->Put(extra.key, extra.payload).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_LE(tier->Stats()[0].bytes, o.capacity_bytes);
  pins.clear();
  EXPECT_TRUE(tier->Put(extra.key, extra.payload).ok());
  // A block larger than the whole budget is refused outright.
  TestBlock huge = MakeBlock(model, 101, 1024);
  EXPECT_EQ(tier->Put(huge.key, huge.payload).code(), absl::StatusCode::kResourceExhausted);
}

TEST_P(MemoryTierTest, BytesOutliveTheTier) {
  TestBlock a = MakeBlock(RandomModel(5), 5, 32);
  BlockBytes held;
  {
    auto tier = MakeTier(1 << 20, GetParam());
    ASSERT_TRUE(tier->Put(a.key, a.payload).ok());
    held = tier->Get(a.key).value();
  }
  EXPECT_EQ(Copy(held), a.payload);
}

TEST_P(MemoryTierTest, DeleteAndDeleteModel) {
  auto tier = MakeTier(16 << 20, GetParam());
  const ModelFingerprint m1 = RandomModel(10), m2 = RandomModel(11);
  std::vector<TestBlock> b1, b2;
  for (uint64_t i = 0; i < 30; ++i) b1.push_back(MakeBlock(m1, i));
  for (uint64_t i = 0; i < 20; ++i) b2.push_back(MakeBlock(m2, i));
  for (auto& b : b1) ASSERT_TRUE(tier->Put(b.key, b.payload).ok());
  for (auto& b : b2) ASSERT_TRUE(tier->Put(b.key, b.payload).ok());
  ASSERT_TRUE(tier->Delete(b1[0].key).ok());
  ASSERT_TRUE(tier->Delete(b1[0].key).ok());  // absent: still OK
  EXPECT_EQ(tier->Get(b1[0].key).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tier->DeleteModel(m1).value(), 29u);
  EXPECT_EQ(tier->DeleteModel(m1).value(), 0u);
  for (auto& b : b1) EXPECT_FALSE(tier->Get(b.key).ok());
  for (auto& b : b2) EXPECT_EQ(Copy(tier->Get(b.key).value()), b.payload);
  uint64_t charged = 0;
  for (auto& b : b2) charged += tier->ChargeFor(b.payload.size());
  EXPECT_EQ(tier->Stats()[0].blocks, 20u);
  EXPECT_EQ(tier->Stats()[0].bytes, charged);
}

TEST_P(MemoryTierTest, VerifyOnGetDropsBytesCorruptedInMemory) {
  MemoryTierOptions o;
  o.capacity_bytes = 1 << 20;
  o.eviction = GetParam();
  o.verify_on_get = true;
  auto tier = MemoryTier::Create(o).value();
  TestBlock a = MakeBlock(RandomModel(6), 6, 16);
  ASSERT_TRUE(tier->Put(a.key, a.payload).ok());
  {
    BlockBytes b = tier->Get(a.key).value();
    const_cast<uint8_t*>(b.bytes.data())[b.bytes.size() - 3] ^= 0x40;  // a bit flip in RAM
  }
  EXPECT_EQ(tier->Get(a.key).status().code(), absl::StatusCode::kNotFound);
  auto s = tier->Stats()[0];
  EXPECT_EQ(s.corrupt_records, 1u);
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(s.bytes, 0u);
}

TEST(MemoryTierOptionsTest, ValidateNamesTheField) {
  MemoryTierOptions o;
  o.num_shards = 0;
  auto s = MemoryTier::Create(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("num_shards"), std::string::npos);
  o = MemoryTierOptions();
  o.capacity_bytes = 0;
  EXPECT_NE(MemoryTier::Create(o).status().message().find("capacity_bytes"), std::string::npos);
  o = MemoryTierOptions();
  o.s3fifo.small_fraction = 1.5;
  EXPECT_NE(MemoryTier::Create(o).status().message().find("small_fraction"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Policies, MemoryTierTest,
                         ::testing::Values(EvictionPolicyKind::kLru, EvictionPolicyKind::kS3Fifo),
                         [](const auto& info) { return std::string(EvictionPolicyName(info.param)); });

}  // namespace
}  // namespace kvblock
