// Concurrency stress: many threads doing mixed Put/Get/Lookup/Delete on a small key set (so
// most operations collide on the same keys), with a byte budget small enough that eviction
// runs constantly. Checks that every successful Get returns exactly the bytes of its key, that
// the memory budget is never exceeded, and that the tiers agree once the threads stop. Bounded
// in time (KVBLOCK_STRESS_SECONDS, default 2 s per case) and in operations; also run under
// ThreadSanitizer in CI (label tsan).
#include <atomic>
#include <cstdlib>
#include <random>
#include <thread>

#include "absl/time/clock.h"
#include "cache/memory_tier.h"
#include "cache/tiered_store.h"
#include "gtest/gtest.h"
#include "tests/cache/store_test_util.h"

namespace kvblock {
namespace {

using testing::MakeBlock;
using testing::RandomModel;
using testing::ScratchDir;
using testing::TestBlock;

constexpr int kThreads = 8;
constexpr int kKeys = 48;
constexpr uint64_t kMaxOpsPerThread = 200000;

absl::Duration StressTime() {
  const char* s = std::getenv("KVBLOCK_STRESS_SECONDS");
  return absl::Seconds(s != nullptr ? std::atof(s) : 2.0);
}

struct Corpus {
  std::vector<TestBlock> blocks;
  std::vector<ModelFingerprint> models;
  Corpus() {
    models = {RandomModel(1), RandomModel(2)};
    for (int i = 0; i < kKeys; ++i) {
      blocks.push_back(MakeBlock(models[i % 2], i, 8 + (i * 37) % 120));  // 2-32 KiB
    }
  }
};

struct Counters {
  std::atomic<uint64_t> ops{0}, hits{0}, wrong{0}, budget_violations{0}, errors{0};
};

// Runs the mixed workload against `store`; `memory` (may be the store itself) is the tier
// whose byte budget is watched.
void RunWorkload(BlockStore& store, const MemoryTier& memory, const Corpus& corpus,
                 Counters& c, bool with_delete_model) {
  const absl::Time deadline = absl::Now() + StressTime();
  const uint64_t capacity = memory.options().capacity_bytes;
  std::atomic<bool> stop{false};
  std::thread watcher([&] {
    while (!stop.load()) {
      if (memory.Stats()[0].bytes > capacity) c.budget_violations.fetch_add(1);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1000 + t);
      std::vector<BlockKey> batch(8);
      std::vector<LookupResult> found(8);
      for (uint64_t n = 0; n < kMaxOpsPerThread && absl::Now() < deadline; ++n) {
        // Skewed: half of the operations hit 6 hot keys.
        const int k = rng() % 2 ? rng() % 6 : rng() % kKeys;
        const TestBlock& b = corpus.blocks[k];
        const int op = rng() % 100;
        if (op < 30) {
          absl::Status s = store.Put(b.key, b.payload);
          if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted) c.errors.fetch_add(1);
        } else if (op < 80) {
          absl::StatusOr<BlockBytes> got = store.Get(b.key);
          if (got.ok()) {
            c.hits.fetch_add(1);
            if (got->bytes.size() != b.payload.size() ||
                !std::equal(got->bytes.begin(), got->bytes.end(), b.payload.begin())) {
              c.wrong.fetch_add(1);
            }
          } else if (got.status().code() != absl::StatusCode::kNotFound) {
            c.errors.fetch_add(1);
          }
        } else if (op < 90) {
          for (auto& key : batch) key = corpus.blocks[rng() % kKeys].key;
          store.Lookup(batch, absl::MakeSpan(found));
          for (size_t i = 0; i < batch.size(); ++i) {
            if (found[i].present && found[i].payload_bytes == 0) c.wrong.fetch_add(1);
          }
        } else if (op < 99 || !with_delete_model) {
          if (!store.Delete(b.key).ok()) c.errors.fetch_add(1);
        } else {
          if (!store.DeleteModel(corpus.models[rng() % 2]).ok()) c.errors.fetch_add(1);
        }
        c.ops.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  for (auto& th : threads) th.join();
  stop = true;
  watcher.join();
}

TEST(StoreStressTest, MemoryTierMixedOpsUnderATightBudget) {
  Corpus corpus;
  for (EvictionPolicyKind policy : {EvictionPolicyKind::kLru, EvictionPolicyKind::kS3Fifo}) {
    MemoryTierOptions o;
    o.capacity_bytes = 256 << 10;  // ~15 of the 48 blocks
    o.num_shards = 4;
    o.eviction = policy;
    o.verify_on_get = true;
    auto tier = MemoryTier::Create(o).value();
    Counters c;
    RunWorkload(*tier, *tier, corpus, c, /*with_delete_model=*/true);
    EXPECT_EQ(c.wrong.load(), 0u);
    EXPECT_EQ(c.errors.load(), 0u);
    EXPECT_EQ(c.budget_violations.load(), 0u);
    EXPECT_GT(c.hits.load(), 20u);  // the workload really ran (TSan is ~20x slower)
    auto s = tier->Stats()[0];
    EXPECT_GT(s.evictions, 0u);
    EXPECT_EQ(s.corrupt_records, 0u);
    // Quiescent: the charge of the resident blocks is exactly Stats.bytes.
    uint64_t charged = 0, resident = 0;
    for (const TestBlock& b : corpus.blocks) {
      LookupResult r;
      tier->Lookup({&b.key, 1}, {&r, 1});
      if (r.present) charged += tier->ChargeFor(b.payload.size()), ++resident;
    }
    EXPECT_EQ(s.bytes, charged);
    EXPECT_EQ(s.blocks, resident);
    EXPECT_EQ(tier->arena().allocated_bytes() + resident * MemoryTier::kBlockMetadataBytes,
              charged);
    std::printf("memory tier %s: %llu ops, %llu hits, %llu evictions\n",
                std::string(EvictionPolicyName(policy)).c_str(),
                (unsigned long long)c.ops.load(), (unsigned long long)c.hits.load(),
                (unsigned long long)s.evictions);
  }
}

class TieredStressTest : public ::testing::TestWithParam<WritePolicy> {};

TEST_P(TieredStressTest, MixedOpsKeepTheTiersConsistent) {
  Corpus corpus;
  ScratchDir dir;
  TieredStoreOptions o;
  o.memory.capacity_bytes = 256 << 10;
  o.memory.num_shards = 4;
  o.rocks.path = dir.path();
  o.rocks.sync = SyncPolicy::kNone;  // the fsync cost is not what this test is about
  o.rocks.write_buffer_bytes = 4 << 20;
  o.write_policy = GetParam();
  o.write_back_interval = absl::Milliseconds(5);
  auto store = TieredStore::Open(o).value();
  Counters c;
  RunWorkload(*store, store->memory(), corpus, c, /*with_delete_model=*/false);
  EXPECT_EQ(c.wrong.load(), 0u);
  EXPECT_EQ(c.errors.load(), 0u);
  EXPECT_EQ(c.budget_violations.load(), 0u);
  EXPECT_GT(c.hits.load(), 20u);  // the workload really ran (TSan is ~20x slower)
  ASSERT_TRUE(store->Flush().ok());
  // Agreement: whatever memory holds, disk holds too (write-through always; write-back after
  // Flush), and every block present anywhere reads back intact from both tiers.
  for (const TestBlock& b : corpus.blocks) {
    LookupResult mem, disk;
    store->memory().Lookup({&b.key, 1}, {&mem, 1});
    store->disk().Lookup({&b.key, 1}, {&disk, 1});
    if (mem.present) {
      EXPECT_TRUE(disk.present) << "memory holds a block that disk lost";
    }
    if (disk.present) {
      auto got = store->disk().Get(b.key);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(std::equal(got->bytes.begin(), got->bytes.end(), b.payload.begin()));
    }
  }
  EXPECT_EQ(store->disk().Stats()[0].corrupt_records, 0u);
  std::printf("tiered: %llu ops, %llu hits\n", (unsigned long long)c.ops.load(),
              (unsigned long long)c.hits.load());
}

INSTANTIATE_TEST_SUITE_P(Policies, TieredStressTest,
                         ::testing::Values(WritePolicy::kWriteThrough, WritePolicy::kWriteBack));

}  // namespace
}  // namespace kvblock
