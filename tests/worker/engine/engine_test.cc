#include "worker/engine/engine.h"

#include <algorithm>
#include <functional>
#include <random>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "cache/memory_tier.h"
#include "cache/tiered_store.h"
#include "gtest/gtest.h"
#include "tests/cache/store_test_util.h"
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

// Delegates to the CPU backend but keeps Backend's default DecodeStep and ForwardBatch (Forward
// per sequence), so those defaults are tested against the real math.
class ForwardOnlyBackend : public Backend {
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

 protected:
  std::unique_ptr<Backend> inner_;
};

// Delegates everything to the CPU backend (batched ForwardBatch and DecodeStep included) and
// reports each ForwardBatch's token counts to `on_forward_batch` first.
class ObservedBackend final : public ForwardOnlyBackend {
 public:
  using Hook = std::function<void(const std::vector<int64_t>& tokens_per_sequence)>;
  ObservedBackend(std::unique_ptr<Backend> inner, Hook on_forward_batch)
      : ForwardOnlyBackend(std::move(inner)), hook_(std::move(on_forward_batch)) {}
  std::string_view name() const override { return "observed"; }
  absl::Status ForwardBatch(absl::Span<KvSequence* const> seqs,
                            absl::Span<const absl::Span<const int32_t>> tokens) override {
    std::vector<int64_t> sizes;
    for (const auto& t : tokens) sizes.push_back(static_cast<int64_t>(t.size()));
    hook_(sizes);
    return inner_->ForwardBatch(seqs, tokens);
  }
  absl::Status DecodeStep(absl::Span<KvSequence* const> seqs, absl::Span<const int32_t> tokens,
                          absl::Span<float> logits) override {
    return inner_->DecodeStep(seqs, tokens, logits);
  }

 private:
  Hook hook_;
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

// Sequences of different lengths, some already holding tokens: the CPU backend's ForwardBatch
// leaves the K/V of Forward run per sequence exactly (batch_invariant, the default) or within
// f32 rounding (one sgemm per projection over all rows), and so does Backend's default
// ForwardBatch (Forward per sequence) exactly; a decode step after it gives the same logits.
TEST_P(FixtureTest, ForwardBatchEqualsForwardPerSequence) {
  const FixtureSpec& f = GetParam();
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  const ModelConfig& c = l.model.config;
  auto cpu = CreateCpuBackend(l.model.weights, c);
  auto merged = CreateCpuBackend(l.model.weights, c, {.batch_invariant = false});
  auto inner = CreateCpuBackend(l.model.weights, c);
  ASSERT_TRUE(cpu.ok() && merged.ok() && inner.ok());
  ForwardOnlyBackend by_forward(std::move(*inner));
  std::mt19937_64 rng(std::random_device{}());
  const std::vector<int64_t> prefix = {0, 1 + static_cast<int64_t>(rng() % 9), 0,
                                       20 + static_cast<int64_t>(rng() % 30), 0};
  const std::vector<int64_t> lengths = {
      1 + static_cast<int64_t>(rng() % 5), 7 + static_cast<int64_t>(rng() % 20),
      30 + static_cast<int64_t>(rng() % 40), 3, 60 + static_cast<int64_t>(rng() % 60)};
  const size_t b = lengths.size();
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::unique_ptr<KvSequence>> batched, one_gemm, by_default, alone;
  for (size_t i = 0; i < b; ++i) {
    const std::vector<int32_t> before = RandomTokens(rng, prefix[i], c.vocab_size);
    tokens.push_back(RandomTokens(rng, lengths[i], c.vocab_size));
    for (auto* set : {&batched, &one_gemm, &by_default, &alone}) {
      auto seq = (*cpu)->NewSequence(prefix[i] + lengths[i] + 1);
      ASSERT_TRUE(seq.ok());
      if (!before.empty()) ASSERT_TRUE((*cpu)->Forward(**seq, before, 0, {}).ok());
      set->push_back(std::move(*seq));
    }
  }
  auto raw = [](const std::vector<std::unique_ptr<KvSequence>>& v) {
    std::vector<KvSequence*> out;
    for (const auto& s : v) out.push_back(s.get());
    return out;
  };
  const std::vector<absl::Span<const int32_t>> spans(tokens.begin(), tokens.end());
  ASSERT_TRUE((*cpu)->ForwardBatch(raw(batched), spans).ok());
  ASSERT_TRUE((*merged)->ForwardBatch(raw(one_gemm), spans).ok());
  ASSERT_TRUE(by_forward.ForwardBatch(raw(by_default), spans).ok());
  for (size_t i = 0; i < b; ++i) ASSERT_TRUE((*cpu)->Forward(*alone[i], tokens[i], 0, {}).ok());
  double worst = 0;
  for (size_t i = 0; i < b; ++i) {
    const int64_t n = prefix[i] + lengths[i];
    const int64_t elems = c.num_layers * c.num_kv_heads * n * c.head_dim;
    // K and V of sequence i of a set, one after the other.
    auto kv = [&](const std::vector<std::unique_ptr<KvSequence>>& set) {
      EXPECT_EQ(set[i]->length(), n);
      std::vector<float> out(2 * elems);
      EXPECT_TRUE((*cpu)
                      ->ReadKv(*set[i], 0, n, absl::MakeSpan(out).subspan(0, elems),
                               absl::MakeSpan(out).subspan(elems))
                      .ok());
      return out;
    };
    const std::vector<float> expect = kv(alone);
    EXPECT_EQ(kv(batched), expect) << i;
    EXPECT_EQ(kv(by_default), expect) << i;
    worst = std::max(worst, MaxRelError(kv(one_gemm), expect));
  }
  EXPECT_LT(worst, 1e-5) << f.name;
  // The sequences go on as usual: one decode step gives the logits of Forward per sequence.
  const std::vector<int32_t> next = RandomTokens(rng, b, c.vocab_size);
  std::vector<float> lb(b * c.vocab_size), la(b * c.vocab_size);
  ASSERT_TRUE((*cpu)->DecodeStep(raw(one_gemm), next, absl::MakeSpan(lb)).ok());
  ASSERT_TRUE((*cpu)->DecodeStep(raw(alone), next, absl::MakeSpan(la)).ok());
  EXPECT_LT(MaxRelError(lb, la), 1e-5) << f.name;
  std::cout << f.name << ": batched forward (one sgemm) KV rel err " << worst << "\n";
}

// K and V of every layer of a payload, as f32.
std::vector<float> PayloadKv(const std::vector<uint8_t>& payload) {
  absl::StatusOr<BlockView> view = BlockView::Parse(payload);
  EXPECT_TRUE(view.ok()) << view.status();
  if (!view.ok()) return {};
  const size_t elems = LayerElements(view->meta());
  std::vector<float> kv(2 * elems * view->meta().num_layers);
  for (uint32_t l = 0; l < view->meta().num_layers; ++l) {
    view->ReadLayerF32(l, kv.data() + 2 * l * elems, kv.data() + (2 * l + 1) * elems);
  }
  return kv;
}

void ExpectEncodeBlocksEqualsEncodeBlock(const FixtureSpec& f, bool invariant) {
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  auto cpu = CreateCpuBackend(l.model.weights, l.model.config, {.batch_invariant = invariant});
  ASSERT_TRUE(cpu.ok());
  std::vector<std::vector<int64_t>> passes;
  auto observed = std::make_unique<ObservedBackend>(
      std::move(*cpu), [&](const std::vector<int64_t>& sizes) { passes.push_back(sizes); });
  EngineOptions eo;
  eo.encode_batch_tokens = 48;
  auto engine = Engine::Create(std::move(observed), l.store.get(), l.model.fingerprint, eo);
  ASSERT_TRUE(engine.ok());
  std::mt19937_64 rng(std::random_device{}());
  std::vector<std::vector<int32_t>> blocks;
  for (int i = 0; i < 9; ++i) {
    const int64_t n =
        i == 4 ? 60 + static_cast<int64_t>(rng() % 20) : 1 + static_cast<int64_t>(rng() % 30);
    blocks.push_back(RandomTokens(rng, n, l.model.config.vocab_size));
  }
  const std::vector<absl::Span<const int32_t>> spans(blocks.begin(), blocks.end());
  auto payloads = (*engine)->EncodeBlocks(spans);
  ASSERT_TRUE(payloads.ok()) << payloads.status();
  ASSERT_EQ(payloads->size(), blocks.size());
  // The passes: consecutive blocks, in order, each pass within 48 tokens or a single block,
  // and no pass could have taken the next block.
  std::vector<int64_t> seen;
  std::vector<bool> alone;  // by block: its pass encoded it alone
  for (size_t p = 0; p < passes.size(); ++p) {
    int64_t sum = 0;
    for (int64_t n : passes[p]) sum += n;
    EXPECT_TRUE(sum <= 48 || passes[p].size() == 1) << "pass " << p;
    if (p + 1 < passes.size()) EXPECT_GT(sum + passes[p + 1].front(), 48) << "pass " << p;
    seen.insert(seen.end(), passes[p].begin(), passes[p].end());
    alone.insert(alone.end(), passes[p].size(), passes[p].size() == 1);
  }
  std::vector<int64_t> sizes;
  for (const auto& b : blocks) sizes.push_back(static_cast<int64_t>(b.size()));
  EXPECT_EQ(seen, sizes);
  EXPECT_LT(passes.size(), blocks.size());  // some passes encoded several blocks
  ASSERT_TRUE(alone[4]);
  double worst = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto one = (*engine)->EncodeBlock(blocks[i]);
    ASSERT_TRUE(one.ok());
    auto batched = BlockView::Parse((*payloads)[i]);
    auto single = BlockView::Parse(*one);
    ASSERT_TRUE(batched.ok() && single.ok());
    EXPECT_EQ(batched->meta().key, single->meta().key);
    EXPECT_EQ(batched->meta().num_tokens, blocks[i].size());
    EXPECT_EQ((*payloads)[i].size(), one->size());
    if (invariant || alone[i]) EXPECT_EQ((*payloads)[i], *one) << f.name << " block " << i;
    worst = std::max(worst, MaxRelError(PayloadKv((*payloads)[i]), PayloadKv(*one)));
  }
  EXPECT_LT(worst, 1e-5) << f.name;
  if (!invariant) {
    std::cout << f.name << ": batched encoding (one sgemm) KV rel err " << worst << "\n";
  }
  // before_batch: an error before the second pass stops there.
  passes.clear();
  int calls = 0;
  auto stopped = (*engine)->EncodeBlocks(
      spans, [&] { return ++calls == 2 ? absl::DeadlineExceededError("stop") : absl::OkStatus(); });
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(passes.size(), 1u);
  const std::vector<int32_t> empty;
  EXPECT_EQ((*engine)->EncodeBlocks({spans[0], absl::MakeConstSpan(empty)}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Blocks encoded by EncodeBlocks in passes of at most 48 tokens (a longer block alone) and one
// by one by EncodeBlock: the same payloads byte for byte with the CPU backend's default
// (batch_invariant). With one sgemm over a pass's rows they agree up to f32 rounding only, and
// byte for byte for a block that had its pass alone: OpenBLAS 0.3.21's sgemm rounds a row
// differently depending on how many rows the call has (this machine's Zen kernel, even
// single-threaded). before_batch runs before each pass and its error stops the encoding.
TEST_P(FixtureTest, EncodeBlocksEqualsEncodeBlockInBoundedPasses) {
  for (bool invariant : {true, false}) {
    SCOPED_TRACE(invariant ? "batch invariant" : "one sgemm per pass");
    ExpectEncodeBlocksEqualsEncodeBlock(GetParam(), invariant);
  }
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

// The refusal tests: the first fixture's model on the CPU backend and behind the Backend
// defaults (ForwardOnlyBackend), with a fresh random generator.
class BackendRefusalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    l_ = Load(testing::AllFixtures()[0], dir_ / "cache");
    auto cpu = CreateCpuBackend(l_.model.weights, l_.model.config);
    auto inner = CreateCpuBackend(l_.model.weights, l_.model.config);
    ASSERT_TRUE(cpu.ok() && inner.ok());
    cpu_ = *std::move(cpu);
    by_forward_ = std::make_unique<ForwardOnlyBackend>(*std::move(inner));
  }

  TempDir dir_;
  Loaded l_;
  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<ForwardOnlyBackend> by_forward_;
  std::mt19937_64 rng_{std::random_device{}()};
};

TEST_F(BackendRefusalTest, DecodeStepRefusesBadBatchesAndLeavesSequencesUnchanged) {
  const ModelConfig& c = l_.model.config;
  Backend* cpu = cpu_.get();
  ForwardOnlyBackend& by_forward = *by_forward_;
  std::mt19937_64& rng = rng_;
  auto a = cpu->NewSequence(8);
  auto full = cpu->NewSequence(4);
  ASSERT_TRUE(a.ok() && full.ok());
  ASSERT_TRUE(cpu->Forward(**a, RandomTokens(rng, 5, c.vocab_size), 0, {}).ok());
  ASSERT_TRUE(cpu->Forward(**full, RandomTokens(rng, 4, c.vocab_size), 0, {}).ok());
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
  for (Backend* backend : {cpu, static_cast<Backend*>(&by_forward)}) {
    for (const Case& k : cases) {
      absl::Status s = backend->DecodeStep(k.seqs, k.tokens, absl::MakeSpan(logits.data(), k.logit_floats));
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << backend->name() << ": " << k.what;
      EXPECT_EQ((*a)->length(), 5) << k.what;
      EXPECT_EQ((*full)->length(), 4) << k.what;
    }
  }
}

TEST_F(BackendRefusalTest, ForwardBatchRefusesBadBatchesAndLeavesSequencesUnchanged) {
  const ModelConfig& c = l_.model.config;
  Backend* cpu = cpu_.get();
  ForwardOnlyBackend& by_forward = *by_forward_;
  std::mt19937_64& rng = rng_;
  auto a = cpu->NewSequence(8);
  auto b = cpu->NewSequence(8);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(cpu->Forward(**a, RandomTokens(rng, 5, c.vocab_size), 0, {}).ok());
  const std::vector<int32_t> two = RandomTokens(rng, 2, c.vocab_size);
  const std::vector<int32_t> four = RandomTokens(rng, 4, c.vocab_size);
  const std::vector<int32_t> empty;
  const std::vector<int32_t> bad_id = {static_cast<int32_t>(c.vocab_size)};
  using Tokens = std::vector<absl::Span<const int32_t>>;
  struct Case {
    std::vector<KvSequence*> seqs;
    Tokens tokens;
    std::string what;
  };
  const std::vector<Case> cases = {
      {{}, {}, "empty batch"},
      {{a->get(), b->get()}, Tokens{two}, "sizes disagree"},
      {{a->get(), a->get()}, Tokens{two, two}, "repeated"},
      {{b->get(), nullptr}, Tokens{two, two}, "null"},
      {{b->get(), a->get()}, Tokens{two, empty}, "no tokens"},
      {{b->get(), a->get()}, Tokens{two, bad_id}, "outside the vocabulary"},
      {{b->get(), a->get()}, Tokens{two, four}, "capacity exceeded"},
  };
  for (Backend* backend : {cpu, static_cast<Backend*>(&by_forward)}) {
    for (const Case& k : cases) {
      EXPECT_EQ(backend->ForwardBatch(k.seqs, k.tokens).code(), absl::StatusCode::kInvalidArgument)
          << backend->name() << ": " << k.what;
      EXPECT_EQ((*a)->length(), 5) << k.what;
      EXPECT_EQ((*b)->length(), 0) << k.what;
    }
  }
}

// A memory tier holding `engine`'s payloads of `blocks`, as an indexer would have stored them;
// null (after a test failure) if that fails.
std::unique_ptr<MemoryTier> StoreWithBlocks(Engine& engine, const std::vector<std::vector<int32_t>>& blocks) {
  auto store = MemoryTier::Create({.capacity_bytes = 64 << 20});
  EXPECT_TRUE(store.ok()) << store.status();
  const std::vector<absl::Span<const int32_t>> spans(blocks.begin(), blocks.end());
  auto payloads = engine.EncodeBlocks(spans);
  EXPECT_TRUE(payloads.ok()) << payloads.status();
  if (!store.ok() || !payloads.ok()) return nullptr;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const absl::Status put = (*store)->Put(engine.KeyOf(blocks[i]), (*payloads)[i]);
    EXPECT_TRUE(put.ok()) << put;
    if (!put.ok()) return nullptr;
  }
  return *std::move(store);
}

// The fixture's blocks and final block as a request, the answer of `engine` encoding every block
// itself (an empty store of its own), and a memory tier holding every block; a null store after
// a test failure.
struct FoundRequest {
  GenerateRequest request;
  GenerateResult reference;
  std::unique_ptr<MemoryTier> store;
};
FoundRequest RequestWithStoredBlocks(Engine& engine, const Reference& ref, int32_t max_new_tokens) {
  FoundRequest f;
  f.request.blocks = ref.blocks;
  f.request.final_block = ref.final_block;
  f.request.max_new_tokens = max_new_tokens;
  f.request.return_logits = true;
  auto reference = engine.Generate(f.request);
  EXPECT_TRUE(reference.ok()) << reference.status();
  if (!reference.ok()) return f;
  f.reference = *std::move(reference);
  f.store = StoreWithBlocks(engine, ref.blocks);
  return f;
}

// A store whose Gets wait until `encoding` is notified (up to `wait`), else fail
// DEADLINE_EXCEEDED; a Get of `corrupt` returns half its payload and one of `evicted` NOT_FOUND
// (as if evicted after the Lookup). Records the keys deleted.
class GatedStore final : public testing::ForwardingStore {
 public:
  GatedStore(BlockStore* inner, absl::Duration wait) : ForwardingStore(inner), wait_(wait) {}
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override {
    if (!encoding.WaitForNotificationWithTimeout(wait_)) {
      return absl::DeadlineExceededError("a Get waited for the encoding of the misses in vain");
    }
    if (key == evicted) return absl::NotFoundError("evicted");
    absl::StatusOr<BlockBytes> got = inner_->Get(key);
    if (got.ok() && key == corrupt) got->bytes = got->bytes.subspan(0, got->bytes.size() / 2);
    return got;
  }
  absl::Status Delete(const BlockKey& key) override {
    absl::MutexLock lock(&mu_);
    deleted_.push_back(key);
    return inner_->Delete(key);
  }
  std::vector<BlockKey> deleted() const {
    absl::MutexLock lock(&mu_);
    return deleted_;
  }

  absl::Notification encoding;
  BlockKey corrupt, evicted;

 private:
  absl::Duration wait_;
  mutable absl::Mutex mu_;
  std::vector<BlockKey> deleted_ ABSL_GUARDED_BY(mu_);
};

// The fetch of the found blocks runs while the misses are encoded, shown without timing: the
// store's Gets wait until the backend starts encoding, which only a fetch on another thread
// survives (done one after the other, the first Get would wait 10 s and fail the request).
// Found blocks that turn out unusable or evicted are encoded afterwards in a second pass and
// their records replaced; the answer is the one of a request that encodes everything.
TEST(EngineTest, FetchOverlapsTheEncodingOfMisses) {
  const FixtureSpec f = testing::AllFixtures()[0];
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  Reference ref = testing::LoadReference(f.dir);
  const ModelConfig& c = l.model.config;
  std::mt19937_64 rng(std::random_device{}());
  GenerateRequest req;
  req.blocks = ref.blocks;  // 4 blocks, stored below; then 3 new ones
  for (int i = 0; i < 3; ++i) req.blocks.push_back(RandomTokens(rng, 8 + rng() % 30, c.vocab_size));
  req.final_block = ref.final_block;
  req.max_new_tokens = 6;
  req.return_logits = true;
  // The reference: everything encoded (an empty store of its own).
  auto reference = l.engine->Generate(req);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ(reference->cache_misses, 7);

  std::unique_ptr<MemoryTier> inner = StoreWithBlocks(*l.engine, ref.blocks);
  ASSERT_NE(inner, nullptr);
  GatedStore gated(inner.get(), absl::Seconds(10));
  gated.corrupt = l.engine->KeyOf(ref.blocks[1]);
  gated.evicted = l.engine->KeyOf(ref.blocks[3]);
  auto cpu = CreateCpuBackend(l.model.weights, c);
  ASSERT_TRUE(cpu.ok());
  std::vector<std::vector<int64_t>> passes;
  auto observed =
      std::make_unique<ObservedBackend>(std::move(*cpu), [&](const std::vector<int64_t>& sizes) {
        passes.push_back(sizes);
        if (!gated.encoding.HasBeenNotified()) gated.encoding.Notify();
      });
  auto engine = Engine::Create(std::move(observed), &gated, l.model.fingerprint);
  ASSERT_TRUE(engine.ok());
  auto r = (*engine)->Generate(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cache_hits, 2);    // blocks 0 and 2
  EXPECT_EQ(r->cache_misses, 5);  // the 3 new ones, then the corrupt and the evicted one
  ASSERT_EQ(passes.size(), 2u);
  EXPECT_EQ(passes[0], (std::vector<int64_t>{static_cast<int64_t>(req.blocks[4].size()),
                                             static_cast<int64_t>(req.blocks[5].size()),
                                             static_cast<int64_t>(req.blocks[6].size())}));
  EXPECT_EQ(passes[1], (std::vector<int64_t>{static_cast<int64_t>(ref.blocks[1].size()),
                                             static_cast<int64_t>(ref.blocks[3].size())}));
  EXPECT_EQ(gated.deleted(), (std::vector<BlockKey>{gated.corrupt, gated.evicted}));
  EXPECT_GT(r->timings.fetch_ms, 0);
  EXPECT_GT(r->fetched_bytes, 0u);
  EXPECT_EQ(r->cache_put_errors, 0);
  EXPECT_EQ(r->tokens, reference->tokens);
  EXPECT_EQ(r->logits, reference->logits);  // batch-invariant encoding: however the blocks met

  // The gate does stop a fetch that does not overlap an encoding: with every block found there
  // is nothing to encode, the Gets run first and wait in vain.
  GatedStore closed(inner.get(), absl::Milliseconds(50));
  auto cpu2 = CreateCpuBackend(l.model.weights, c);
  ASSERT_TRUE(cpu2.ok());
  auto plain = Engine::Create(std::move(*cpu2), &closed, l.model.fingerprint);
  ASSERT_TRUE(plain.ok());
  GenerateRequest found_only = req;
  found_only.blocks = ref.blocks;
  EXPECT_EQ((*plain)->Generate(found_only).status().code(), absl::StatusCode::kDeadlineExceeded);
}

// Records the blocks handed to MakeResident (then the CPU backend's answer: none kept, so all
// are appended with AppendBlock, also recorded) and notifies `placed` at the first.
class PlacingBackend final : public ForwardOnlyBackend {
 public:
  explicit PlacingBackend(std::unique_ptr<Backend> inner) : ForwardOnlyBackend(std::move(inner)) {}
  std::string_view name() const override { return "placing"; }
  ResidentBlock MakeResident(const BlockView& block) override {
    {
      absl::MutexLock lock(&mu_);
      placed_.push_back(block.meta().key);
    }
    if (!placed.HasBeenNotified()) placed.Notify();
    return inner_->MakeResident(block);
  }
  absl::Status AppendBlock(KvSequence& seq, const BlockView& block) override {
    {
      absl::MutexLock lock(&mu_);
      appended_.push_back(block.meta().key);
    }
    return inner_->AppendBlock(seq, block);
  }
  std::vector<BlockKey> placed_keys() const {
    absl::MutexLock lock(&mu_);
    return placed_;
  }
  std::vector<BlockKey> appended_keys() const {
    absl::MutexLock lock(&mu_);
    return appended_;
  }

  absl::Notification placed;

 private:
  mutable absl::Mutex mu_;
  std::vector<BlockKey> placed_ ABSL_GUARDED_BY(mu_);
  std::vector<BlockKey> appended_ ABSL_GUARDED_BY(mu_);
};

// A store whose Get of `held_back` waits (up to 10 s, else DEADLINE_EXCEEDED) for `release`.
class HoldBackStore final : public testing::ForwardingStore {
 public:
  HoldBackStore(BlockStore* inner, BlockKey held_back, absl::Notification* release)
      : ForwardingStore(inner), held_back_(held_back), release_(release) {}
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override {
    if (key == held_back_ && !release_->WaitForNotificationWithTimeout(absl::Seconds(10))) {
      return absl::DeadlineExceededError("the held-back Get waited in vain");
    }
    return inner_->Get(key);
  }

 private:
  BlockKey held_back_;
  absl::Notification* release_;
};

// Fetched blocks go to the backend's MakeResident as they arrive, not after the whole fetch:
// the store hands out the last block only once the first has been made resident (a placement
// after the fetch would leave that Get waiting in vain). Blocks still unplaced when the fetch
// ends (at least the last to arrive) are left to AppendBlock, which copies them under the
// prefill. No block is handed to MakeResident twice, every one is appended once, and the answer
// is the one of a request that encodes everything.
TEST(EngineTest, FetchedBlocksAreMadeResidentAsTheyArrive) {
  const FixtureSpec f = testing::AllFixtures()[0];
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  Reference ref = testing::LoadReference(f.dir);
  FoundRequest found = RequestWithStoredBlocks(*l.engine, ref, 6);
  ASSERT_NE(found.store, nullptr);
  const GenerateRequest& req = found.request;
  std::vector<BlockKey> keys;
  for (const auto& b : ref.blocks) keys.push_back(l.engine->KeyOf(b));
  auto cpu = CreateCpuBackend(l.model.weights, l.model.config);
  ASSERT_TRUE(cpu.ok());
  auto placing = std::make_unique<PlacingBackend>(std::move(*cpu));
  PlacingBackend* backend = placing.get();
  HoldBackStore store(found.store.get(), keys.back(), &backend->placed);
  auto engine = Engine::Create(std::move(placing), &store, l.model.fingerprint);
  ASSERT_TRUE(engine.ok());
  auto r = (*engine)->Generate(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cache_hits, static_cast<int64_t>(ref.blocks.size()));
  EXPECT_EQ(r->cache_misses, 0);
  std::vector<BlockKey> placed = backend->placed_keys(), appended = backend->appended_keys();
  std::sort(placed.begin(), placed.end());
  std::sort(appended.begin(), appended.end());
  std::sort(keys.begin(), keys.end());
  EXPECT_FALSE(placed.empty());
  EXPECT_LT(placed.size(), keys.size());  // the last arrival goes with the prefill
  EXPECT_EQ(std::adjacent_find(placed.begin(), placed.end()), placed.end());
  EXPECT_TRUE(std::includes(keys.begin(), keys.end(), placed.begin(), placed.end()));
  EXPECT_EQ(appended, keys);
  EXPECT_EQ(r->tokens, found.reference.tokens);
  EXPECT_EQ(r->logits, found.reference.logits);
}

// A store whose Gets each wait (up to `wait`, else DEADLINE_EXCEEDED) until `needed` Gets have
// been in progress at once.
class RendezvousStore final : public testing::ForwardingStore {
 public:
  RendezvousStore(BlockStore* inner, int needed, absl::Duration wait)
      : ForwardingStore(inner), needed_(needed), wait_(wait) {}
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override {
    {
      absl::MutexLock lock(&mu_);
      if (++in_flight_ >= needed_) met_ = true;
      const bool met = mu_.AwaitWithTimeout(absl::Condition(&met_), wait_);
      --in_flight_;
      if (!met) return absl::DeadlineExceededError("fewer Gets than needed ran at once");
    }
    return inner_->Get(key);
  }

 private:
  const int needed_;
  const absl::Duration wait_;
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool met_ ABSL_GUARDED_BY(mu_) = false;
};

// A request's found blocks are fetched fetch_threads at a time, shown without timing: the
// store answers only once 4 Gets run at once, which 4 fetch threads reach and 1 does not (its
// first Get waits in vain). The answer is the one of a request that encodes everything.
TEST(EngineTest, FoundBlocksAreFetchedConcurrently) {
  const FixtureSpec f = testing::AllFixtures()[0];
  TempDir dir;
  Loaded l = Load(f, dir / "cache");
  Reference ref = testing::LoadReference(f.dir);
  ASSERT_GE(ref.blocks.size(), 4u);
  FoundRequest found = RequestWithStoredBlocks(*l.engine, ref, 4);
  ASSERT_NE(found.store, nullptr);
  const GenerateRequest& req = found.request;
  for (int threads : {4, 1}) {
    SCOPED_TRACE(threads);
    RendezvousStore store(found.store.get(), 4, threads == 4 ? absl::Seconds(10) : absl::Milliseconds(50));
    auto cpu = CreateCpuBackend(l.model.weights, l.model.config);
    ASSERT_TRUE(cpu.ok());
    EngineOptions o;
    o.fetch_threads = threads;
    auto engine = Engine::Create(std::move(*cpu), &store, l.model.fingerprint, o);
    ASSERT_TRUE(engine.ok());
    auto r = (*engine)->Generate(req);
    if (threads == 1) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
      continue;
    }
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->cache_hits, static_cast<int64_t>(ref.blocks.size()));
    EXPECT_EQ(r->tokens, found.reference.tokens);
    EXPECT_EQ(r->logits, found.reference.logits);
  }
  EngineOptions bad;
  for (int threads : {0, 65}) {
    bad.fetch_threads = threads;
    EXPECT_EQ(bad.Validate().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace kvblock
