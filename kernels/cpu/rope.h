// Rotary position embedding (RoPE) in Hugging Face's rotate-half convention: element i of a head
// is paired with element i + head_dim/2 and the pair is rotated by angle position * inv_freq[i].
// Covers the frequency tables of the default, linear, dynamic-NTK and llama3 variants, applying
// RoPE at given positions, and re-encoding cached K from block-local positions to an offset
// (rotations compose additively, so rotating K encoded at j by p * inv_freq equals encoding it
// at j + p, for every variant whose frequencies do not depend on the position).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cpu/layout.h"

namespace kvblock::kernels {

enum class RopeType { kDefault, kLinear, kDynamic, kLlama3 };

// The model's RoPE settings (config.json rope_parameters / rope_theta + rope_scaling).
struct RopeParams {
  // Which frequency table. Default: plain RoPE.
  RopeType type = RopeType::kDefault;
  // Base wavelength theta. Default: 10000.
  double theta = 10000.0;
  // linear / dynamic / llama3: the scaling factor (>= 1 in practice). Default: 1.
  double factor = 1.0;
  // llama3: wavelengths above original_max / low_freq_factor are divided by factor. Default: 1.
  double low_freq_factor = 1.0;
  // llama3: wavelengths below original_max / high_freq_factor are kept. Default: 4.
  double high_freq_factor = 4.0;
  // llama3: the pretraining context length, in tokens. Default: 8192.
  int64_t original_max_position_embeddings = 8192;
  // dynamic: the context length below which frequencies are the default ones, in tokens.
  // Default: 2048.
  int64_t max_position_embeddings = 2048;

  // INVALID_ARGUMENT for non-positive theta/factor or an inconsistent llama3 band.
  absl::Status Validate() const;
};

// Writes head_dim/2 inverse frequencies. `seq_len` (tokens) matters only for kDynamic: the
// frequencies for a sequence of that length (transformers' dynamic NTK rule, which falls back
// to the default table for seq_len <= max_position_embeddings). Computed in f32 in transformers'
// order of operations. INVALID_ARGUMENT for an odd/zero head_dim or a wrong output size.
absl::Status ComputeRopeInvFreq(const RopeParams& params, int head_dim, int64_t seq_len,
                                absl::Span<float> inv_freq);

// cos/sin table rows for `positions`: cos[t * half + i] = cos(f32(positions[t] * inv_freq[i])),
// computed as transformers does (the angle rounded to f32, then cos/sin). Both outputs hold
// positions.size() * inv_freq.size() floats.
absl::Status BuildRopeTable(absl::Span<const float> inv_freq, absl::Span<const int64_t> positions,
                            absl::Span<float> cos, absl::Span<float> sin);

// Rotates x in place: x is [tokens][heads][head_dim]; row t uses table row t (cos/sin hold
// tokens * head_dim/2 floats, as BuildRopeTable writes them).
absl::Status ApplyRope(View3<float> x, absl::Span<const float> cos, absl::Span<const float> sin);

// Re-encodes cached K in place from block-local positions to `offset`: every pair of every row
// of k ([kv_heads][tokens][head_dim]) is rotated by offset * inv_freq[i] (angle in double).
// offset 0 leaves k unchanged. INVALID_ARGUMENT for shape mismatches or a negative offset.
absl::Status ReencodeK(View3<float> k, int64_t offset, absl::Span<const float> inv_freq);

}  // namespace kvblock::kernels
