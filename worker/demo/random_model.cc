#include "worker/demo/random_model.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/model/safetensors.h"

namespace kvblock {

absl::Status RandomLlamaOptions::Validate() const {
  if (hidden_size <= 0 || intermediate_size <= 0 || num_layers <= 0 || num_heads <= 0 ||
      num_kv_heads <= 0 || max_position_embeddings <= 0) {
    return absl::InvalidArgumentError("RandomLlamaOptions: sizes must be positive");
  }
  if (hidden_size % num_heads != 0) {
    return absl::InvalidArgumentError("RandomLlamaOptions: num_heads must divide hidden_size");
  }
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError("RandomLlamaOptions: num_kv_heads must divide num_heads");
  }
  if (!(init_std > 0)) return absl::InvalidArgumentError("RandomLlamaOptions: init_std must be > 0");
  return absl::OkStatus();
}

int64_t RandomLlamaParameterCount(const RandomLlamaOptions& o) {
  const int64_t head_dim = o.hidden_size / o.num_heads;
  const int64_t kv = o.num_kv_heads * head_dim;
  const int64_t layer = 2 * o.hidden_size * o.hidden_size + 2 * o.hidden_size * kv +
                        3 * o.hidden_size * o.intermediate_size + 2 * o.hidden_size;
  return o.num_layers * layer + 2 * kRandomLlamaVocab * o.hidden_size + o.hidden_size;
}

absl::Status WriteRandomLlama(const std::string& dir, const RandomLlamaOptions& o) {
  if (absl::Status s = o.Validate(); !s.ok()) return s;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  const int64_t head_dim = o.hidden_size / o.num_heads;
  const int64_t kv = o.num_kv_heads * head_dim;

  nlohmann::json config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"hidden_act", "silu"},
      {"bos_token_id", 256},
      {"eos_token_id", 257},
      {"pad_token_id", 258},
      {"head_dim", head_dim},
      {"hidden_size", o.hidden_size},
      {"intermediate_size", o.intermediate_size},
      {"num_hidden_layers", o.num_layers},
      {"num_attention_heads", o.num_heads},
      {"num_key_value_heads", o.num_kv_heads},
      {"max_position_embeddings", o.max_position_embeddings},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"tie_word_embeddings", false},
      {"torch_dtype", "float32"},
      {"vocab_size", kRandomLlamaVocab},
      {"kvblock_note", "random weights written by kvblock (not a trained model)"}};

  // Tensors in a fixed order from one seeded generator: same options, same bytes.
  struct Spec {
    std::string name;
    std::vector<int64_t> shape;
    bool norm;
  };
  std::vector<Spec> specs;
  specs.push_back({"model.embed_tokens.weight", {kRandomLlamaVocab, o.hidden_size}, false});
  for (int64_t i = 0; i < o.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    specs.push_back({p + "input_layernorm.weight", {o.hidden_size}, true});
    specs.push_back({p + "self_attn.q_proj.weight", {o.hidden_size, o.hidden_size}, false});
    specs.push_back({p + "self_attn.k_proj.weight", {kv, o.hidden_size}, false});
    specs.push_back({p + "self_attn.v_proj.weight", {kv, o.hidden_size}, false});
    specs.push_back({p + "self_attn.o_proj.weight", {o.hidden_size, o.hidden_size}, false});
    specs.push_back({p + "post_attention_layernorm.weight", {o.hidden_size}, true});
    specs.push_back({p + "mlp.gate_proj.weight", {o.intermediate_size, o.hidden_size}, false});
    specs.push_back({p + "mlp.up_proj.weight", {o.intermediate_size, o.hidden_size}, false});
    specs.push_back({p + "mlp.down_proj.weight", {o.hidden_size, o.intermediate_size}, false});
  }
  specs.push_back({"model.norm.weight", {o.hidden_size}, true});
  specs.push_back({"lm_head.weight", {kRandomLlamaVocab, o.hidden_size}, false});

  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> normal(0.0f, o.init_std);
  std::vector<std::vector<float>> data(specs.size());
  std::vector<TensorToWrite> tensors(specs.size());
  for (size_t t = 0; t < specs.size(); ++t) {
    int64_t n = 1;
    for (int64_t d : specs[t].shape) n *= d;
    data[t].resize(n);
    for (float& x : data[t]) x = specs[t].norm ? 1.0f + normal(rng) : normal(rng);
    tensors[t].name = specs[t].name;
    tensors[t].dtype = TensorDtype::kF32;
    tensors[t].shape = specs[t].shape;
    tensors[t].bytes = absl::Span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(data[t].data()), data[t].size() * sizeof(float));
  }
  if (absl::Status s = WriteSafetensors(dir + "/model.safetensors", tensors); !s.ok()) return s;

  const std::string tmp = dir + "/config.json.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << config.dump(2) << "\n";
    if (!out.good()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::filesystem::rename(tmp, dir + "/config.json", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace kvblock
