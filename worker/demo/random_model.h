// Writes a small Llama checkpoint with random weights (config.json + model.safetensors, no
// tokenizer.json, so LoadTokenizer gives the byte-level tokenizer). Used by tests and benchmarks
// that need a model of a chosen size (`kvblock demo` uses the trained one, demo_model.h).
// The same options always produce the same bytes (and so the same model fingerprint).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace kvblock {

struct RandomLlamaOptions {
  // Model width. Default: 256.
  int64_t hidden_size = 256;
  // MLP width. Default: 688.
  int64_t intermediate_size = 688;
  // Decoder layers. Default: 4.
  int64_t num_layers = 4;
  // Query heads. Default: 4.
  int64_t num_heads = 4;
  // Key/value heads (GQA when fewer than num_heads). Default: 2.
  int64_t num_kv_heads = 2;
  // Longest sequence, in tokens. Default: 8192.
  int64_t max_position_embeddings = 8192;
  // Standard deviation of the normal weights (norm weights are 1 + this noise). Default: 0.05.
  float init_std = 0.05f;
  // Seed of the weights. Default: 1234.
  uint64_t seed = 1234;

  // INVALID_ARGUMENT for non-positive sizes, heads that do not divide hidden_size or
  // num_heads % num_kv_heads != 0.
  absl::Status Validate() const;
};

// Vocabulary of the byte-level tokenizer: 256 bytes + BOS (256), EOS (257), pad (258).
inline constexpr int64_t kRandomLlamaVocab = 259;

// Creates `dir` (and parents) and writes config.json and model.safetensors into it, each via a
// temporary file and rename. INVALID_ARGUMENT for bad options; INTERNAL for I/O errors.
// Thread-compatible (distinct directories may be written concurrently).
absl::Status WriteRandomLlama(const std::string& dir, const RandomLlamaOptions& options = {});

// Parameters of the model `options` describe.
int64_t RandomLlamaParameterCount(const RandomLlamaOptions& options);

}  // namespace kvblock
