#include "worker/model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvblock {
namespace {

using json = nlohmann::json;

absl::Status Bad(std::string_view key, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("\"", std::string(key), "\" ", std::string(what)));
}

std::string Show(const json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 60) + "..." : s;
}

const json* Field(const json& obj, std::string_view key) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer field (integral floats such as 4096.0 accepted). nullopt when absent or null.
absl::StatusOr<std::optional<int64_t>> OptInt(const json& obj, std::string_view key) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::optional<int64_t>();
  if (v->is_number_integer()) return std::optional<int64_t>(v->get<int64_t>());
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9e15) {
      return std::optional<int64_t>(static_cast<int64_t>(d));
    }
  }
  return Bad(key, absl::StrCat("must be an integer, got ", Show(*v)));
}

absl::StatusOr<int64_t> PositiveInt(const json& obj, std::string_view key,
                                    std::optional<int64_t> fallback = std::nullopt) {
  absl::StatusOr<std::optional<int64_t>> v = OptInt(obj, key);
  if (!v.ok()) return v.status();
  if (!v->has_value()) {
    if (fallback.has_value()) return *fallback;
    return Bad(key, "is missing");
  }
  if (**v <= 0 || **v > (int64_t{1} << 40)) {
    return Bad(key, absl::StrCat("must be a positive integer, got ", **v));
  }
  return **v;
}

absl::StatusOr<double> Number(const json& obj, std::string_view key, double fallback) {
  const json* v = Field(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_number()) return Bad(key, absl::StrCat("must be a number, got ", Show(*v)));
  const double d = v->get<double>();
  if (!std::isfinite(d)) return Bad(key, "must be finite");
  return d;
}

absl::StatusOr<bool> Bool(const json& obj, std::string_view key, bool fallback) {
  const json* v = Field(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return Bad(key, absl::StrCat("must be true or false, got ", Show(*v)));
  return v->get<bool>();
}

// Token ids: an integer or a list of integers; absent/null leaves `out` untouched.
absl::Status TokenIds(const json& obj, std::string_view key, std::vector<int32_t>& out) {
  const json* v = Field(obj, key);
  if (v == nullptr) return absl::OkStatus();
  std::vector<int32_t> ids;
  auto add = [&](const json& x) -> absl::Status {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > (1 << 30)) {
      return Bad(key, absl::StrCat("must be a token id or a list of token ids, got ", Show(*v)));
    }
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
    return absl::OkStatus();
  };
  if (v->is_array()) {
    for (const json& x : *v) {
      if (absl::Status s = add(x); !s.ok()) return s;
    }
  } else if (absl::Status s = add(*v); !s.ok()) {
    return s;
  }
  out = std::move(ids);
  return absl::OkStatus();
}

absl::Status ParseRope(const json& root, ModelConfig& c) {
  absl::StatusOr<double> top_theta = Number(root, "rope_theta", 10000.0);
  if (!top_theta.ok()) return top_theta.status();
  const json* params = Field(root, "rope_parameters");
  const char* params_key = "rope_parameters";
  if (params == nullptr) {
    params = Field(root, "rope_scaling");
    params_key = "rope_scaling";
  }
  json empty = json::object();
  if (params == nullptr) params = &empty;
  if (!params->is_object()) return Bad(params_key, absl::StrCat("must be an object, got ", Show(*params)));
  if (params->contains("full_attention") || params->contains("sliding_attention")) {
    return absl::UnimplementedError(absl::StrCat("\"", params_key, "\" per layer type is not supported"));
  }
  std::string type = "default";
  for (const char* k : {"rope_type", "type"}) {
    if (const json* t = Field(*params, k); t != nullptr) {
      if (!t->is_string()) return Bad(k, absl::StrCat("must be a string, got ", Show(*t)));
      type = t->get<std::string>();
      break;
    }
  }
  kernels::RopeParams& r = c.rope;
  if (type == "default") {
    r.type = kernels::RopeType::kDefault;
  } else if (type == "linear") {
    r.type = kernels::RopeType::kLinear;
  } else if (type == "dynamic") {
    r.type = kernels::RopeType::kDynamic;
  } else if (type == "llama3") {
    r.type = kernels::RopeType::kLlama3;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "RoPE type \"", type, "\" is not supported (supported: default, linear, dynamic, llama3)"));
  }
  absl::StatusOr<double> theta = Number(*params, "rope_theta", *top_theta);
  if (!theta.ok()) return theta.status();
  r.theta = *theta;
  absl::StatusOr<double> partial = Number(*params, "partial_rotary_factor", 1.0);
  absl::StatusOr<double> partial_top = Number(root, "partial_rotary_factor", 1.0);
  if (!partial.ok()) return partial.status();
  if (!partial_top.ok()) return partial_top.status();
  if (*partial != 1.0 || *partial_top != 1.0) {
    return absl::UnimplementedError("partial_rotary_factor != 1 is not supported");
  }
  if (r.type != kernels::RopeType::kDefault) {
    if (Field(*params, "factor") == nullptr) return Bad("factor", absl::StrCat("is missing from \"", params_key, "\""));
    absl::StatusOr<double> factor = Number(*params, "factor", 1.0);
    if (!factor.ok()) return factor.status();
    r.factor = *factor;
  }
  if (r.type == kernels::RopeType::kLlama3) {
    absl::StatusOr<double> low = Number(*params, "low_freq_factor", 1.0);
    absl::StatusOr<double> high = Number(*params, "high_freq_factor", 4.0);
    if (!low.ok()) return low.status();
    if (!high.ok()) return high.status();
    r.low_freq_factor = *low;
    r.high_freq_factor = *high;
    absl::StatusOr<int64_t> top_orig =
        PositiveInt(root, "original_max_position_embeddings", c.max_position_embeddings);
    if (!top_orig.ok()) return top_orig.status();
    absl::StatusOr<int64_t> orig = PositiveInt(*params, "original_max_position_embeddings", *top_orig);
    if (!orig.ok()) return orig.status();
    r.original_max_position_embeddings = *orig;
  }
  r.max_position_embeddings = c.max_position_embeddings;
  if (absl::Status s = r.Validate(); !s.ok()) return s;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  if (vocab_size <= 0 || hidden_size <= 0 || intermediate_size <= 0 || num_layers <= 0 ||
      num_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0 || max_position_embeddings <= 0) {
    return absl::InvalidArgumentError("model config: every size must be positive");
  }
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model config: num_attention_heads ", num_heads,
                                                   " is not a multiple of num_key_value_heads ",
                                                   num_kv_heads));
  }
  if (head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model config: head_dim ", head_dim, " is odd"));
  }
  if (!(rms_norm_eps >= 0.0f)) return absl::InvalidArgumentError("model config: rms_norm_eps < 0");
  for (int32_t id : eos_token_ids) {
    if (id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("model config: eos token id ", id,
                                                     " is outside the vocabulary of ", vocab_size));
    }
  }
  return rope.Validate();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view config_json,
                                             std::string_view generation_json) {
  json root = json::parse(config_json.begin(), config_json.end(), nullptr, false);
  if (root.is_discarded()) return absl::InvalidArgumentError("config.json is not valid JSON");
  if (!root.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
  ModelConfig c;
  // Architecture: architectures[0], else model_type.
  if (const json* arch = Field(root, "architectures"); arch != nullptr) {
    if (!arch->is_array() || arch->empty() || !(*arch)[0].is_string()) {
      return Bad("architectures", absl::StrCat("must be a non-empty list of names, got ", Show(*arch)));
    }
    c.architecture_name = (*arch)[0].get<std::string>();
  } else if (const json* mt = Field(root, "model_type"); mt != nullptr && mt->is_string()) {
    const std::string t = mt->get<std::string>();
    c.architecture_name = t == "llama" ? "LlamaForCausalLM"
                          : t == "qwen2" ? "Qwen2ForCausalLM"
                          : t == "mistral" ? "MistralForCausalLM"
                                           : t;
  } else {
    return Bad("architectures", "is missing (and no model_type)");
  }
  if (c.architecture_name == "LlamaForCausalLM") {
    c.architecture = Architecture::kLlama;
  } else if (c.architecture_name == "Qwen2ForCausalLM") {
    c.architecture = Architecture::kQwen2;
  } else if (c.architecture_name == "MistralForCausalLM") {
    c.architecture = Architecture::kMistral;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported architecture \"", c.architecture_name,
        "\" (supported: LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)"));
  }
  if (const json* act = Field(root, "hidden_act"); act != nullptr) {
    if (!act->is_string() || act->get<std::string>() != "silu") {
      return absl::UnimplementedError(absl::StrCat("hidden_act ", Show(*act), " is not supported (only \"silu\")"));
    }
  }
  struct IntField {
    const char* key;
    int64_t* out;
  };
  for (IntField f : {IntField{"vocab_size", &c.vocab_size}, IntField{"hidden_size", &c.hidden_size},
                     IntField{"intermediate_size", &c.intermediate_size},
                     IntField{"num_hidden_layers", &c.num_layers},
                     IntField{"num_attention_heads", &c.num_heads}}) {
    absl::StatusOr<int64_t> v = PositiveInt(root, f.key);
    if (!v.ok()) return v.status();
    *f.out = *v;
  }
  absl::StatusOr<int64_t> kv = PositiveInt(root, "num_key_value_heads", c.num_heads);
  if (!kv.ok()) return kv.status();
  c.num_kv_heads = *kv;
  if (Field(root, "head_dim") == nullptr && c.hidden_size % c.num_heads != 0) {
    return Bad("hidden_size", absl::StrCat(c.hidden_size, " is not divisible by num_attention_heads ",
                                           c.num_heads, " and no head_dim is given"));
  }
  absl::StatusOr<int64_t> hd = PositiveInt(root, "head_dim", c.hidden_size / c.num_heads);
  if (!hd.ok()) return hd.status();
  c.head_dim = *hd;
  absl::StatusOr<int64_t> max_pos = PositiveInt(root, "max_position_embeddings", 2048);
  if (!max_pos.ok()) return max_pos.status();
  c.max_position_embeddings = *max_pos;
  absl::StatusOr<double> eps = Number(root, "rms_norm_eps", 1e-6);
  if (!eps.ok()) return eps.status();
  c.rms_norm_eps = static_cast<float>(*eps);
  absl::StatusOr<bool> tie = Bool(root, "tie_word_embeddings", false);
  if (!tie.ok()) return tie.status();
  c.tie_word_embeddings = *tie;
  switch (c.architecture) {
    case Architecture::kLlama: {
      absl::StatusOr<bool> attn_bias = Bool(root, "attention_bias", false);
      absl::StatusOr<bool> mlp_bias = Bool(root, "mlp_bias", false);
      if (!attn_bias.ok()) return attn_bias.status();
      if (!mlp_bias.ok()) return mlp_bias.status();
      c.qkv_bias = c.o_bias = *attn_bias;
      c.mlp_bias = *mlp_bias;
      break;
    }
    case Architecture::kQwen2: {
      c.qkv_bias = true;
      absl::StatusOr<bool> sliding = Bool(root, "use_sliding_window", false);
      if (!sliding.ok()) return sliding.status();
      if (*sliding) {
        absl::StatusOr<int64_t> w = PositiveInt(root, "sliding_window", 4096);
        if (!w.ok()) return w.status();
        c.sliding_window = *w;
      }
      break;
    }
    case Architecture::kMistral: {
      absl::StatusOr<std::optional<int64_t>> w = OptInt(root, "sliding_window");
      if (!w.ok()) return w.status();
      if (w->has_value()) {
        if (**w <= 0) return Bad("sliding_window", "must be positive or null");
        c.sliding_window = **w;
      }
      break;
    }
  }
  if (absl::Status s = ParseRope(root, c); !s.ok()) return s;
  if (absl::Status s = TokenIds(root, "eos_token_id", c.eos_token_ids); !s.ok()) return s;
  std::vector<int32_t> bos;
  if (absl::Status s = TokenIds(root, "bos_token_id", bos); !s.ok()) return s;
  if (!generation_json.empty()) {
    json gen = json::parse(generation_json.begin(), generation_json.end(), nullptr, false);
    if (gen.is_discarded() || !gen.is_object()) {
      return absl::InvalidArgumentError("generation_config.json is not a JSON object");
    }
    if (absl::Status s = TokenIds(gen, "eos_token_id", c.eos_token_ids); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("generation_config.json: ", s.message()));
    }
    if (absl::Status s = TokenIds(gen, "bos_token_id", bos); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("generation_config.json: ", s.message()));
    }
  }
  if (!bos.empty()) c.bos_token_id = bos[0];
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const std::string config_path = (fs::path(model_dir) / "config.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(config_path, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", model_dir, " has no config.json"));
  }
  absl::StatusOr<std::string> text = ReadFile(config_path);
  if (!text.ok()) return text.status();
  std::string gen_text;
  const std::string gen_path = (fs::path(model_dir) / "generation_config.json").string();
  if (fs::is_regular_file(gen_path, ec)) {
    absl::StatusOr<std::string> g = ReadFile(gen_path);
    if (!g.ok()) return g.status();
    gen_text = std::move(*g);
    if (gen_text.empty()) gen_text = " ";  // present but empty: reported as malformed below
  }
  absl::StatusOr<ModelConfig> c = ParseModelConfig(*text, gen_text);
  if (!c.ok()) {
    return absl::Status(c.status().code(), absl::StrCat(config_path, ": ", c.status().message()));
  }
  return c;
}

}  // namespace kvblock
