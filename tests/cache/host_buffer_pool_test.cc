// HostBufferPool over a counting allocator (the default one underneath): a released slab comes
// back for the next Take, best fit among idle slabs within the waste bound, the capacity bound
// (RESOURCE_EXHAUSTED while taken slabs fill it, success once one is released), idle slabs
// freed to make room, a failing allocator, buffers that outlive the pool, options validation,
// and a bounded multi-threaded take/write/check/release run (labelled tsan: ThreadSanitizer
// build in scripts/test.sh).
#include "cache/host_buffer_pool.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kvblock {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// The default allocator with counts of live and total slabs; `fail` makes allocate fail.
struct CountingAllocator {
  std::atomic<int64_t> live{0}, allocated{0}, freed{0};
  std::atomic<bool> fail{false};

  HostBufferAllocator Get() {
    const HostBufferAllocator base = DefaultHostBufferAllocator();
    return {
        .allocate = [this, base](uint64_t bytes) -> absl::StatusOr<void*> {
          if (fail.load()) return absl::ResourceExhaustedError("out of test memory");
          absl::StatusOr<void*> p = base.allocate(bytes);
          if (p.ok()) {
            ++live;
            ++allocated;
          }
          return p;
        },
        .deallocate =
            [this, base](void* p) {
              --live;
              ++freed;
              return base.deallocate(p);
            },
    };
  }
};

std::unique_ptr<HostBufferPool> MakePool(CountingAllocator& alloc, uint64_t capacity) {
  HostBufferPoolOptions o;
  o.capacity_bytes = capacity;
  auto pool = HostBufferPool::Create(o, alloc.Get());
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? *std::move(pool) : nullptr;
}

HostBuffer TakeOk(HostBufferPool& pool, uint64_t bytes) {
  absl::StatusOr<HostBuffer> b = pool.Take(bytes);
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return {};
  EXPECT_EQ(b->bytes.size(), bytes);
  EXPECT_NE(b->owner, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->bytes.data()) % 4096, 0u);
  return *std::move(b);
}

TEST(HostBufferPool, AReleasedSlabComesBackForTheNextTake) {
  CountingAllocator alloc;
  auto pool = MakePool(alloc, 64 * kMiB);
  HostBuffer a = TakeOk(*pool, 3 * kMiB + 17);
  std::memset(a.bytes.data(), 0x5a, a.bytes.size());  // the whole buffer is writable
  const uint8_t* first = a.bytes.data();
  HostBufferPoolStats st = pool->Stats();
  EXPECT_EQ(st.slabs, 1u);
  EXPECT_EQ(st.bytes_held, 4 * kMiB);  // rounded up to 2 MiB
  EXPECT_EQ(st.bytes_taken, 4 * kMiB);
  EXPECT_EQ(st.idle_slabs, 0u);
  // A copy of the owner keeps the slab taken; the last one gives it back.
  std::shared_ptr<const void> copy = a.owner;
  a = {};
  EXPECT_EQ(pool->Stats().idle_slabs, 0u);
  copy.reset();
  st = pool->Stats();
  EXPECT_EQ(st.idle_slabs, 1u);
  EXPECT_EQ(st.bytes_taken, 0u);
  HostBuffer b = TakeOk(*pool, 3 * kMiB);
  EXPECT_EQ(b.bytes.data(), first);
  st = pool->Stats();
  EXPECT_EQ(st.takes, 2u);
  EXPECT_EQ(st.reuses, 1u);
  EXPECT_EQ(st.allocations, 1u);
  EXPECT_EQ(alloc.allocated.load(), 1);
  EXPECT_TRUE(absl::IsInvalidArgument(pool->Take(0).status()));
}

TEST(HostBufferPool, BestFitAmongIdleSlabsWithinTheWasteBound) {
  CountingAllocator alloc;
  auto pool = MakePool(alloc, 64 * kMiB);
  HostBuffer s2 = TakeOk(*pool, 2 * kMiB), s4 = TakeOk(*pool, 4 * kMiB),
             s8 = TakeOk(*pool, 8 * kMiB);
  const uint8_t* p2 = s2.bytes.data();
  const uint8_t* p4 = s4.bytes.data();
  const uint8_t* p8 = s8.bytes.data();
  s2 = {};
  s4 = {};
  s8 = {};
  ASSERT_EQ(pool->Stats().idle_slabs, 3u);
  // 3 MiB: the 4 MiB slab (the smallest that holds it), not the 8 MiB one.
  HostBuffer a = TakeOk(*pool, 3 * kMiB);
  EXPECT_EQ(a.bytes.data(), p4);
  // 64 KiB: the 2 MiB slab (a new one would be 2 MiB too).
  HostBuffer b = TakeOk(*pool, 64 << 10);
  EXPECT_EQ(b.bytes.data(), p2);
  // 1 MiB: only the 8 MiB slab is idle, beyond 2x the 2 MiB a new slab takes: a new slab.
  HostBuffer c = TakeOk(*pool, 1 * kMiB);
  EXPECT_NE(c.bytes.data(), p8);
  EXPECT_EQ(pool->Stats().idle_slabs, 1u);
  // 3 MiB (a new slab would be 4 MiB): the 8 MiB slab is within 2x.
  HostBuffer d = TakeOk(*pool, 3 * kMiB);
  EXPECT_EQ(d.bytes.data(), p8);
  const HostBufferPoolStats st = pool->Stats();
  EXPECT_EQ(st.reuses, 3u);
  EXPECT_EQ(st.allocations, 4u);
  EXPECT_EQ(st.slabs, 4u);
  EXPECT_EQ(st.bytes_held, (2 + 4 + 8 + 2) * kMiB);
}

TEST(HostBufferPool, CapacityExhaustedUntilATakenSlabIsReleased) {
  CountingAllocator alloc;
  auto pool = MakePool(alloc, 8 * kMiB);
  HostBuffer a = TakeOk(*pool, 6 * kMiB);
  absl::StatusOr<HostBuffer> no = pool->Take(4 * kMiB);  // 6 + 4 > 8, nothing idle to free
  EXPECT_TRUE(absl::IsResourceExhausted(no.status())) << no.status();
  EXPECT_TRUE(absl::IsResourceExhausted(pool->Take(9 * kMiB).status()));  // beyond capacity
  EXPECT_EQ(pool->Stats().exhausted, 2u);
  HostBuffer small = TakeOk(*pool, 2 * kMiB);  // 6 + 2 fits exactly
  EXPECT_EQ(pool->Stats().bytes_held, 8 * kMiB);
  small = {};
  a = {};
  // The 6 MiB slab is idle now and serves 4 MiB (within 2x).
  HostBuffer b = TakeOk(*pool, 4 * kMiB);
  EXPECT_EQ(pool->Stats().reuses, 1u);
  EXPECT_EQ(alloc.allocated.load(), 2);
  EXPECT_LE(pool->Stats().bytes_held, 8 * kMiB);
}

TEST(HostBufferPool, IdleSlabsAreFreedLargestFirstToMakeRoom) {
  CountingAllocator alloc;
  auto pool = MakePool(alloc, 16 * kMiB);
  HostBuffer a = TakeOk(*pool, 2 * kMiB), b = TakeOk(*pool, 4 * kMiB), c = TakeOk(*pool, 8 * kMiB);
  const uint8_t* pa = a.bytes.data();
  a = {};
  b = {};
  c = {};
  ASSERT_EQ(pool->Stats().bytes_held, 14 * kMiB);
  // 12 MiB needs a new slab (no idle slab holds it): 14 + 12 > 16, so the 8 MiB and then the
  // 4 MiB slab go (largest first), the 2 MiB one stays.
  HostBuffer big = TakeOk(*pool, 12 * kMiB);
  HostBufferPoolStats st = pool->Stats();
  EXPECT_EQ(st.evictions, 2u);
  EXPECT_EQ(st.slabs, 2u);
  EXPECT_EQ(st.idle_slabs, 1u);
  EXPECT_EQ(st.bytes_held, 14 * kMiB);
  EXPECT_EQ(alloc.freed.load(), 2);
  EXPECT_EQ(alloc.live.load(), 2);
  HostBuffer again = TakeOk(*pool, 2 * kMiB);
  EXPECT_EQ(again.bytes.data(), pa);
  // No room and nothing idle: RESOURCE_EXHAUSTED, nothing freed.
  EXPECT_TRUE(absl::IsResourceExhausted(pool->Take(4 * kMiB).status()));
  EXPECT_EQ(alloc.freed.load(), 2);
}

TEST(HostBufferPool, AFailingAllocatorIsResourceExhaustedAndReturnsTheReservation) {
  CountingAllocator alloc;
  auto pool = MakePool(alloc, 8 * kMiB);
  alloc.fail = true;
  absl::StatusOr<HostBuffer> no = pool->Take(8 * kMiB);
  ASSERT_TRUE(absl::IsResourceExhausted(no.status())) << no.status();
  EXPECT_NE(no.status().message().find("out of test memory"), absl::string_view::npos);
  HostBufferPoolStats st = pool->Stats();
  EXPECT_EQ(st.bytes_held, 0u);
  EXPECT_EQ(st.slabs, 0u);
  alloc.fail = false;
  HostBuffer b = TakeOk(*pool, 8 * kMiB);  // the whole capacity is free again
  EXPECT_EQ(pool->Stats().bytes_held, 8 * kMiB);
}

TEST(HostBufferPool, BuffersOutliveThePool) {
  CountingAllocator alloc;
  std::mt19937_64 rng(std::random_device{}());
  HostBuffer kept, idle;
  {
    auto pool = MakePool(alloc, 16 * kMiB);
    kept = TakeOk(*pool, 5 * kMiB);
    idle = TakeOk(*pool, 1 * kMiB);
    idle = {};
    EXPECT_EQ(alloc.live.load(), 2);
  }
  // The idle slab went with the pool; the taken one stays valid until its owner goes.
  EXPECT_EQ(alloc.live.load(), 1);
  std::vector<uint8_t> pattern(kept.bytes.size());
  for (auto& x : pattern) x = static_cast<uint8_t>(rng());
  std::memcpy(kept.bytes.data(), pattern.data(), pattern.size());
  EXPECT_EQ(std::memcmp(kept.bytes.data(), pattern.data(), pattern.size()), 0);
  kept = {};
  EXPECT_EQ(alloc.live.load(), 0);
  EXPECT_EQ(alloc.allocated.load(), alloc.freed.load());
}

TEST(HostBufferPool, OptionsAreValidated) {
  HostBufferPoolOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.capacity_bytes = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(o.Validate()));
  o = {};
  o.slab_rounding_bytes = 3 << 20;
  EXPECT_TRUE(absl::IsInvalidArgument(o.Validate()));
  o.slab_rounding_bytes = 2048;
  EXPECT_TRUE(absl::IsInvalidArgument(o.Validate()));
  o = {};
  o.max_waste_ratio = 0.5;
  EXPECT_TRUE(absl::IsInvalidArgument(HostBufferPool::Create(o).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(HostBufferPool::Create({}, HostBufferAllocator{}).status()));
}

TEST(HostBufferPool, ConcurrentTakesAndReleasesNeverShareASlab) {
  CountingAllocator alloc;
  // Room for about half of what the threads would hold at once: some Takes are refused.
  auto pool = MakePool(alloc, 24 * kMiB);
  constexpr int kThreads = 4, kRounds = 300;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::atomic<int> corrupt{0}, exhausted{0}, taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(std::random_device{}() + t);
      std::vector<std::pair<HostBuffer, uint8_t>> held;  // with the stamp written into it
      for (int r = 0; r < kRounds && std::chrono::steady_clock::now() < deadline; ++r) {
        const uint64_t bytes = 1 + rng() % (3 * kMiB);
        absl::StatusOr<HostBuffer> b = pool->Take(bytes);
        if (!b.ok()) {
          if (!absl::IsResourceExhausted(b.status())) ++corrupt;
          ++exhausted;
        } else {
          ++taken;
          // Stamp the first and last 4 KiB with a tag no other thread uses.
          const uint8_t tag = static_cast<uint8_t>(t * 64 + r % 64);
          const size_t n = std::min<size_t>(4096, bytes);
          std::memset(b->bytes.data(), tag, n);
          std::memset(b->bytes.data() + bytes - n, tag, n);
          held.emplace_back(*std::move(b), tag);
        }
        // Hold up to three buffers; release a random one after checking its stamp.
        if (held.size() > 3 || (!held.empty() && rng() % 3 == 0)) {
          const size_t i = rng() % held.size();
          const absl::Span<uint8_t> bytes_i = held[i].first.bytes;
          const uint8_t tag = held[i].second;
          const size_t n = std::min<size_t>(4096, bytes_i.size());
          for (size_t k = 0; k < n; ++k) {
            if (bytes_i[k] != tag || bytes_i[bytes_i.size() - 1 - k] != tag) {
              ++corrupt;
              break;
            }
          }
          held.erase(held.begin() + i);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(corrupt.load(), 0);
  EXPECT_GT(taken.load(), 0);
  const HostBufferPoolStats st = pool->Stats();
  EXPECT_EQ(st.bytes_taken, 0u);
  EXPECT_LE(st.bytes_held, 24 * kMiB);
  EXPECT_EQ(st.takes, static_cast<uint64_t>(taken.load()));
  EXPECT_EQ(st.exhausted, static_cast<uint64_t>(exhausted.load()));
  EXPECT_EQ(st.slabs, st.idle_slabs);
  EXPECT_EQ(static_cast<int64_t>(st.slabs), alloc.live.load());
  pool.reset();
  EXPECT_EQ(alloc.live.load(), 0);
}

}  // namespace
}  // namespace kvblock
