// CPU time to first token, block mode with every block cached vs full mode, at growing prompt
// lengths, on a small random Llama (worker/demo/random_model.h) and the real Engine over an
// embedded store (memory over RocksDB). The full-mode TTFT of the same prompt, measured in the
// same run, is the baseline; the ratio full / cached-block is what Block-Attention buys.
//
//   ttft_sweep [--lengths 512,1024,2048,4096] [--block-tokens 256] [--final-tokens 64]
//              [--reps 3] [--hidden 256] [--layers 4] [--json FILE] [--smoke]
//
// Per length: blocks of block-tokens + one final block (the prompt's total is the length);
// "cold" is the first block-mode run (encodes and stores every block), "cached" the best of
// --reps block-mode runs with all blocks hits, "full" the best of --reps full-mode runs. The
// block-mode tokens must be equal cold and cached, and every cached run must be all hits
// (exit 1 otherwise). --smoke: tiny model and lengths, so ctest checks the program works.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/tiered_store.h"
#include "nlohmann/json.hpp"
#include "worker/demo/random_model.h"
#include "worker/engine/cpu_backend.h"
#include "worker/engine/engine.h"
#include "worker/model/model.h"

namespace kvblock {
namespace {

namespace fs = std::filesystem;

struct SweepOptions {
  std::vector<int64_t> lengths = {512, 1024, 2048, 4096};  // prompt tokens
  int64_t block_tokens = 256;                              // tokens per cached block
  int64_t final_tokens = 64;                               // final block tokens
  int reps = 3;                                            // timed runs per mode (best kept)
  RandomLlamaOptions model;                                // hidden 256, 4 layers by default
  std::string json_path;
  bool smoke = false;
};

struct Point {
  int64_t length = 0, blocks = 0;
  double cold_ms = 0, cached_ms = 1e30, full_ms = 1e30;
};

int Run(SweepOptions o) {
  if (o.smoke) {
    o.lengths = {128, 256};
    o.block_tokens = 32;
    o.final_tokens = 16;
    o.reps = 1;
    o.model.hidden_size = 64;
    o.model.intermediate_size = 128;
    o.model.num_layers = 2;
  }
  if (o.lengths.empty() || o.block_tokens <= 0 || o.final_tokens <= 0 || o.reps <= 0 ||
      *std::min_element(o.lengths.begin(), o.lengths.end()) <= o.final_tokens) {
    std::cerr << "ttft_sweep: need lengths > --final-tokens > 0, --block-tokens > 0, --reps > 0\n";
    return 2;
  }
  const int64_t longest = *std::max_element(o.lengths.begin(), o.lengths.end());
  o.model.max_position_embeddings = std::max<int64_t>(longest + 64, 1024);
  const fs::path dir = fs::temp_directory_path() / absl::StrCat("kvblock-ttft-sweep-", getpid());
  if (absl::Status s = WriteRandomLlama((dir / "model").string(), o.model); !s.ok()) {
    std::cerr << "ttft_sweep: " << s << "\n";
    return 1;
  }
  absl::StatusOr<LoadedModel> model = LoadModel((dir / "model").string(), {});
  if (!model.ok()) {
    std::cerr << "ttft_sweep: " << model.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::unique_ptr<BlockStore>> store =
      OpenEmbeddedStore((dir / "store").string(), uint64_t{2} << 30);
  if (!store.ok()) {
    std::cerr << "ttft_sweep: " << store.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateCpuBackend(model->weights, model->config);
  if (!backend.ok()) {
    std::cerr << "ttft_sweep: " << backend.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(std::move(*backend), store->get(), model->fingerprint);
  if (!engine.ok()) {
    std::cerr << "ttft_sweep: " << engine.status() << "\n";
    return 1;
  }

  std::mt19937_64 rng(std::random_device{}());
  std::uniform_int_distribution<int32_t> byte(0, 255);
  auto random_ids = [&](int64_t n) {
    std::vector<int32_t> v(n);
    for (int32_t& t : v) t = byte(rng);
    return v;
  };
  bool sane = true;
  std::vector<Point> points;
  for (int64_t length : o.lengths) {
    GenerateRequest req;
    req.max_new_tokens = 1;
    req.final_block = random_ids(o.final_tokens);
    for (int64_t left = length - o.final_tokens; left > 0; left -= o.block_tokens) {
      req.blocks.push_back(random_ids(std::min(left, o.block_tokens)));
    }
    Point p{length, static_cast<int64_t>(req.blocks.size())};
    absl::StatusOr<GenerateResult> cold = (*engine)->Generate(req);
    if (!cold.ok()) {
      std::cerr << "ttft_sweep: " << cold.status() << "\n";
      return 1;
    }
    p.cold_ms = cold->timings.ttft_ms;
    for (int r = 0; r < o.reps; ++r) {
      absl::StatusOr<GenerateResult> cached = (*engine)->Generate(req);
      if (!cached.ok()) return 1;
      sane = sane && cached->cache_hits == p.blocks && cached->tokens == cold->tokens;
      p.cached_ms = std::min(p.cached_ms, cached->timings.ttft_ms);
    }
    req.mode = AttentionMode::kFull;
    for (int r = 0; r < o.reps; ++r) {
      absl::StatusOr<GenerateResult> full = (*engine)->Generate(req);
      if (!full.ok()) return 1;
      p.full_ms = std::min(p.full_ms, full->timings.ttft_ms);
    }
    std::cout << absl::StrFormat(
        "length %5d (%2d blocks of <= %d + %d final): full %8.1f ms, block cached %7.1f ms "
        "(x%.1f faster), block cold %8.1f ms\n",
        length, p.blocks, o.block_tokens, o.final_tokens, p.full_ms, p.cached_ms,
        p.full_ms / p.cached_ms, p.cold_ms);
    points.push_back(p);
  }

  nlohmann::json report = {{"model",
                            {{"hidden", o.model.hidden_size},
                             {"intermediate", o.model.intermediate_size},
                             {"layers", o.model.num_layers},
                             {"heads", o.model.num_heads},
                             {"kv_heads", o.model.num_kv_heads},
                             {"vocab", kRandomLlamaVocab},
                             {"params", RandomLlamaParameterCount(o.model)}}},
                           {"hardware_threads", std::thread::hardware_concurrency()},
                           {"block_tokens", o.block_tokens},
                           {"final_tokens", o.final_tokens},
                           {"reps", o.reps},
                           {"points", nlohmann::json::array()}};
  for (const Point& p : points) {
    report["points"].push_back({{"prompt_tokens", p.length},
                                {"blocks", p.blocks},
                                {"ttft_full_ms", p.full_ms},
                                {"ttft_block_cached_ms", p.cached_ms},
                                {"ttft_block_cold_ms", p.cold_ms},
                                {"full_over_cached", p.full_ms / p.cached_ms}});
  }
  if (!o.json_path.empty()) std::ofstream(o.json_path) << report.dump(2) << "\n";
  engine->reset();
  store->reset();
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!sane) std::cerr << "ttft_sweep: cached runs were not all hits or changed the tokens\n";
  return sane ? 0 : 1;
}

}  // namespace
}  // namespace kvblock

int main(int argc, char** argv) {
  kvblock::SweepOptions o;
  CLI::App app{"CPU TTFT: block mode (blocks cached) vs full mode at growing prompt lengths"};
  app.add_option("--lengths", o.lengths, "Prompt lengths (tokens)")->delimiter(',');
  app.add_option("--block-tokens", o.block_tokens, "Tokens per block")->capture_default_str();
  app.add_option("--final-tokens", o.final_tokens, "Final block tokens")->capture_default_str();
  app.add_option("--reps", o.reps, "Timed runs per mode (best kept)")->capture_default_str();
  app.add_option("--hidden", o.model.hidden_size, "Model width")->capture_default_str();
  app.add_option("--intermediate", o.model.intermediate_size, "MLP width")->capture_default_str();
  app.add_option("--layers", o.model.num_layers, "Decoder layers")->capture_default_str();
  app.add_option("--json", o.json_path, "Also write the results here");
  app.add_flag("--smoke", o.smoke, "Tiny model and lengths (ctest)");
  CLI11_PARSE(app, argc, argv);
  return kvblock::Run(o);
}
