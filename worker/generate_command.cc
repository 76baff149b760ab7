#include "worker/generate_command.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "cache/tiered_store.h"
#include "nlohmann/json.hpp"
#include "worker/engine/backend_factory.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct GenerateArgs {
  std::string model;
  std::string request;
  std::string mode;  // empty: the request's, else block
  BackendOptions backend;
  std::string cache_dir;
  uint64_t cache_memory_mb = 512;
  std::string model_id;
  std::string dump_logits;
  std::string output;
};

std::string DefaultCacheDir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && xdg[0] == '/') {
    return (fs::path(xdg) / "kvblock" / "blocks").string();
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && home[0] == '/') {
    return (fs::path(home) / ".cache" / "kvblock" / "blocks").string();
  }
  return "/tmp/kvblock-blocks";
}

std::string Show(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 40) + "..." : s;
}

absl::StatusOr<RequestSpec::Block> ParseBlock(const json& v, const std::string& where) {
  if (v.is_string()) return RequestSpec::Block(v.get<std::string>());
  if (!v.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " must be a list of token ids or a string, got ", Show(v)));
  }
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const json& x = v[i];
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(where, "[", i, "] must be a token id (a non-negative integer), got ", Show(x)));
    }
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  }
  return RequestSpec::Block(std::move(ids));
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot write ", path));
    out << data;
    out.flush();
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      return absl::InvalidArgumentError(absl::StrCat("cannot write ", path));
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return absl::InvalidArgumentError(absl::StrCat("cannot write ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

absl::Status RunGenerate(const GenerateArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  if (absl::Status s = args.backend.Validate(); !s.ok()) return s;
  std::optional<AttentionMode> cli_mode;
  if (args.mode == "block") cli_mode = AttentionMode::kBlock;
  else if (args.mode == "full") cli_mode = AttentionMode::kFull;
  else if (!args.mode.empty()) return absl::InvalidArgumentError(absl::StrCat("--mode must be block or full, got ", args.mode));

  std::ifstream in(args.request, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read request ", args.request));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<RequestSpec> spec = ParseRequestJson(text);
  if (!spec.ok()) return absl::InvalidArgumentError(absl::StrCat(args.request, ": ", spec.status().message()));

  ModelLoadOptions mo;
  mo.model_id = args.model_id;
  absl::StatusOr<LoadedModel> model = LoadModel(args.model, mo);
  if (!model.ok()) return model.status();
  const double load_ms = MsSince(t0);

  // The tokenizer is needed for text blocks and for the output text.
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(args.model);
  GenerateRequest req;
  auto tokens_of = [&](const RequestSpec::Block& b, const std::string& where) -> absl::StatusOr<std::vector<int32_t>> {
    if (const auto* ids = std::get_if<std::vector<int32_t>>(&b)) return *ids;
    if (!tokenizer.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " is text but the model's tokenizer cannot be loaded: ",
                                                     tokenizer.status().message()));
    }
    absl::StatusOr<std::vector<int32_t>> ids = (*tokenizer)->Encode(std::get<std::string>(b));
    if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", ids.status().message()));
    return ids;
  };
  for (size_t i = 0; i < spec->blocks.size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> ids = tokens_of(spec->blocks[i], absl::StrCat("blocks[", i, "]"));
    if (!ids.ok()) return ids.status();
    req.blocks.push_back(std::move(*ids));
  }
  absl::StatusOr<std::vector<int32_t>> final_ids = tokens_of(spec->final_block, "final_block");
  if (!final_ids.ok()) return final_ids.status();
  req.final_block = std::move(*final_ids);
  req.max_new_tokens = spec->max_new_tokens;
  req.sampling = spec->sampling;
  req.mode = cli_mode.value_or(spec->mode.value_or(AttentionMode::kBlock));
  req.return_logits = !args.dump_logits.empty();

  const std::string cache_dir = args.cache_dir.empty() ? DefaultCacheDir() : args.cache_dir;
  std::error_code ec;
  fs::create_directories(fs::path(cache_dir).parent_path(), ec);
  absl::StatusOr<std::unique_ptr<BlockStore>> store =
      OpenEmbeddedStore(cache_dir, args.cache_memory_mb << 20);
  if (!store.ok()) return absl::Status(store.status().code(), absl::StrCat("cache ", cache_dir, ": ", store.status().message()));
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(*model, args.backend);
  if (!backend.ok()) return backend.status();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(std::move(*backend), store->get(), model->fingerprint);
  if (!engine.ok()) return engine.status();
  absl::StatusOr<GenerateResult> result = (*engine)->Generate(req);
  if (!result.ok()) return result.status();

  std::string out_text;
  if (tokenizer.ok()) {
    absl::StatusOr<std::string> decoded = (*tokenizer)->Decode(result->tokens);
    if (decoded.ok()) out_text = std::move(*decoded);
  }
  int64_t prompt = req.final_block.size();
  for (const auto& b : req.blocks) prompt += b.size();
  const GenerateTimings& t = result->timings;
  json out = {
      {"tokens", result->tokens},
      {"text", out_text},
      {"mode", std::string(AttentionModeName(req.mode))},
      {"stop_reason", result->stop_reason},
      {"cache", {{"hits", result->cache_hits}, {"misses", result->cache_misses}}},
      {"timings_ms",
       {{"load_model", load_ms}, {"lookup", t.lookup_ms}, {"encode_blocks", t.encode_ms},
        {"load_blocks", t.load_ms}, {"prefill", t.prefill_ms}, {"decode", t.decode_ms},
        {"ttft", t.ttft_ms}, {"generate", t.total_ms}, {"total", MsSince(t0)}}},
      {"prompt_tokens", prompt},
      {"model_fingerprint", model->fingerprint.ToHex()},
  };
  if (!args.dump_logits.empty()) {
    const int64_t rows = static_cast<int64_t>(req.final_block.size());
    const std::vector<TensorToWrite> tensors = {
        {"logits", TensorDtype::kF32, {rows, model->config.vocab_size},
         absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(result->logits.data()),
                             result->logits.size() * sizeof(float))}};
    if (absl::Status s = WriteSafetensors(args.dump_logits, tensors); !s.ok()) return s;
  }
  return WriteFileAtomically(args.output, out.dump(2) + "\n");
}

}  // namespace

absl::StatusOr<RequestSpec> ParseRequestJson(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("request is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("request is not a JSON object");
  RequestSpec spec;
  if (auto it = j.find("blocks"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return absl::InvalidArgumentError(absl::StrCat("\"blocks\" must be a list, got ", Show(*it)));
    for (size_t i = 0; i < it->size(); ++i) {
      absl::StatusOr<RequestSpec::Block> b = ParseBlock((*it)[i], absl::StrCat("blocks[", i, "]"));
      if (!b.ok()) return b.status();
      spec.blocks.push_back(std::move(*b));
    }
  }
  auto fb = j.find("final_block");
  if (fb == j.end() || fb->is_null()) return absl::InvalidArgumentError("\"final_block\" is missing");
  absl::StatusOr<RequestSpec::Block> final_block = ParseBlock(*fb, "final_block");
  if (!final_block.ok()) return final_block.status();
  spec.final_block = std::move(*final_block);
  auto int_field = [&](const char* key, int64_t lo, int64_t hi, int64_t* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number_integer() || it->get<int64_t>() < lo || it->get<int64_t>() > hi) {
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be an integer in [", lo, ", ", hi, "], got ", Show(*it)));
    }
    *out = it->get<int64_t>();
    return absl::OkStatus();
  };
  auto num_field = [&](const char* key, double lo, double hi, float* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number() || !(it->get<double>() >= lo && it->get<double>() <= hi)) {
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a number in [", lo, ", ", hi, "], got ", Show(*it)));
    }
    *out = static_cast<float>(it->get<double>());
    return absl::OkStatus();
  };
  int64_t max_new = spec.max_new_tokens, top_k = 0;
  if (absl::Status s = int_field("max_new_tokens", 0, 1 << 20, &max_new); !s.ok()) return s;
  if (absl::Status s = int_field("top_k", 0, INT32_MAX, &top_k); !s.ok()) return s;
  if (auto it = j.find("seed"); it != j.end() && !it->is_null()) {
    if (!it->is_number_unsigned()) {
      return absl::InvalidArgumentError(absl::StrCat("\"seed\" must be a non-negative integer, got ", Show(*it)));
    }
    spec.sampling.seed = it->get<uint64_t>();
  }
  if (absl::Status s = num_field("temperature", 0.0, 1e6, &spec.sampling.temperature); !s.ok()) return s;
  if (absl::Status s = num_field("top_p", 1e-9, 1.0, &spec.sampling.top_p); !s.ok()) return s;
  spec.max_new_tokens = static_cast<int32_t>(max_new);
  spec.sampling.top_k = static_cast<int32_t>(top_k);
  if (auto it = j.find("mode"); it != j.end() && !it->is_null()) {
    if (*it == "block") spec.mode = AttentionMode::kBlock;
    else if (*it == "full") spec.mode = AttentionMode::kFull;
    else return absl::InvalidArgumentError(absl::StrCat("\"mode\" must be \"block\" or \"full\", got ", Show(*it)));
  }
  return spec;
}

void AddGenerateCommand(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "generate", "Run one request (blocks + final block) through the block-attention engine");
  auto args = std::make_shared<GenerateArgs>();
  cmd->add_option("--model", args->model, "Hugging Face model directory")->required();
  cmd->add_option("--request", args->request, "Request JSON file")->required();
  cmd->add_option("--output", args->output, "Where to write the result JSON")->required();
  cmd->add_option("--mode", args->mode, "block or full (default: the request's, else block)");
  cmd->add_option("--backend", args->backend.name, "Compute backend (" + AvailableBackends() + ")")
      ->capture_default_str();
  cmd->add_option("--dtype", args->backend.dtype, "Compute dtype: f32 or bf16 (cuda; default bf16)");
  cmd->add_option("--cache-dir", args->cache_dir,
                  "Embedded block cache directory (memory over RocksDB; default ~/.cache/kvblock/blocks)");
  cmd->add_option("--cache-memory-mb", args->cache_memory_mb, "Memory tier budget in MiB")
      ->capture_default_str();
  cmd->add_option("--model-id", args->model_id, "Model id replacing the weight fingerprint");
  cmd->add_option("--dump-logits", args->dump_logits,
                  "Write the final block's logits here (safetensors, tensor \"logits\")");
  cmd->callback([args] {
    absl::Status s = RunGenerate(*args);
    if (!s.ok()) {
      std::string msg(s.message());
      for (char& c : msg) {
        if (c == '\n') c = ' ';
      }
      std::cerr << "kvblock generate: " << msg << "\n";
      throw CLI::RuntimeError(1);
    }
  });
}

}  // namespace kvblock
