// Tests of worker/indexer (block splitting, corpus parsing, the Indexer with its manifest,
// resume, shards, bad lines, an unreachable cluster) and of LayeredStore (worker/service/runtime).
// A small random Llama (worker/demo/random_model) keeps every run to a few seconds.
#include "worker/indexer/indexer.h"

#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "cache/memory_tier.h"
#include "cache/tiered_store.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cache/store_test_util.h"
#include "tests/worker/fixture_util.h"
#include "worker/demo/random_model.h"
#include "worker/indexer/block_splitter.h"
#include "worker/service/runtime.h"
#include "worker/tokenizer/byte_tokenizer.h"

namespace kvblock {
namespace {

using testing::TempDir;

std::string RandomText(std::mt19937& rng, int words) {
  static const char* kDelims[] = {"\n\n", "---", "===", "\n\t"};
  std::string s;
  for (int w = 0; w < words; ++w) {
    const int len = 1 + rng() % 8;
    for (int i = 0; i < len; ++i) s.push_back(static_cast<char>('a' + rng() % 26));
    s += (rng() % 9 == 0) ? kDelims[rng() % 4] : " ";
  }
  return s;
}

TEST(BlockSplitterTest, SegmentsConcatenateToTheText) {
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  for (int trial = 0; trial < 50; ++trial) {
    const std::string text = RandomText(rng, 5 + rng() % 80);
    std::vector<std::string_view> segs = SplitAtDelimiters(text);
    std::string joined;
    for (std::string_view s : segs) {
      EXPECT_FALSE(s.empty());
      joined += std::string(s);
    }
    EXPECT_EQ(joined, text);
  }
  std::vector<std::string_view> segs = SplitAtDelimiters("a\n\nb---c===d\n\te");
  ASSERT_EQ(segs.size(), 5u);
  EXPECT_EQ(segs[0], "a\n\n");
  EXPECT_EQ(segs[1], "b---");
  EXPECT_EQ(segs[4], "e");
}

TEST(BlockSplitterTest, BlocksRespectTheLimitAndKeepEveryToken) {
  auto tok = ByteTokenizer::Create({});
  ASSERT_TRUE(tok.ok());
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed() + 1);
  for (int trial = 0; trial < 50; ++trial) {
    const std::string text = RandomText(rng, 10 + rng() % 200);
    const int64_t max = 8 + rng() % 100;
    auto blocks = SplitIntoBlocks(**tok, text, max);
    ASSERT_TRUE(blocks.ok());
    std::vector<int32_t> all;
    for (const auto& b : *blocks) {
      EXPECT_FALSE(b.empty());
      EXPECT_LE(static_cast<int64_t>(b.size()), max);
      all.insert(all.end(), b.begin(), b.end());
    }
    EXPECT_EQ(all, *(*tok)->Encode(text));
    // Greedy packing: two neighbours never fit together in one block, except when the second
    // is the head of a segment cut into pieces.
    if (blocks->size() > 1) {
      EXPECT_GT(static_cast<int64_t>((*blocks)[0].size() + (*blocks)[1].size()), max / 2);
    }
  }
  EXPECT_FALSE(SplitIntoBlocks(**tok, "abc", 0).ok());
}

TEST(CorpusLineTest, GoodAndBadLines) {
  auto p = ParseCorpusLine(R"({"id": "a", "title": "T", "text": "body"})", 3);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->id, "a");
  EXPECT_EQ(p->text, "T\nbody");
  EXPECT_EQ(p->line, 3);
  p = ParseCorpusLine(R"({"id": 7, "token_ids": [1, 2, 3]})", 1);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->id, "7");
  EXPECT_EQ(p->token_ids, (std::vector<int32_t>{1, 2, 3}));
  for (const char* bad : {"{not json", "[1,2]", R"({"text": "x"})", R"({"id": "a"})",
                          R"({"id": "a", "text": ""})", R"({"id": "a", "text": 5})",
                          R"({"id": "a", "token_ids": []})", R"({"id": "a", "token_ids": [-1]})"}) {
    EXPECT_EQ(ParseCorpusLine(bad, 1).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

class IndexerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RandomLlamaOptions m;
    m.hidden_size = 32;
    m.intermediate_size = 64;
    m.num_layers = 2;
    m.num_heads = 4;
    m.num_kv_heads = 2;
    m.seed = ::testing::UnitTest::GetInstance()->random_seed();
    ASSERT_TRUE(WriteRandomLlama(dir_ / "model", m).ok());
    rng_.seed(m.seed);
  }

  std::unique_ptr<Runtime> Open(const std::string& cache = "cache") {
    RuntimeOptions ro;
    ro.model_dir = dir_ / "model";
    ro.cache_dir = dir_ / cache;
    ro.memory_bytes = 32 << 20;
    auto rt = OpenRuntime(ro);
    EXPECT_TRUE(rt.ok()) << rt.status();
    return rt.ok() ? std::move(*rt) : nullptr;
  }

  // An Indexer over the runtime's engine (through a LocalBlockEncoder the fixture keeps).
  Indexer IndexerFor(Runtime& rt, const IndexerOptions& o) {
    encoders_.push_back(std::make_unique<LocalBlockEncoder>(rt.engine.get()));
    return Indexer(encoders_.back().get(), rt.tokenizer.get(), rt.store, o);
  }

  // Writes `n` random passages (some with titles, some as token ids) plus the given bad lines at
  // the given 1-based line numbers; returns the texts of the good lines by line number.
  std::string WriteCorpus(int n, const std::vector<std::pair<int, std::string>>& bad = {}) {
    const std::string path = dir_ / "corpus.jsonl";
    std::ofstream out(path);
    int line = 0, good = 0;
    while (good < n) {
      ++line;
      bool wrote_bad = false;
      for (const auto& [l, text] : bad) {
        if (l == line) {
          out << text << "\n";
          wrote_bad = true;
        }
      }
      if (wrote_bad) continue;
      nlohmann::json j = {{"id", absl::StrCat("p", good)}};
      if (good % 7 == 3) {
        std::vector<int32_t> ids(5 + rng_() % 40);
        for (int32_t& t : ids) t = rng_() % 256;
        j["token_ids"] = ids;
      } else {
        j["text"] = RandomText(rng_, 5 + rng_() % 60);
        if (good % 2 == 0) j["title"] = RandomText(rng_, 2);
      }
      out << j.dump() << "\n";
      ++good;
    }
    return path;
  }

  IndexerOptions Options() {
    IndexerOptions o;
    o.max_block_tokens = 64;
    o.batch_tokens = 200;
    o.manifest_path = dir_ / "manifest.json";
    return o;
  }

  TempDir dir_;
  std::mt19937 rng_;
  std::vector<std::unique_ptr<LocalBlockEncoder>> encoders_;
};

TEST_F(IndexerTest, IndexesEveryBlockAndSkipsBadLines) {
  const std::string corpus = WriteCorpus(40, {{2, "{oops"},
                                              {9, R"({"id": "x", "text": ""})"},
                                              {15, R"({"id": 1})"},
                                              {20, R"({"id": "big", "token_ids": [999999]})"}});
  auto rt = Open();
  Indexer indexer = IndexerFor(*rt, Options());
  int progress_calls = 0;
  auto report = indexer.Run(corpus, [&](const IndexProgress& p) {
    ++progress_calls;
    EXPECT_LE(p.corpus_bytes_read, p.corpus_bytes_total);
  });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->complete);
  EXPECT_EQ(report->passages, 40);
  EXPECT_EQ(report->lines, 44);
  EXPECT_EQ(report->skipped_lines, 4);
  ASSERT_EQ(report->bad_lines.size(), 4u);
  EXPECT_EQ(report->bad_lines[0].line, 2);
  EXPECT_EQ(report->bad_lines[1].line, 9);
  EXPECT_EQ(report->bad_lines[2].line, 15);
  EXPECT_EQ(report->bad_lines[3].line, 20);
  EXPECT_GE(report->blocks, 40);
  EXPECT_EQ(report->blocks_encoded + report->blocks_present, report->blocks);
  EXPECT_GT(report->bytes_written, 0);
  EXPECT_EQ(progress_calls, report->batches);
  EXPECT_GT(report->batches, 1);

  // Every block of every good line is in the store, with the payload the engine encodes.
  std::ifstream in(corpus);
  std::string line;
  int64_t n = 0, checked = 0;
  while (std::getline(in, line)) {
    auto p = ParseCorpusLine(line, ++n);
    if (!p.ok() || (p->has_token_ids && p->token_ids[0] > 300)) continue;
    auto blocks = p->has_token_ids ? SplitTokenIds(p->token_ids, 64)
                                   : *SplitIntoBlocks(*rt->tokenizer, p->text, 64);
    for (const auto& b : blocks) {
      auto stored = rt->store->Get(rt->engine->KeyOf(b));
      ASSERT_TRUE(stored.ok()) << "line " << n << ": " << stored.status();
      auto expect = rt->engine->EncodeBlock(b);
      ASSERT_TRUE(expect.ok());
      ASSERT_EQ(std::vector<uint8_t>(stored->bytes.begin(), stored->bytes.end()), *expect);
      ++checked;
    }
  }
  EXPECT_EQ(checked, report->blocks);
}

TEST_F(IndexerTest, StrictStopsAtTheFirstBadLine) {
  const std::string corpus = WriteCorpus(10, {{6, "not json"}});
  auto rt = Open();
  IndexerOptions o = Options();
  o.strict = true;
  Indexer indexer = IndexerFor(*rt, o);
  auto report = indexer.Run(corpus);
  ASSERT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("corpus.jsonl:6:"), std::string::npos)
      << report.status();
}

TEST_F(IndexerTest, LocalEncoderHandsOverEveryPayloadInOrderInBoundedRuns) {
  auto rt = Open();
  std::vector<std::vector<int32_t>> blocks;
  for (int i = 0; i < 9; ++i) {
    std::vector<int32_t> b(1 + rng_() % 50);
    for (int32_t& t : b) t = static_cast<int32_t>(rng_() % 256);
    blocks.push_back(std::move(b));
  }
  // Every payload, in order, is what the engine encodes for the block alone.
  LocalBlockEncoder encoder(rt->engine.get());
  std::vector<size_t> order;
  absl::Status s = encoder.Encode(blocks, [&](size_t i, std::vector<uint8_t> payload) {
    order.push_back(i);
    absl::StatusOr<std::vector<uint8_t>> alone = rt->engine->EncodeBlock(blocks[i]);
    EXPECT_TRUE(alone.ok());
    EXPECT_EQ(payload, *alone) << "block " << i;
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
  // The sink's error stops the encoding and is returned.
  int calls = 0;
  s = encoder.Encode(blocks, [&](size_t, std::vector<uint8_t>) {
    ++calls;
    return absl::UnavailableError("store down");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(calls, 1);
}

TEST_F(IndexerTest, ResumeContinuesAndRerunIsIdempotent) {
  const std::string corpus = WriteCorpus(60);
  // Reference: the whole corpus in one run, in its own store.
  int64_t all_blocks = 0, all_encoded = 0;
  {
    auto rt = Open("reference");
    IndexerOptions o = Options();
    o.manifest_path = dir_ / "reference-manifest.json";
    auto r = IndexerFor(*rt, o).Run(corpus);
    ASSERT_TRUE(r.ok()) << r.status();
    all_blocks = r->blocks;
    all_encoded = r->blocks_encoded;
  }
  auto rt = Open();
  IndexerOptions o = Options();
  o.max_batches = 2;
  auto first = IndexerFor(*rt, o).Run(corpus);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->complete);
  EXPECT_EQ(first->batches, 2);
  EXPECT_LT(first->blocks, all_blocks);
  o.max_batches = 0;
  o.resume = true;
  auto second = IndexerFor(*rt, o).Run(corpus);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->complete);
  EXPECT_GT(second->resumed_at_line, 1);
  EXPECT_EQ(second->blocks, all_blocks);  // totals carried over from the manifest
  EXPECT_EQ(first->blocks_encoded + second->blocks_encoded, all_encoded);
  EXPECT_EQ(second->passages, 60);
  // Resuming a complete manifest does nothing; a fresh run finds every block present.
  auto third = IndexerFor(*rt, o).Run(corpus);
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE(third->complete);
  EXPECT_EQ(third->blocks_encoded, 0);
  o.resume = false;
  auto fourth = IndexerFor(*rt, o).Run(corpus);
  ASSERT_TRUE(fourth.ok());
  EXPECT_EQ(fourth->blocks_encoded, 0);
  EXPECT_EQ(fourth->blocks_present, all_blocks);
  // A manifest of other options is refused under --resume.
  o.resume = true;
  o.max_block_tokens = 32;
  auto mismatch = IndexerFor(*rt, o).Run(corpus);
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(IndexerTest, ShardsPartitionTheCorpus) {
  const std::string corpus = WriteCorpus(31);
  int64_t passages = 0, blocks = 0;
  auto rt = Open();
  for (int32_t shard = 0; shard < 3; ++shard) {
    IndexerOptions o = Options();
    o.shard = shard;
    o.num_shards = 3;
    o.manifest_path = dir_ / absl::StrCat("m", shard, ".json");
    auto r = IndexerFor(*rt, o).Run(corpus);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->passages, shard == 0 ? 11 : 10);
    passages += r->passages;
    blocks += r->blocks;
  }
  EXPECT_EQ(passages, 31);
  IndexerOptions o = Options();
  o.manifest_path = dir_ / "all.json";
  auto all = IndexerFor(*rt, o).Run(corpus);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->blocks, blocks);
  EXPECT_EQ(all->blocks_encoded, 0);  // the three shards wrote everything
}

TEST_F(IndexerTest, UnreachableClusterStopsWithNothingRecorded) {
  const std::string corpus = WriteCorpus(10);
  RuntimeOptions ro;
  ro.model_dir = dir_ / "model";
  ro.local_tier = false;
  ro.cluster.members = {"127.0.0.1:1"};  // nothing listens on port 1
  ro.cluster.replication = 1;
  ro.cluster.rpc_timeout = absl::Milliseconds(300);
  ro.cluster.max_attempts = 1;
  ro.cluster.use_data_plane = false;
  auto rt = OpenRuntime(ro);
  ASSERT_TRUE(rt.ok()) << rt.status();
  EXPECT_EQ(CheckClusterReachable(*(*rt)->cluster).code(), absl::StatusCode::kUnavailable);
  IndexerOptions o = Options();
  auto r = IndexerFor(**rt, o).Run(corpus);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_FALSE(std::filesystem::exists(o.manifest_path));
}

TEST(LayeredStoreTest, WritesBackInTheBackgroundAndPromotesRemoteHits) {
  MemoryTierOptions mo;
  mo.capacity_bytes = 16 << 20;
  auto local = MemoryTier::Create(mo);
  auto remote = MemoryTier::Create(mo);
  ASSERT_TRUE(local.ok() && remote.ok());
  TempDir dir;
  RandomLlamaOptions m;
  m.hidden_size = 32;
  m.intermediate_size = 64;
  m.num_layers = 2;
  m.seed = ::testing::UnitTest::GetInstance()->random_seed();
  ASSERT_TRUE(WriteRandomLlama(dir / "model", m).ok());
  RuntimeOptions ro;
  ro.model_dir = dir / "model";
  ro.cache_dir = dir / "cache";
  auto rt = OpenRuntime(ro);
  ASSERT_TRUE(rt.ok());
  std::mt19937 rng(m.seed);
  std::vector<std::vector<int32_t>> blocks(6);
  for (auto& b : blocks) {
    b.resize(3 + rng() % 20);
    for (int32_t& t : b) t = rng() % 256;
  }
  LayeredStore layered(local->get(), remote->get());
  for (size_t i = 0; i < 3; ++i) {
    auto p = (*rt)->engine->EncodeBlock(blocks[i]);
    ASSERT_TRUE(layered.Put((*rt)->engine->KeyOf(blocks[i]), *p).ok());
  }
  layered.WaitForWriteBacks();
  EXPECT_EQ(layered.remote_writes(), 3);
  EXPECT_EQ(layered.remote_write_errors(), 0);
  for (size_t i = 3; i < 6; ++i) {  // only in the remote
    auto p = (*rt)->engine->EncodeBlock(blocks[i]);
    ASSERT_TRUE((*remote)->Put((*rt)->engine->KeyOf(blocks[i]), *p).ok());
  }
  std::vector<BlockKey> keys;
  for (const auto& b : blocks) keys.push_back((*rt)->engine->KeyOf(b));
  std::vector<LookupResult> found(keys.size());
  layered.Lookup(keys, absl::MakeSpan(found));
  for (const auto& f : found) EXPECT_TRUE(f.present);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_TRUE((*remote)->Get(keys[i]).ok()) << i;
    auto got = layered.Get(keys[i]);
    ASSERT_TRUE(got.ok());
  }
  layered.WaitForWriteBacks();  // the remote hits' copies into the local tier
  for (size_t i = 0; i < 6; ++i) EXPECT_TRUE((*local)->Get(keys[i]).ok()) << "promoted " << i;
  EXPECT_EQ(layered.skipped_promotions(), 0);
  BlockKey absent = keys[0];
  absent.lo ^= 1;
  EXPECT_EQ(layered.Get(absent).status().code(), absl::StatusCode::kNotFound);

  // A remote hit that lies in this host's memory already (a co-located node's arena read in
  // place: marked verified) is not copied into the local tier.
  class InPlaceRemote final : public testing::ForwardingStore {
   public:
    using ForwardingStore::ForwardingStore;
    absl::StatusOr<BlockBytes> Get(const BlockKey& key) override {
      absl::StatusOr<BlockBytes> got = inner_->Get(key);
      if (got.ok()) got->verified = true;
      return got;
    }
  };
  auto fresh_local = MemoryTier::Create(mo);
  ASSERT_TRUE(fresh_local.ok());
  InPlaceRemote in_place(remote->get());
  LayeredStore shared(fresh_local->get(), &in_place);
  auto got = shared.Get(keys[4]);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->verified);
  shared.WaitForWriteBacks();
  EXPECT_EQ((*fresh_local)->Get(keys[4]).status().code(), absl::StatusCode::kNotFound);

  // The copy into the local tier happens after the answer: a local tier whose Put waits (up to
  // 10 s) for the Get to have returned still gets the block; with one promotion allowed in
  // flight, a second remote hit meanwhile is not copied.
  class GatedLocal final : public testing::ForwardingStore {
   public:
    using ForwardingStore::ForwardingStore;
    absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override {
      if (!answered.WaitForNotificationWithTimeout(absl::Seconds(10))) {
        return absl::DeadlineExceededError("the Get did not return before its copy");
      }
      return inner_->Put(key, payload);
    }
    absl::Notification answered;
  };
  auto gated_inner = MemoryTier::Create(mo);
  ASSERT_TRUE(gated_inner.ok());
  GatedLocal gated(gated_inner->get());
  LayeredStoreOptions one;
  one.max_pending_promotions = 1;
  {
    LayeredStore late(&gated, remote->get(), one);
    ASSERT_TRUE(late.Get(keys[3]).ok());  // queued (or being copied: waiting at the gate)
    ASSERT_TRUE(late.Get(keys[5]).ok());  // queued behind it, or skipped if keys[3] is still queued
    gated.answered.Notify();
    late.WaitForWriteBacks();
    EXPECT_TRUE((*gated_inner)->Get(keys[3]).ok());
    EXPECT_EQ((*gated_inner)->Get(keys[5]).ok(), late.skipped_promotions() == 0);
  }
}

}  // namespace
}  // namespace kvblock
