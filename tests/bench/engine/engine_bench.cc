// CPU engine benchmark: prefill and decode tokens/s of a ~100M-parameter random Llama (written
// as safetensors into a temporary directory by this program), with OpenBLAS sgemm GFLOP/s
// measured in the same run as the ceiling (these machines are noisy: compare ratios).
//
//   engine_bench [--smoke] [--prompt N] [--decode N] [--batches B1,B2,...]
//                [--encode-sizes N1,N2,...] [--json FILE]
//
// Reports (stdout, and --json FILE): sgemm GFLOP/s at the model's projection shapes; full-mode
// prefill of N tokens (tokens/s, GFLOP/s, fraction of the sgemm rate); block-mode TTFT for a
// 64-token final block over cached blocks of the same total length, against full-mode TTFT;
// decode tokens/s; and batched decode (Backend::DecodeStep over B sequences of N cached tokens
// each, --decode steps) in tokens/s at each batch size (default 1,4,8,16), with the ratio to the
// batch-1 rate of the same run; and block encoding (Engine::EncodeBlocks in passes of up to
// EngineOptions::encode_batch_tokens, default 4096), with the CPU backend's default
// batch-invariant ForwardBatch and with one sgemm per pass (batch_invariant = false), against
// Engine::EncodeBlock one by one on the same fresh random blocks, for blocks of each
// --encode-sizes length (default 512,64; 4096 tokens of blocks each), best of 2 interleaved
// runs, with the ratios. --smoke uses a tiny model so ctest can check the program runs.
#include <cblas.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cache/dtype.h"
#include "cache/tiered_store.h"
#include "nlohmann/json.hpp"
#include "worker/engine/cpu_backend.h"
#include "worker/engine/engine.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"

namespace kvblock {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t hidden, layers, heads, kv_heads, head_dim, inter, vocab;
};

double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Writes config.json + model.safetensors of a random Llama with `s` into `dir`.
int64_t WriteRandomLlama(const std::string& dir, const Shape& s) {
  fs::create_directories(dir);
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", s.hidden},
                        {"intermediate_size", s.inter},          {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads},        {"num_key_value_heads", s.kv_heads},
                        {"head_dim", s.head_dim},                {"vocab_size", s.vocab},
                        {"max_position_embeddings", 8192},       {"rms_norm_eps", 1e-5},
                        {"rope_theta", 500000.0},                {"tie_word_embeddings", true},
                        {"hidden_act", "silu"},                  {"eos_token_id", 2}};
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed_tokens.weight", {s.vocab, s.hidden}}, {"model.norm.weight", {s.hidden}}};
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    shapes.push_back({p + "input_layernorm.weight", {s.hidden}});
    shapes.push_back({p + "post_attention_layernorm.weight", {s.hidden}});
    shapes.push_back({p + "self_attn.q_proj.weight", {s.heads * s.head_dim, s.hidden}});
    shapes.push_back({p + "self_attn.k_proj.weight", {s.kv_heads * s.head_dim, s.hidden}});
    shapes.push_back({p + "self_attn.v_proj.weight", {s.kv_heads * s.head_dim, s.hidden}});
    shapes.push_back({p + "self_attn.o_proj.weight", {s.hidden, s.heads * s.head_dim}});
    shapes.push_back({p + "mlp.gate_proj.weight", {s.inter, s.hidden}});
    shapes.push_back({p + "mlp.up_proj.weight", {s.inter, s.hidden}});
    shapes.push_back({p + "mlp.down_proj.weight", {s.hidden, s.inter}});
  }
  std::mt19937 gen(1);
  std::vector<std::vector<float>> data;
  std::vector<TensorToWrite> tensors;
  int64_t params = 0;
  for (const auto& [name, shape] : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    params += n;
    std::vector<float> v(n);
    const bool norm = shape.size() == 1;
    const float scale = norm ? 0.0f : 1.0f / std::sqrt(static_cast<float>(shape[1]));
    std::uniform_real_distribution<float> dist(-1.7f, 1.7f);
    for (float& x : v) x = norm ? 1.0f + 0.1f * dist(gen) : scale * dist(gen);
    data.push_back(std::move(v));
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    tensors.push_back({shapes[i].first, TensorDtype::kF32, shapes[i].second,
                       absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(data[i].data()),
                                           data[i].size() * 4)});
  }
  if (!WriteSafetensors(dir + "/model.safetensors", tensors).ok()) return -1;
  return params;
}

// Best-of-3 sgemm rate for C[m][n] = A[m][k] B[n][k]^T, in GFLOP/s.
double SgemmGflops(int m, int n, int k) {
  std::vector<float> a(int64_t{m} * k, 0.5f), b(int64_t{n} * k, 0.25f), c(int64_t{m} * n);
  double best = 0;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t0 = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k,
                0.0f, c.data(), n);
    const double s = Seconds(t0);
    if (rep > 0) best = std::max(best, 2.0 * m * n * k / s / 1e9);
  }
  return best;
}

// Decode tokens/s of Backend::DecodeStep over `batch` sequences that each hold `context`
// cached tokens (the same encoded block appended to each), `steps` steps of fresh random tokens.
absl::StatusOr<double> BatchedDecodeRate(Backend& backend, const BlockView& block, int64_t context,
                                         int batch, int64_t steps, std::mt19937& gen) {
  const int64_t vocab = backend.config().vocab_size;
  std::vector<std::unique_ptr<KvSequence>> owned;
  std::vector<KvSequence*> seqs;
  for (int i = 0; i < batch; ++i) {
    absl::StatusOr<std::unique_ptr<KvSequence>> seq = backend.NewSequence(context + steps);
    if (!seq.ok()) return seq.status();
    if (absl::Status s = backend.AppendBlock(**seq, block); !s.ok()) return s;
    seqs.push_back(seq->get());
    owned.push_back(*std::move(seq));
  }
  std::uniform_int_distribution<int32_t> tok(3, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> tokens(batch);
  std::vector<float> logits(batch * vocab);
  const auto t0 = Clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    for (int32_t& t : tokens) t = tok(gen);
    if (absl::Status s = backend.DecodeStep(seqs, tokens, absl::MakeSpan(logits)); !s.ok()) return s;
  }
  return batch * steps / Seconds(t0);
}

// Seconds to encode `blocks`: one by one, batched, batched with one sgemm per pass; best of
// `reps` interleaved runs of each.
struct EncodeTimes {
  double alone = 1e30, batched = 1e30, one_gemm = 1e30;
};
absl::StatusOr<EncodeTimes> TimeEncoding(Engine& engine, Engine& one_gemm_engine,
                                         const std::vector<std::vector<int32_t>>& blocks,
                                         int reps) {
  const std::vector<absl::Span<const int32_t>> spans(blocks.begin(), blocks.end());
  EncodeTimes t;
  for (int rep = 0; rep < reps; ++rep) {
    auto t0 = Clock::now();
    for (const auto& b : blocks) {
      absl::StatusOr<std::vector<uint8_t>> p = engine.EncodeBlock(b);
      if (!p.ok()) return p.status();
    }
    t.alone = std::min(t.alone, Seconds(t0));
    for (auto [e, best] :
         {std::pair{&engine, &t.batched}, std::pair{&one_gemm_engine, &t.one_gemm}}) {
      t0 = Clock::now();
      absl::StatusOr<std::vector<std::vector<uint8_t>>> p = e->EncodeBlocks(spans);
      if (!p.ok()) return p.status();
      *best = std::min(*best, Seconds(t0));
    }
  }
  return t;
}

int Main(int argc, char** argv) {
  bool smoke = false;
  int64_t prompt = 512, decode = 32;
  std::vector<int> batches = {1, 4, 8, 16};
  std::vector<int> encode_sizes = {512, 64};
  std::string json_path;
  bool usage = false;
  for (int i = 1; i < argc && !usage; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") smoke = true;
    else if (a == "--prompt" && i + 1 < argc) prompt = std::atoll(argv[++i]);
    else if (a == "--decode" && i + 1 < argc) decode = std::atoll(argv[++i]);
    else if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else if ((a == "--batches" || a == "--encode-sizes") && i + 1 < argc) {
      std::vector<int>& list = a == "--batches" ? batches : encode_sizes;
      list.clear();
      for (absl::string_view part : absl::StrSplit(argv[++i], ',')) {
        int b = 0;
        usage |= !absl::SimpleAtoi(part, &b) || b <= 0;
        list.push_back(b);
      }
    } else {
      usage = true;
    }
  }
  if (usage || batches.empty() || encode_sizes.empty() || prompt <= 0 || decode <= 0) {
    std::cerr << "usage: engine_bench [--smoke] [--prompt N] [--decode N] [--batches B1,B2,...] "
                 "[--encode-sizes N1,N2,...] [--json FILE]\n";
    return 2;
  }
  Shape s = smoke ? Shape{64, 2, 4, 2, 16, 128, 512} : Shape{768, 12, 12, 4, 64, 2048, 32000};
  if (smoke) prompt = 64, decode = 4, batches = {1, 2, 4}, encode_sizes = {16};
  if (batches.front() != 1) batches.insert(batches.begin(), 1);  // the baseline comes first
  const fs::path dir = fs::temp_directory_path() / absl::StrCat("kvblock-bench-", ::getpid());
  const auto t_write = Clock::now();
  const int64_t params = WriteRandomLlama((dir / "model").string(), s);
  if (params < 0) {
    std::cerr << "engine_bench: cannot write the model\n";
    return 1;
  }
  const double write_s = Seconds(t_write);
  ModelLoadOptions mo;
  mo.model_id = "bench";
  const auto t_load = Clock::now();
  absl::StatusOr<LoadedModel> model = LoadModel((dir / "model").string(), mo);
  if (!model.ok()) {
    std::cerr << "engine_bench: " << model.status() << "\n";
    return 1;
  }
  const double load_s = Seconds(t_load);
  absl::StatusOr<std::unique_ptr<BlockStore>> store =
      OpenEmbeddedStore((dir / "cache").string(), 1ull << 30);
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(model->weights, model->config);
  if (!store.ok() || !backend.ok()) {
    std::cerr << "engine_bench: cannot open the store or backend\n";
    return 1;
  }
  Backend* raw_backend = backend->get();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(std::move(*backend), store->get(), model->fingerprint);
  absl::StatusOr<std::unique_ptr<Backend>> one_gemm_backend =
      CreateCpuBackend(model->weights, model->config, {.batch_invariant = false});
  if (!engine.ok() || !one_gemm_backend.ok()) return 1;
  absl::StatusOr<std::unique_ptr<Engine>> one_gemm_engine =
      Engine::Create(std::move(*one_gemm_backend), store->get(), model->fingerprint);
  if (!one_gemm_engine.ok()) return 1;

  // Ceiling: sgemm at the shapes the prefill runs (tokens x out x in), same run.
  const double gemm_qkv = SgemmGflops(prompt, s.heads * s.head_dim, s.hidden);
  const double gemm_mlp = SgemmGflops(prompt, s.inter, s.hidden);
  const double gemm_down = SgemmGflops(prompt, s.hidden, s.inter);
  const double gemm_ceiling = std::max({gemm_qkv, gemm_mlp, gemm_down});

  std::mt19937 gen(3);
  std::uniform_int_distribution<int32_t> tok(3, s.vocab - 1);
  auto random_tokens = [&](int64_t n) {
    std::vector<int32_t> v(n);
    for (int32_t& t : v) t = tok(gen);
    return v;
  };
  const int64_t linear_params = params - s.vocab * s.hidden;  // without the embedding lookup
  // Full-mode prefill of `prompt` tokens (one Forward), best of 2.
  double prefill_s = 1e30;
  for (int rep = 0; rep < 2; ++rep) {
    auto seq = raw_backend->NewSequence(prompt);
    std::vector<float> logits(s.vocab);
    std::vector<int32_t> ids = random_tokens(prompt);
    const auto t0 = Clock::now();
    if (!raw_backend->Forward(**seq, ids, 1, absl::MakeSpan(logits)).ok()) return 1;
    prefill_s = std::min(prefill_s, Seconds(t0));
  }
  const double attn_flops = 4.0 * s.layers * s.heads * s.head_dim * (prompt * (prompt + 1) / 2.0);
  const double prefill_flops = 2.0 * (linear_params - 0) * prompt + attn_flops;
  const double prefill_gflops = prefill_flops / prefill_s / 1e9;

  // Block mode vs full mode TTFT for the same prompt: blocks of 128 tokens + a 64-token final.
  GenerateRequest req;
  const int64_t final_len = std::min<int64_t>(64, prompt / 4);
  const int64_t block_len = smoke ? 16 : 128;
  for (int64_t i = 0; i < std::max<int64_t>(1, (prompt - final_len) / block_len); ++i) {
    req.blocks.push_back(random_tokens(block_len));
  }
  req.final_block = random_tokens(final_len);
  req.max_new_tokens = static_cast<int32_t>(decode);
  absl::StatusOr<GenerateResult> cold = (*engine)->Generate(req);  // misses: encodes and stores
  absl::StatusOr<GenerateResult> warm = (*engine)->Generate(req);  // all hits
  req.mode = AttentionMode::kFull;
  absl::StatusOr<GenerateResult> full = (*engine)->Generate(req);
  if (!cold.ok() || !warm.ok() || !full.ok()) {
    std::cerr << "engine_bench: generate failed\n";
    return 1;
  }
  const double decode_tps = warm->tokens.size() > 1
                                ? (warm->tokens.size() - 1) / (warm->timings.decode_ms / 1e3)
                                : 0;
  int64_t block_tokens = 0;
  for (const auto& b : req.blocks) block_tokens += b.size();

  // Batched decode over sequences holding `prompt` cached tokens; batch 1 first is the baseline.
  absl::StatusOr<std::vector<uint8_t>> context_block = (*engine)->EncodeBlock(random_tokens(prompt));
  if (!context_block.ok()) {
    std::cerr << "engine_bench: " << context_block.status() << "\n";
    return 1;
  }
  absl::StatusOr<BlockView> context_view = BlockView::Parse(*context_block);
  if (!context_view.ok()) return 1;
  nlohmann::json batched = nlohmann::json::array();
  double batch1_rate = 0;
  for (int b : batches) {
    absl::StatusOr<double> rate = BatchedDecodeRate(*raw_backend, *context_view, prompt, b, decode, gen);
    if (!rate.ok()) {
      std::cerr << "engine_bench: batched decode: " << rate.status() << "\n";
      return 1;
    }
    if (batch1_rate == 0) batch1_rate = *rate;
    batched.push_back({{"batch", b}, {"tokens_per_s", *rate}, {"vs_batch_1", *rate / batch1_rate}});
  }

  // Encoding 4096 tokens of fresh blocks (256 with --smoke) one by one and batched.
  nlohmann::json encoding = nlohmann::json::array();
  const int64_t encode_total = smoke ? 256 : 4096;
  for (int size : encode_sizes) {
    std::vector<std::vector<int32_t>> blocks;
    for (int64_t n = 0; n + size <= encode_total; n += size) blocks.push_back(random_tokens(size));
    if (blocks.empty()) blocks.push_back(random_tokens(size));
    absl::StatusOr<EncodeTimes> t = TimeEncoding(**engine, **one_gemm_engine, blocks, 2);
    if (!t.ok()) {
      std::cerr << "engine_bench: encoding: " << t.status() << "\n";
      return 1;
    }
    const double tokens = static_cast<double>(blocks.size()) * size;
    encoding.push_back({{"block_tokens", size}, {"blocks", blocks.size()},
                        {"one_by_one_tokens_per_s", tokens / t->alone},
                        {"batched_tokens_per_s", tokens / t->batched},
                        {"batched_vs_one_by_one", t->alone / t->batched},
                        {"one_gemm_tokens_per_s", tokens / t->one_gemm},
                        {"one_gemm_vs_one_by_one", t->alone / t->one_gemm}});
  }

  nlohmann::json report = {
      {"model", {{"params", params}, {"hidden", s.hidden}, {"layers", s.layers},
                 {"heads", s.heads}, {"kv_heads", s.kv_heads}, {"head_dim", s.head_dim},
                 {"intermediate", s.inter}, {"vocab", s.vocab}}},
      {"threads", std::thread::hardware_concurrency()},
      {"openblas_threads", openblas_get_num_threads()},
      {"write_model_s", write_s},
      {"load_model_s", load_s},
      {"sgemm_gflops", {{"qkv_shape", gemm_qkv}, {"mlp_up_shape", gemm_mlp},
                        {"mlp_down_shape", gemm_down}, {"ceiling", gemm_ceiling}}},
      {"prefill", {{"tokens", prompt}, {"seconds", prefill_s}, {"tokens_per_s", prompt / prefill_s},
                   {"gflops", prefill_gflops}, {"fraction_of_sgemm", prefill_gflops / gemm_ceiling}}},
      {"decode", {{"tokens", warm->tokens.size()}, {"tokens_per_s", decode_tps},
                  {"context", block_tokens + final_len}}},
      {"batched_decode", {{"context", prompt}, {"steps", decode}, {"rates", batched}}},
      {"encoding", {{"encode_batch_tokens", EngineOptions{}.encode_batch_tokens},
                    {"sizes", encoding}}},
      {"block_mode", {{"blocks", req.blocks.size()}, {"block_tokens", block_tokens},
                      {"final_tokens", final_len},
                      {"ttft_cold_ms", cold->timings.ttft_ms},
                      {"ttft_cached_ms", warm->timings.ttft_ms},
                      {"cached_hits", warm->cache_hits},
                      {"ttft_full_mode_ms", full->timings.ttft_ms},
                      {"speedup_cached_vs_full", full->timings.ttft_ms / warm->timings.ttft_ms}}},
  };
  std::cout << report.dump(2) << "\n";
  if (!json_path.empty()) std::ofstream(json_path) << report.dump(2) << "\n";
  std::error_code ec;
  store->reset();
  fs::remove_all(dir, ec);
  const bool sane = warm->cache_hits == static_cast<int64_t>(req.blocks.size()) && prefill_s > 0;
  return sane ? 0 : 1;
}

}  // namespace
}  // namespace kvblock

int main(int argc, char** argv) { return kvblock::Main(argc, argv); }
