// Storage tier benchmarks, each next to the baseline it is judged against (same run, same
// machine, same bytes):
//   Memcpy/N vs MemoryTierGetRead/N      Get + copy-out of an N-byte payload vs a plain memcpy
//   MemoryTierLookup1000                 batch Lookup, 1,000 keys per call (items/s = keys/s)
//   FileWrite/N/sync vs RocksPut/N/sync  MB/s of Put vs appending the same bytes to a plain file,
//                                        sync 0 = fdatasync per write / RocksDB kPerWrite,
//                                        sync 1 = no fsync / kNone
//   FileRead/N vs RocksGet/N/cache       MB/s of Get vs pread of the same bytes (page cache warm),
//                                        cache 1 = blob cache on (the default), 0 = off (every
//                                        Get reads the blob file: the blob cache miss path)
//   HitRatio/policy/size                 request hit ratio of LRU (0) and S3-FIFO (1) on a RAG
//                                        trace (Zipf over passages + one-hit scans), cache = 1%,
//                                        5%, 10% of the corpus bytes (size 0, 1, 2)
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "benchmark/benchmark.h"
#include "cache/memory_tier.h"
#include "cache/rocks_tier.h"
#include "tests/cache/store_test_util.h"

namespace kvblock {
namespace {

using testing::MakeBlock;
using testing::MakeBlockOfSize;
using testing::RandomModel;
using testing::ScratchDir;
using testing::TestBlock;

const ModelFingerprint kModel = RandomModel(42);

void Memcpy(benchmark::State& state) {
  TestBlock b = MakeBlockOfSize(kModel, 1, state.range(0));
  std::vector<uint8_t> dst(b.payload.size());
  for (auto _ : state) {
    std::memcpy(dst.data(), b.payload.data(), b.payload.size());
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * b.payload.size());
}
BENCHMARK(Memcpy)->Arg(128 << 10)->Arg(1 << 20)->Arg(8 << 20);

void MemoryTierGetRead(benchmark::State& state) {
  MemoryTierOptions o;
  o.capacity_bytes = 256 << 20;
  auto tier = MemoryTier::Create(o).value();
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 8; ++i) blocks.push_back(MakeBlockOfSize(kModel, i, state.range(0)));
  for (auto& b : blocks) tier->Put(b.key, b.payload).IgnoreError();
  std::vector<uint8_t> dst(blocks[0].payload.size());
  size_t i = 0;
  for (auto _ : state) {
    absl::StatusOr<BlockBytes> got = tier->Get(blocks[i++ % blocks.size()].key);
    if (!got.ok()) state.SkipWithError("miss");
    std::memcpy(dst.data(), got->bytes.data(), got->bytes.size());
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * dst.size());
}
BENCHMARK(MemoryTierGetRead)->Arg(128 << 10)->Arg(1 << 20)->Arg(8 << 20);

void MemoryTierLookup1000(benchmark::State& state) {
  MemoryTierOptions o;
  o.capacity_bytes = 1 << 30;
  auto tier = MemoryTier::Create(o).value();
  std::vector<BlockKey> keys;
  for (int i = 0; i < 100000; ++i) {
    TestBlock b = MakeBlock(kModel, i, 1, 1, 1, 8);
    if (i % 2 == 0) tier->Put(b.key, b.payload).IgnoreError();  // half of the keys resident
    keys.push_back(b.key);
  }
  std::mt19937 rng(1);
  std::shuffle(keys.begin(), keys.end(), rng);
  std::vector<LookupResult> out(1000);
  size_t offset = 0;
  for (auto _ : state) {
    tier->Lookup(absl::MakeConstSpan(keys).subspan(offset, 1000), absl::MakeSpan(out));
    benchmark::DoNotOptimize(out.data());
    offset = (offset + 1000) % (keys.size() - 1000);
  }
  state.SetItemsProcessed(state.iterations() * 1000);
}
BENCHMARK(MemoryTierLookup1000);

// ---- RocksDB tier vs a plain file ----------------------------------------------------------

constexpr int kDiskBlocks = 48;

std::vector<TestBlock> DiskBlocks(uint64_t size) {
  std::vector<TestBlock> blocks;
  for (int i = 0; i < kDiskBlocks; ++i) blocks.push_back(MakeBlockOfSize(kModel, 1000 + i, size));
  return blocks;
}

void FileWrite(benchmark::State& state) {
  std::vector<TestBlock> blocks = DiskBlocks(state.range(0));
  const bool sync = state.range(1) == 0;
  ScratchDir dir;
  int fd = open(dir.Sub("blocks").c_str(), O_CREAT | O_WRONLY | O_APPEND, 0644);
  size_t i = 0, bytes = 0;
  for (auto _ : state) {
    const TestBlock& b = blocks[i++ % blocks.size()];
    if (write(fd, b.payload.data(), b.payload.size()) != (ssize_t)b.payload.size()) {
      state.SkipWithError("write failed");
    }
    if (sync) fdatasync(fd);
    bytes += b.payload.size();
  }
  close(fd);
  state.SetBytesProcessed(bytes);
}
BENCHMARK(FileWrite)->Args({128 << 10, 0})->Args({1 << 20, 0})->Args({128 << 10, 1})
    ->Args({1 << 20, 1})->Iterations(kDiskBlocks)->UseRealTime();

void RocksPut(benchmark::State& state) {
  std::vector<TestBlock> blocks = DiskBlocks(state.range(0));
  ScratchDir dir;
  RocksTierOptions o;
  o.path = dir.path();
  o.sync = state.range(1) == 0 ? SyncPolicy::kPerWrite : SyncPolicy::kNone;
  auto tier = RocksTier::Open(o).value();
  size_t i = 0, bytes = 0;
  for (auto _ : state) {
    const TestBlock& b = blocks[i++ % blocks.size()];  // Iterations == kDiskBlocks: all new keys
    if (!tier->Put(b.key, b.payload).ok()) state.SkipWithError("put failed");
    bytes += b.payload.size();
  }
  state.SetBytesProcessed(bytes);
}
BENCHMARK(RocksPut)->Args({128 << 10, 0})->Args({1 << 20, 0})->Args({128 << 10, 1})
    ->Args({1 << 20, 1})->Iterations(kDiskBlocks)->UseRealTime();

void FileRead(benchmark::State& state) {
  std::vector<TestBlock> blocks = DiskBlocks(state.range(0));
  ScratchDir dir;
  int fd = open(dir.Sub("blocks").c_str(), O_CREAT | O_RDWR, 0644);
  std::vector<uint64_t> offsets;
  uint64_t at = 0;
  for (auto& b : blocks) {
    offsets.push_back(at);
    at += pwrite(fd, b.payload.data(), b.payload.size(), at);
  }
  fdatasync(fd);
  std::vector<uint8_t> dst(blocks[0].payload.size());
  size_t i = 0, bytes = 0;
  for (auto _ : state) {
    size_t k = i++ % blocks.size();
    if (pread(fd, dst.data(), dst.size(), offsets[k]) != (ssize_t)dst.size()) {
      state.SkipWithError("read failed");
    }
    benchmark::DoNotOptimize(dst.data());
    bytes += dst.size();
  }
  close(fd);
  state.SetBytesProcessed(bytes);
}
BENCHMARK(FileRead)->Arg(128 << 10)->Arg(1 << 20);

void RocksGet(benchmark::State& state) {
  std::vector<TestBlock> blocks = DiskBlocks(state.range(0));
  ScratchDir dir;
  RocksTierOptions o;
  o.path = dir.path();
  o.sync = SyncPolicy::kNone;
  if (state.range(1) == 0) o.blob_cache_bytes = 0;
  auto tier = RocksTier::Open(o).value();
  for (auto& b : blocks) tier->Put(b.key, b.payload).IgnoreError();
  tier->FlushMemtables().IgnoreError();  // read from blob files, as after a restart
  size_t i = 0, bytes = 0;
  for (auto _ : state) {
    absl::StatusOr<BlockBytes> got = tier->Get(blocks[i++ % blocks.size()].key);
    if (!got.ok()) state.SkipWithError("miss");
    benchmark::DoNotOptimize(got->bytes.data());
    bytes += got->bytes.size();
  }
  state.SetBytesProcessed(bytes);
}
BENCHMARK(RocksGet)->ArgsProduct({{128 << 10, 1 << 20}, {1, 0}});

// ---- Eviction policies on a RAG trace ------------------------------------------------------

// Requests: 80% Zipf(0.9) over 20,000 corpus passages (popular documents retrieved again and
// again), 20% one-hit passages arriving as scans of 200 (bulk indexing, evaluation sweeps).
// Passage sizes vary 1-32 tokens (128 B per token: 0.2-4 KiB payloads).
struct Trace {
  std::vector<uint64_t> requests;  // passage id; ids >= kCorpus are one-hit scan passages
  uint64_t corpus_bytes = 0;
};
constexpr uint64_t kCorpus = 20000;
constexpr size_t kRequests = 300000;

uint32_t Tokens(uint64_t id) { return 1 + static_cast<uint32_t>((id * 2654435761u) % 32); }

TestBlock Passage(uint64_t id) { return MakeBlock(kModel, id, Tokens(id), 1, 2, 16); }

const Trace& RagTrace() {
  static const Trace trace = [] {
    Trace t;
    std::mt19937_64 rng(7);
    std::vector<double> cdf(kCorpus);
    double sum = 0;
    for (uint64_t i = 0; i < kCorpus; ++i) cdf[i] = (sum += 1.0 / std::pow(i + 1, 0.9));
    std::vector<uint64_t> perm(kCorpus);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);  // popularity unrelated to id/size
    std::uniform_real_distribution<double> u(0, sum);
    uint64_t next_scan = kCorpus;
    while (t.requests.size() < kRequests) {
      if (rng() % 1000 < 1) {  // ~one scan per 1,000 requests, 200 passages: 20% of traffic
        for (int i = 0; i < 200; ++i) t.requests.push_back(next_scan++);
        continue;
      }
      uint64_t rank = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
      t.requests.push_back(perm[std::min<uint64_t>(rank, kCorpus - 1)]);
    }
    for (uint64_t i = 0; i < kCorpus; ++i) t.corpus_bytes += Passage(i).payload.size();
    return t;
  }();
  return trace;
}

void HitRatio(benchmark::State& state) {
  const Trace& trace = RagTrace();
  const double fractions[] = {0.01, 0.05, 0.10};
  MemoryTierOptions o;
  o.eviction = state.range(0) == 0 ? EvictionPolicyKind::kLru : EvictionPolicyKind::kS3Fifo;
  o.num_shards = 1;  // one global order: compares the policies, not the sharding
  o.capacity_bytes = static_cast<uint64_t>(trace.corpus_bytes * fractions[state.range(1)]);
  static std::vector<TestBlock> corpus = [] {
    std::vector<TestBlock> v;
    for (uint64_t i = 0; i < kCorpus; ++i) v.push_back(Passage(i));
    return v;
  }();
  uint64_t hits = 0, requests = 0;
  for (auto _ : state) {
    auto tier = MemoryTier::Create(o).value();
    hits = requests = 0;
    for (uint64_t id : trace.requests) {
      TestBlock scan;
      if (id >= kCorpus) scan = Passage(id);
      const TestBlock& b = id < kCorpus ? corpus[id] : scan;
      ++requests;
      if (tier->Get(b.key).ok()) {
        ++hits;
      } else {
        tier->Put(b.key, b.payload).IgnoreError();
      }
    }
  }
  state.counters["hit_ratio"] = static_cast<double>(hits) / requests;
  state.counters["cache_pct"] = fractions[state.range(1)] * 100;
}
BENCHMARK(HitRatio)->ArgsProduct({{0, 1}, {0, 1, 2}})->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvblock

BENCHMARK_MAIN();
