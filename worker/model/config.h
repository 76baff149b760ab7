// A Hugging Face model's architecture as the engine needs it, parsed from config.json (both the
// older `rope_theta` / `rope_scaling` keys and the newer `rope_parameters` form) and
// generation_config.json (EOS ids, which may be a list). Supported: LlamaForCausalLM,
// Qwen2ForCausalLM, MistralForCausalLM; anything else is an error naming the architecture.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/rope.h"

namespace kvblock {

enum class Architecture { kLlama, kQwen2, kMistral };

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  // As config.json spells it, e.g. "LlamaForCausalLM".
  std::string architecture_name;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  // Explicit in config.json or hidden_size / num_heads.
  int64_t head_dim = 0;
  // The longest sequence (prompt + generated tokens) the model accepts.
  int64_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  // Biases: q/k/v (Qwen2 always; Llama with attention_bias), o (Llama attention_bias), MLP
  // (Llama mlp_bias).
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  kernels::RopeParams rope;
  // Sliding-window attention width in tokens; 0 = none. Sequences longer than the window are
  // refused (the engine attends to everything).
  int64_t sliding_window = 0;
  int32_t bos_token_id = -1;
  std::vector<int32_t> eos_token_ids;

  // INVALID_ARGUMENT for non-positive sizes or inconsistent head counts.
  absl::Status Validate() const;
};

// `generation_json` may be empty (no generation_config.json); its eos/bos ids override
// config.json's. INVALID_ARGUMENT naming the key for missing or wrongly typed fields,
// UNIMPLEMENTED naming an unsupported architecture, activation or RoPE type.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view config_json,
                                             std::string_view generation_json = {});

// Reads DIR/config.json and, if present, DIR/generation_config.json. NOT_FOUND if config.json
// is missing; otherwise as ParseModelConfig, with the file name in the message.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace kvblock
