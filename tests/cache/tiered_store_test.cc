#include "cache/tiered_store.h"

#include "gtest/gtest.h"
#include "tests/cache/store_test_util.h"

namespace kvblock {
namespace {

using testing::MakeBlock;
using testing::RandomModel;
using testing::ScratchDir;
using testing::TestBlock;

std::vector<uint8_t> Copy(const BlockBytes& b) { return {b.bytes.begin(), b.bytes.end()}; }

TieredStoreOptions Options(const std::string& path, WritePolicy policy, uint64_t memory_bytes) {
  TieredStoreOptions o;
  o.memory.capacity_bytes = memory_bytes;
  o.memory.num_shards = 2;
  o.rocks.path = path;
  o.rocks.sync = SyncPolicy::kGroupCommit;
  o.rocks.write_buffer_bytes = 4 << 20;
  o.write_policy = policy;
  o.write_back_interval = absl::Milliseconds(20);
  return o;
}

LookupResult LookupOne(BlockStore& store, const BlockKey& key) {
  LookupResult r;
  store.Lookup({&key, 1}, {&r, 1});
  return r;
}

TEST(TieredStoreTest, WriteThroughReachesBothTiersAndRestartWarmsLazily) {
  ScratchDir dir;
  const ModelFingerprint m = RandomModel(1);
  std::vector<TestBlock> blocks;
  for (uint64_t i = 0; i < 30; ++i) blocks.push_back(MakeBlock(m, i, 32));
  {
    auto store = TieredStore::Open(Options(dir.path(), WritePolicy::kWriteThrough, 4 << 20)).value();
    for (auto& b : blocks) ASSERT_TRUE(store->Put(b.key, b.payload).ok());
    auto stats = store->Stats();
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_EQ(stats[0].tier, StoreTier::kMemory);
    EXPECT_EQ(stats[1].tier, StoreTier::kDisk);
    EXPECT_EQ(stats[0].blocks, 30u);
    EXPECT_EQ(stats[1].blocks, 30u);
    EXPECT_EQ(store->dirty_blocks(), 0u);
    EXPECT_EQ(LookupOne(*store, blocks[0].key).tier, StoreTier::kMemory);
  }
  auto store = TieredStore::Open(Options(dir.path(), WritePolicy::kWriteThrough, 4 << 20)).value();
  EXPECT_EQ(store->Stats()[0].blocks, 0u);  // memory starts cold
  for (auto& b : blocks) {
    LookupResult before = LookupOne(*store, b.key);
    EXPECT_TRUE(before.present);
    EXPECT_EQ(before.tier, StoreTier::kDisk);
    auto first = store->Get(b.key).value();
    EXPECT_EQ(Copy(first), b.payload);
    EXPECT_EQ(first.tier, StoreTier::kDisk);  // answered by the disk (then promoted)
    EXPECT_EQ(LookupOne(*store, b.key).tier, StoreTier::kMemory);  // promoted
    auto again = store->Get(b.key).value();
    EXPECT_EQ(again.tier, StoreTier::kMemory);
    EXPECT_TRUE(store->memory().arena().Locate(again.bytes.data()).has_value());
  }
  auto stats = store->Stats();
  EXPECT_EQ(stats[0].hits, 30u);
  EXPECT_EQ(stats[1].hits, 30u);
}

TEST(TieredStoreTest, MemoryEvictionKeepsEveryBlockReadableFromDisk) {
  ScratchDir dir;
  const ModelFingerprint m = RandomModel(2);
  auto store = TieredStore::Open(Options(dir.path(), WritePolicy::kWriteThrough, 256 << 10)).value();
  std::vector<TestBlock> blocks;
  for (uint64_t i = 0; i < 60; ++i) blocks.push_back(MakeBlock(m, i, 64));  // ~16 KiB each
  for (auto& b : blocks) ASSERT_TRUE(store->Put(b.key, b.payload).ok());
  auto stats = store->Stats();
  EXPECT_LE(stats[0].bytes, 256u << 10);
  EXPECT_LT(stats[0].blocks, 60u);
  EXPECT_GT(stats[0].evictions, 0u);
  EXPECT_EQ(stats[1].blocks, 60u);
  for (auto& b : blocks) EXPECT_EQ(Copy(store->Get(b.key).value()), b.payload);
  EXPECT_LE(store->Stats()[0].bytes, 256u << 10);
}

TEST(TieredStoreTest, WriteBackAcknowledgesFromMemoryAndEvictionDemotes) {
  ScratchDir dir;
  const ModelFingerprint m = RandomModel(3);
  TieredStoreOptions o = Options(dir.path(), WritePolicy::kWriteBack, 256 << 10);
  o.write_back_interval = absl::Seconds(100);  // only eviction and Flush write to disk here
  auto store = TieredStore::Open(o).value();
  std::vector<TestBlock> blocks;
  for (uint64_t i = 0; i < 40; ++i) blocks.push_back(MakeBlock(m, i, 64));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store->Put(blocks[i].key, blocks[i].payload).ok());
  EXPECT_EQ(store->dirty_blocks(), 5u);
  EXPECT_EQ(store->disk().Stats()[0].blocks, 0u);  // not on disk yet
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Copy(store->Get(blocks[i].key).value()), blocks[i].payload);
  // Overflow memory: evicted dirty blocks are written to disk, and stay readable throughout.
  for (int i = 5; i < 40; ++i) {
    ASSERT_TRUE(store->Put(blocks[i].key, blocks[i].payload).ok());
    for (int j = 0; j <= i; j += 7) {
      ASSERT_EQ(Copy(store->Get(blocks[j].key).value()), blocks[j].payload) << i << " " << j;
    }
  }
  // The flusher demotes evicted blocks promptly (bounded wait).
  for (int wait = 0; wait < 200 && store->disk().Stats()[0].blocks == 0; ++wait) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_GT(store->disk().Stats()[0].blocks, 0u);
  ASSERT_TRUE(store->Flush().ok());
  EXPECT_EQ(store->dirty_blocks(), 0u);
  EXPECT_EQ(store->disk().Stats()[0].blocks, 40u);
  store.reset();
  auto reopened = TieredStore::Open(o).value();
  for (auto& b : blocks) EXPECT_EQ(Copy(reopened->Get(b.key).value()), b.payload);
}

TEST(TieredStoreTest, WriteBackFlushesOnCloseAndOnItsInterval) {
  ScratchDir dir;
  const ModelFingerprint m = RandomModel(4);
  std::vector<TestBlock> blocks;
  for (uint64_t i = 0; i < 10; ++i) blocks.push_back(MakeBlock(m, i, 16));
  {
    auto store = TieredStore::Open(Options(dir.path(), WritePolicy::kWriteBack, 4 << 20)).value();
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(store->Put(blocks[i].key, blocks[i].payload).ok());
    for (int wait = 0; wait < 300 && store->dirty_blocks() > 0; ++wait) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_EQ(store->dirty_blocks(), 0u);  // the 20 ms flusher ran
    for (int i = 5; i < 10; ++i) ASSERT_TRUE(store->Put(blocks[i].key, blocks[i].payload).ok());
  }  // close flushes the rest
  auto store = TieredStore::Open(Options(dir.path(), WritePolicy::kWriteThrough, 4 << 20)).value();
  EXPECT_EQ(store->disk().Stats()[0].blocks, 10u);
  for (auto& b : blocks) EXPECT_EQ(Copy(store->Get(b.key).value()), b.payload);
}

class TieredDeleteTest : public ::testing::TestWithParam<WritePolicy> {};

TEST_P(TieredDeleteTest, DeleteAndDeleteModelClearBothTiers) {
  ScratchDir dir;
  const ModelFingerprint m1 = RandomModel(5), m2 = RandomModel(6);
  auto store = TieredStore::Open(Options(dir.path(), GetParam(), 4 << 20)).value();
  std::vector<TestBlock> b1, b2;
  for (uint64_t i = 0; i < 12; ++i) b1.push_back(MakeBlock(m1, i, 16));
  for (uint64_t i = 0; i < 7; ++i) b2.push_back(MakeBlock(m2, i, 16));
  for (auto& b : b1) ASSERT_TRUE(store->Put(b.key, b.payload).ok());
  for (auto& b : b2) ASSERT_TRUE(store->Put(b.key, b.payload).ok());
  ASSERT_TRUE(store->Delete(b1[0].key).ok());
  EXPECT_EQ(store->Get(b1[0].key).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(LookupOne(*store, b1[0].key).present);
  EXPECT_EQ(store->DeleteModel(m1).value(), 11u);
  for (auto& b : b1) EXPECT_FALSE(store->Get(b.key).ok());
  ASSERT_TRUE(store->Flush().ok());
  for (auto& b : b1) EXPECT_FALSE(store->disk().Get(b.key).ok());
  for (auto& b : b2) EXPECT_EQ(Copy(store->Get(b.key).value()), b.payload);
  EXPECT_EQ(store->disk().Stats()[0].blocks, 7u);
}

INSTANTIATE_TEST_SUITE_P(Policies, TieredDeleteTest,
                         ::testing::Values(WritePolicy::kWriteThrough, WritePolicy::kWriteBack));

TEST(TieredStoreTest, RejectsBadPayloadsBeforeTouchingEitherTier) {
  ScratchDir dir;
  auto store = TieredStore::Open(Options(dir.path(), WritePolicy::kWriteThrough, 1 << 20)).value();
  TestBlock a = MakeBlock(RandomModel(7), 1), b = MakeBlock(RandomModel(7), 2);
  EXPECT_EQ(store->Put(b.key, a.payload).code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> flipped = a.payload;
  flipped.back() ^= 4;
  EXPECT_EQ(store->Put(a.key, flipped).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->Stats()[0].blocks + store->Stats()[1].blocks, 0u);
}

TEST(TieredStoreTest, OpenEmbeddedStoreCreatesTheDirAndServesAfterReopen) {
  ScratchDir dir;
  TestBlock a = MakeBlock(RandomModel(8), 1, 100);
  {
    auto store = OpenEmbeddedStore(dir.Sub("cache"), 8 << 20);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->Put(a.key, a.payload).ok());
  }
  auto store = OpenEmbeddedStore(dir.Sub("cache"), 8 << 20).value();
  EXPECT_EQ(Copy(store->Get(a.key).value()), a.payload);
  EXPECT_EQ(OpenEmbeddedStore(dir.Sub("no/such/parent"), 8 << 20).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvblock
