#include "worker/engine/engine.h"

#include <algorithm>
#include <random>

#include "cache/tiered_store.h"
#include "gtest/gtest.h"
#include "tests/worker/fixture_util.h"
#include "worker/engine/cpu_backend.h"
#include "worker/model/model.h"

namespace kvblock {
namespace {

using testing::FixtureSpec;
using testing::MaxAbsError;
using testing::MaxRelError;
using testing::Reference;
using testing::TempDir;

// The greedy reference continues past EOS; the engine stops at (and includes) the first EOS.
std::vector<int32_t> CutAtEos(std::vector<int32_t> tokens, const std::vector<int32_t>& eos) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (std::find(eos.begin(), eos.end(), tokens[i]) != eos.end()) {
      tokens.resize(i + 1);
      break;
    }
  }
  return tokens;
}

struct Loaded {
  LoadedModel model;
  std::unique_ptr<BlockStore> store;
  std::unique_ptr<Engine> engine;
};

Loaded Load(const FixtureSpec& f, const std::string& cache_dir, KvDtype dtype = KvDtype::kF32,
            const CpuBackendOptions& backend_options = {}) {
  Loaded l;
  ModelLoadOptions mo;
  mo.model_id = "engine-test-" + f.name;  // keeps the fixture directories untouched
  auto m = LoadModel(f.dir, mo);
  EXPECT_TRUE(m.ok()) << f.name << ": " << m.status();
  l.model = std::move(*m);
  auto store = OpenEmbeddedStore(cache_dir, 64 << 20);
  EXPECT_TRUE(store.ok()) << store.status();
  l.store = std::move(*store);
  auto backend = CreateCpuBackend(l.model.weights, l.model.config, backend_options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  EngineOptions eo;
  eo.kv_dtype = dtype;
  auto engine = Engine::Create(std::move(*backend), l.store.get(), l.model.fingerprint, eo);
  EXPECT_TRUE(engine.ok()) << engine.status();
  l.engine = std::move(*engine);
  return l;
}

class FixtureTest : public ::testing::TestWithParam<FixtureSpec> {};

// K of each block encoded alone equals k_pos0, V equals v, and K re-encoded to the block's
// offset equals k_reencoded (transformers encoding the block at its real positions).
TEST_P(FixtureTest, BlockKvMatchesTransformers) {
  const FixtureSpec& f = GetParam();
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  Reference ref = testing::LoadReference(f.dir);
  const ModelConfig& c = l.model.config;
  const Backend& backend = l.engine->backend();
  int64_t total = 0;
  for (const auto& b : ref.blocks) total += b.size();
  auto seq = const_cast<Backend&>(backend).NewSequence(total);
  ASSERT_TRUE(seq.ok());
  int64_t offset = 0;
  double worst_k = 0, worst_v = 0, worst_re = 0;
  for (size_t b = 0; b < ref.blocks.size(); ++b) {
    auto payload = l.engine->EncodeBlock(ref.blocks[b]);
    ASSERT_TRUE(payload.ok()) << payload.status();
    auto view = BlockView::Parse(*payload);
    ASSERT_TRUE(view.ok());
    EXPECT_EQ(view->meta().key, l.engine->KeyOf(ref.blocks[b]));
    EXPECT_EQ(view->meta().model, l.model.fingerprint);
    const int64_t n = ref.blocks[b].size();
    const size_t elems = c.num_kv_heads * n * c.head_dim;
    std::vector<float> k(elems), v(elems);
    for (int64_t layer = 0; layer < c.num_layers; ++layer) {
      view->ReadLayerF32(layer, k.data(), v.data());
      std::vector<int64_t> shape;
      std::vector<float> k0 = ref.Tensor(absl::StrCat("k_pos0.", b, ".", layer), &shape);
      ASSERT_EQ(shape, (std::vector<int64_t>{c.num_kv_heads, n, c.head_dim}));
      worst_k = std::max(worst_k, MaxAbsError(k.data(), k0.data(), elems));
      std::vector<float> v0 = ref.Tensor(absl::StrCat("v.", b, ".", layer));
      worst_v = std::max(worst_v, MaxAbsError(v.data(), v0.data(), elems));
    }
    ASSERT_TRUE(const_cast<Backend&>(backend).AppendBlock(**seq, *view).ok());
    std::vector<float> all_k(c.num_layers * elems), all_v(c.num_layers * elems);
    ASSERT_TRUE(backend.ReadKv(**seq, offset, n, absl::MakeSpan(all_k), absl::MakeSpan(all_v)).ok());
    for (int64_t layer = 0; layer < c.num_layers; ++layer) {
      std::vector<float> kr = ref.Tensor(absl::StrCat("k_reencoded.", b, ".", layer));
      worst_re = std::max(worst_re, MaxAbsError(all_k.data() + layer * elems, kr.data(), elems));
      // V enters the sequence untouched.
      std::vector<float> v0 = ref.Tensor(absl::StrCat("v.", b, ".", layer));
      EXPECT_LT(MaxAbsError(all_v.data() + layer * elems, v0.data(), elems), 1e-5);
    }
    offset += n;
  }
  RecordProperty("max_abs_err_k_pos0", std::to_string(worst_k));
  RecordProperty("max_abs_err_k_reencoded", std::to_string(worst_re));
  EXPECT_LT(worst_k, 1e-5) << f.name;
  EXPECT_LT(worst_v, 1e-5) << f.name;
  EXPECT_LT(worst_re, 2e-5) << f.name;
  std::cout << f.name << ": max |dK pos0| " << worst_k << ", |dV| " << worst_v
            << ", |dK re-encoded| " << worst_re << "\n";
}

// Final-block logits and greedy tokens in both modes; the second block-mode request takes
// every block from the cache and gives identical output.
TEST_P(FixtureTest, GenerateMatchesTransformersAndReusesTheCache) {
  const FixtureSpec& f = GetParam();
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  Reference ref = testing::LoadReference(f.dir);
  const std::vector<int32_t>& eos = l.model.config.eos_token_ids;
  GenerateRequest req;
  req.blocks = ref.blocks;
  req.final_block = ref.final_block;
  req.max_new_tokens = 16;
  req.return_logits = true;

  auto first = l.engine->Generate(req);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->cache_misses, static_cast<int64_t>(ref.blocks.size()));
  EXPECT_EQ(first->cache_hits, 0);
  const double rel_block = MaxRelError(first->logits, ref.Tensor("logits_final_block_mode"));
  EXPECT_LT(rel_block, 1e-4) << f.name;
  EXPECT_EQ(first->tokens, CutAtEos(ref.greedy_block, eos)) << f.name;

  auto second = l.engine->Generate(req);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->cache_hits, static_cast<int64_t>(ref.blocks.size()));
  EXPECT_EQ(second->cache_misses, 0);
  EXPECT_EQ(second->tokens, first->tokens);
  EXPECT_EQ(second->logits, first->logits);  // bit-identical

  req.mode = AttentionMode::kFull;
  auto full = l.engine->Generate(req);
  ASSERT_TRUE(full.ok()) << full.status();
  const double rel_full = MaxRelError(full->logits, ref.Tensor("logits_full_mode"));
  EXPECT_LT(rel_full, 1e-4) << f.name;
  EXPECT_EQ(full->tokens, CutAtEos(ref.greedy_full, eos)) << f.name;
  EXPECT_EQ(full->cache_hits + full->cache_misses, 0);
  std::cout << f.name << ": logits rel err block " << rel_block << ", full " << rel_full
            << "; tokens " << first->tokens.size() << " (" << first->stop_reason << ")\n";
}

// Delegates to the CPU backend but keeps Backend's default DecodeStep (Forward per sequence),
// so that default is tested against the real math.
class ForwardOnlyBackend final : public Backend {
 public:
  explicit ForwardOnlyBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  std::string_view name() const override { return "forward-only"; }
  const ModelConfig& config() const override { return inner_->config(); }
  absl::StatusOr<std::unique_ptr<KvSequence>> NewSequence(int64_t capacity) override {
    return inner_->NewSequence(capacity);
  }
  absl::Status Forward(KvSequence& seq, absl::Span<const int32_t> tokens, int64_t logit_rows,
                       absl::Span<float> logits) override {
    return inner_->Forward(seq, tokens, logit_rows, logits);
  }
  absl::Status AppendBlock(KvSequence& seq, const BlockView& block) override {
    return inner_->AppendBlock(seq, block);
  }
  absl::Status ReadKv(const KvSequence& seq, int64_t begin, int64_t n, absl::Span<float> k,
                      absl::Span<float> v) const override {
    return inner_->ReadKv(seq, begin, n, k, v);
  }

 private:
  std::unique_ptr<Backend> inner_;
};

std::vector<int32_t> RandomTokens(std::mt19937_64& rng, int64_t n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = d(rng);
  return ids;
}

// Sequences of different lengths (fresh random prompts) decoded for a few steps: the CPU
// backend's batched DecodeStep (one sgemm per projection) gives the logits and K/V of Forward run
// per sequence, within f32 tolerance; with a sgemv per sequence (a batch below gemm_min_rows) and
// through Backend's default DecodeStep it gives them exactly.
TEST_P(FixtureTest, DecodeStepLogitsEqualForwardPerSequence) {
  const FixtureSpec& f = GetParam();
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  const ModelConfig& c = l.model.config;
  auto cpu = CreateCpuBackend(l.model.weights, c, {.gemm_min_rows = 2});
  auto per_row = CreateCpuBackend(l.model.weights, c, {.gemm_min_rows = 8});
  auto inner = CreateCpuBackend(l.model.weights, c);
  ASSERT_TRUE(cpu.ok() && per_row.ok() && inner.ok());
  ForwardOnlyBackend by_forward(std::move(*inner));
  std::mt19937_64 rng(std::random_device{}());
  const std::vector<int64_t> lengths = {1 + static_cast<int64_t>(rng() % 5),
                                        7 + static_cast<int64_t>(rng() % 20),
                                        30 + static_cast<int64_t>(rng() % 40), 3};
  constexpr int kSteps = 4;
  const size_t b = lengths.size();
  // Copies of the same prefilled sequences: batched (sgemm), batched (sgemv per row), default
  // DecodeStep, Forward per sequence.
  std::vector<std::unique_ptr<KvSequence>> batched, rows, by_default, alone;
  for (int64_t len : lengths) {
    const std::vector<int32_t> prompt = RandomTokens(rng, len, c.vocab_size);
    for (auto* set : {&batched, &rows, &by_default, &alone}) {
      auto seq = (*cpu)->NewSequence(len + kSteps);
      ASSERT_TRUE(seq.ok());
      ASSERT_TRUE((*cpu)->Forward(**seq, prompt, 0, {}).ok());
      set->push_back(std::move(*seq));
    }
  }
  auto raw = [](const std::vector<std::unique_ptr<KvSequence>>& v) {
    std::vector<KvSequence*> out;
    for (const auto& s : v) out.push_back(s.get());
    return out;
  };
  double worst = 0;
  for (int step = 0; step < kSteps; ++step) {
    const std::vector<int32_t> tokens = RandomTokens(rng, b, c.vocab_size);
    std::vector<float> lb(b * c.vocab_size), lr(b * c.vocab_size), ld(b * c.vocab_size),
        la(b * c.vocab_size);
    ASSERT_TRUE((*cpu)->DecodeStep(raw(batched), tokens, absl::MakeSpan(lb)).ok());
    ASSERT_TRUE((*per_row)->DecodeStep(raw(rows), tokens, absl::MakeSpan(lr)).ok());
    ASSERT_TRUE(by_forward.DecodeStep(raw(by_default), tokens, absl::MakeSpan(ld)).ok());
    for (size_t i = 0; i < b; ++i) {
      ASSERT_TRUE((*cpu)->Forward(*alone[i], absl::MakeConstSpan(tokens).subspan(i, 1), 1,
                                  absl::MakeSpan(la).subspan(i * c.vocab_size, c.vocab_size))
                      .ok());
    }
    EXPECT_EQ(ld, la) << "step " << step;
    EXPECT_EQ(lr, la) << "step " << step;
    worst = std::max(worst, MaxRelError(lb, la));
  }
  EXPECT_LT(worst, 1e-5) << f.name;
  for (size_t i = 0; i < b; ++i) {
    ASSERT_EQ(batched[i]->length(), lengths[i] + kSteps);
    const int64_t elems = c.num_layers * c.num_kv_heads * batched[i]->length() * c.head_dim;
    std::vector<float> kb(elems), vb(elems), ka(elems), va(elems);
    ASSERT_TRUE((*cpu)->ReadKv(*batched[i], 0, batched[i]->length(), absl::MakeSpan(kb),
                               absl::MakeSpan(vb)).ok());
    ASSERT_TRUE((*cpu)->ReadKv(*alone[i], 0, alone[i]->length(), absl::MakeSpan(ka),
                               absl::MakeSpan(va)).ok());
    EXPECT_LT(MaxAbsError(kb.data(), ka.data(), elems), 1e-4) << i;
    EXPECT_LT(MaxAbsError(vb.data(), va.data(), elems), 1e-4) << i;
  }
  std::cout << f.name << ": batched decode logits rel err " << worst << "\n";
}

// Requests of different lengths and modes, greedy and seeded sampling, joining a running batch
// at different steps (as a scheduler admits them): each gets token for token what it gets alone,
// and the fixture's request what transformers' greedy decoding gives. The batches (up to 5) stay
// below gemm_min_rows, so each row is computed exactly as alone; a batch run as one sgemm agrees
// with sgemv only up to f32 rounding (DecodeStepLogitsEqualForwardPerSequence), which can flip
// a token at a near-tie of the top logits (seen once in 600 runs of these fixtures).
TEST_P(FixtureTest, BatchedDecodeMatchesDecodingAlone) {
  const FixtureSpec& f = GetParam();
  TempDir dir;
  Loaded l = Load(f, dir / "cache", KvDtype::kF32, {.gemm_min_rows = 8});
  Reference ref = testing::LoadReference(f.dir);
  const int64_t vocab = l.model.config.vocab_size;
  std::mt19937_64 rng(std::random_device{}());
  std::vector<GenerateRequest> reqs(5);
  reqs[0].blocks = ref.blocks;
  reqs[0].final_block = ref.final_block;
  reqs[0].max_new_tokens = 16;
  for (size_t i = 1; i < reqs.size(); ++i) {
    GenerateRequest& r = reqs[i];
    for (uint64_t n = rng() % 4; n > 0; --n) r.blocks.push_back(RandomTokens(rng, 3 + rng() % 18, vocab));
    r.final_block = RandomTokens(rng, 1 + rng() % 10, vocab);
    r.max_new_tokens = static_cast<int32_t>(6 + rng() % 15);
    if (i % 2 == 0) r.sampling = {.temperature = 0.8f, .top_k = 20, .top_p = 0.9f, .seed = rng()};
    if (i == 3) r.mode = AttentionMode::kFull;
  }
  std::vector<GenerateResult> alone;
  for (const GenerateRequest& r : reqs) {
    auto res = l.engine->Generate(r);
    ASSERT_TRUE(res.ok()) << res.status();
    alone.push_back(*std::move(res));
  }
  EXPECT_EQ(alone[0].tokens, CutAtEos(ref.greedy_block, l.model.config.eos_token_ids)) << f.name;

  // Request i is prefilled and joins the batch before step 2 * i.
  std::vector<std::unique_ptr<Decoding>> decodings(reqs.size());
  size_t joined = 0;
  int max_batch = 0;
  for (int step = 0; step < 1000; ++step) {
    while (joined < reqs.size() && static_cast<int>(2 * joined) <= step) {
      auto d = l.engine->Prefill(reqs[joined]);
      ASSERT_TRUE(d.ok()) << d.status();
      decodings[joined++] = *std::move(d);
    }
    std::vector<Decoding*> batch;
    for (size_t i = 0; i < joined; ++i) {
      if (!decodings[i]->done()) batch.push_back(decodings[i].get());
    }
    if (batch.empty() && joined == reqs.size()) break;
    if (batch.empty()) continue;
    max_batch = std::max(max_batch, static_cast<int>(batch.size()));
    ASSERT_TRUE(l.engine->DecodeStep(batch).ok());
  }
  EXPECT_GE(max_batch, 3);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(decodings[i]->done()) << i;
    EXPECT_EQ(decodings[i]->tokens(), alone[i].tokens) << f.name << " request " << i;
    EXPECT_EQ(decodings[i]->result().stop_reason, alone[i].stop_reason) << i;
  }
  // A finished Decoding cannot take another step; nor can an empty batch run.
  Decoding* finished[1] = {decodings[0].get()};
  EXPECT_EQ(l.engine->DecodeStep(finished).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(l.engine->DecodeStep({}).code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest, ::testing::ValuesIn(testing::AllFixtures()),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(EngineTest, CacheSurvivesReopeningAndRepeatedBlocksAreEncodedOnce) {
  const FixtureSpec f = testing::AllFixtures()[1];  // qwen2-tiny
  TempDir dir;
  Reference ref = testing::LoadReference(f.dir);
  GenerateRequest req;
  req.blocks = {ref.blocks[0], ref.blocks[2], ref.blocks[0]};
  req.final_block = ref.final_block;
  req.max_new_tokens = 4;
  std::vector<int32_t> tokens;
  {
    Loaded l = Load(f, dir / "cache");
    auto r = l.engine->Generate(req);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->cache_misses, 2);
    EXPECT_EQ(r->cache_hits, 1);
    tokens = r->tokens;
  }
  Loaded again = Load(f, dir / "cache");  // a new process would see the same RocksDB
  auto r = again.engine->Generate(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cache_hits, 3);
  EXPECT_EQ(r->cache_misses, 0);
  EXPECT_EQ(r->tokens, tokens);
}

TEST(EngineTest, Bf16PayloadsRoundTripThroughTheStore) {
  const FixtureSpec f = testing::AllFixtures()[0];  // llama-tiny
  TempDir dir;
  Loaded l = Load(f, dir / "cache", KvDtype::kBF16);
  Reference ref = testing::LoadReference(f.dir);
  GenerateRequest req;
  req.blocks = ref.blocks;
  req.final_block = ref.final_block;
  req.return_logits = true;
  auto first = l.engine->Generate(req);
  auto second = l.engine->Generate(req);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(second->cache_hits, 4);
  EXPECT_EQ(second->logits, first->logits);
  // bf16 KV costs precision but stays close to the f32 reference.
  const double rel = MaxRelError(first->logits, ref.Tensor("logits_final_block_mode"));
  EXPECT_LT(rel, 2e-2);
  EXPECT_GT(rel, 1e-6);
}

TEST(EngineTest, SamplingIsSeededAndBadRequestsAreRefused) {
  const FixtureSpec f = testing::AllFixtures()[0];
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  Reference ref = testing::LoadReference(f.dir);
  GenerateRequest req;
  req.blocks = ref.blocks;
  req.final_block = ref.final_block;
  req.max_new_tokens = 12;
  req.sampling = {.temperature = 1.5f, .top_k = 50, .top_p = 0.95f, .seed = 1234};
  auto a = l.engine->Generate(req);
  auto b = l.engine->Generate(req);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  req.sampling.seed = 99;
  auto c = l.engine->Generate(req);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->tokens, c->tokens);

  auto expect_invalid = [&](GenerateRequest r, const std::string& what) {
    auto res = l.engine->Generate(r);
    ASSERT_FALSE(res.ok()) << what;
    EXPECT_EQ(res.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(res.status().message().find(what), std::string::npos) << res.status();
  };
  GenerateRequest bad = req;
  bad.final_block.clear();
  expect_invalid(bad, "final block is empty");
  bad = req;
  bad.blocks[1][3] = 259;
  expect_invalid(bad, "token id 259 at blocks[1][3]");
  bad = req;
  bad.blocks.push_back({});
  expect_invalid(bad, "blocks[4] is empty");
  bad = req;
  bad.final_block.assign(5000, 7);
  expect_invalid(bad, "more than the model's limit of 4096");
  bad = req;
  bad.sampling.top_p = 0;
  expect_invalid(bad, "top_p");
  bad = req;
  bad.max_new_tokens = -1;
  expect_invalid(bad, "max_new_tokens");
}

TEST(EngineTest, StopsOnEosAndAtTheContextLimit) {
  const FixtureSpec f = testing::AllFixtures()[0];
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  Reference ref = testing::LoadReference(f.dir);
  // Make the first greedy token an EOS id of a derived config: rebuild the engine with it.
  ModelConfig c = l.model.config;
  c.eos_token_ids = {ref.greedy_block[2]};
  auto backend = CreateCpuBackend(l.model.weights, c);
  ASSERT_TRUE(backend.ok());
  auto engine = Engine::Create(std::move(*backend), l.store.get(), l.model.fingerprint);
  ASSERT_TRUE(engine.ok());
  GenerateRequest req;
  req.blocks = ref.blocks;
  req.final_block = ref.final_block;
  auto r = (*engine)->Generate(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop_reason, "eos");
  EXPECT_EQ(r->tokens, std::vector<int32_t>(ref.greedy_block.begin(), ref.greedy_block.begin() + 3));
  // A sequence limit of prompt + 5 tokens stops generation after 5 + 1 tokens.
  int64_t prompt = ref.final_block.size();
  for (const auto& b : ref.blocks) prompt += b.size();
  auto backend2 = CreateCpuBackend(l.model.weights, l.model.config);
  EngineOptions eo;
  eo.max_sequence_tokens = prompt + 5;
  auto limited = Engine::Create(std::move(*backend2), l.store.get(), l.model.fingerprint, eo);
  ASSERT_TRUE(limited.ok());
  auto lr = (*limited)->Generate(req);
  ASSERT_TRUE(lr.ok());
  EXPECT_EQ(lr->stop_reason, "context_limit");
  EXPECT_EQ(lr->tokens, std::vector<int32_t>(ref.greedy_block.begin(), ref.greedy_block.begin() + 6));
}

TEST(EngineTest, DecodeStepRefusesBadBatchesAndLeavesSequencesUnchanged) {
  const FixtureSpec f = testing::AllFixtures()[0];
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  const ModelConfig& c = l.model.config;
  auto cpu = CreateCpuBackend(l.model.weights, c);
  auto inner = CreateCpuBackend(l.model.weights, c);
  ASSERT_TRUE(cpu.ok() && inner.ok());
  ForwardOnlyBackend by_forward(std::move(*inner));
  std::mt19937_64 rng(std::random_device{}());
  auto a = (*cpu)->NewSequence(8);
  auto full = (*cpu)->NewSequence(4);
  ASSERT_TRUE(a.ok() && full.ok());
  ASSERT_TRUE((*cpu)->Forward(**a, RandomTokens(rng, 5, c.vocab_size), 0, {}).ok());
  ASSERT_TRUE((*cpu)->Forward(**full, RandomTokens(rng, 4, c.vocab_size), 0, {}).ok());
  std::vector<float> logits(2 * c.vocab_size);
  const int32_t ok_token = static_cast<int32_t>(rng() % c.vocab_size);
  struct Case {
    std::vector<KvSequence*> seqs;
    std::vector<int32_t> tokens;
    size_t logit_floats;
    std::string what;
  };
  const std::vector<Case> cases = {
      {{}, {}, logits.size(), "empty batch"},
      {{a->get()}, {ok_token, ok_token}, logits.size(), "sizes disagree"},
      {{a->get(), a->get()}, {ok_token, ok_token}, logits.size(), "repeated"},
      {{a->get(), nullptr}, {ok_token, ok_token}, logits.size(), "null"},
      {{a->get()}, {static_cast<int32_t>(c.vocab_size)}, logits.size(), "outside the vocabulary"},
      {{a->get(), full->get()}, {ok_token, ok_token}, logits.size(), "full"},
      {{a->get()}, {ok_token}, static_cast<size_t>(c.vocab_size - 1), "logits too small"},
  };
  for (Backend* backend : {cpu->get(), static_cast<Backend*>(&by_forward)}) {
    for (const Case& k : cases) {
      absl::Status s = backend->DecodeStep(k.seqs, k.tokens, absl::MakeSpan(logits.data(), k.logit_floats));
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << backend->name() << ": " << k.what;
      EXPECT_EQ((*a)->length(), 5) << k.what;
      EXPECT_EQ((*full)->length(), 4) << k.what;
    }
  }
}

}  // namespace
}  // namespace kvblock
