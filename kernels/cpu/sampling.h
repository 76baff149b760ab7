// Turning logits into the next token: greedy (argmax), or sampling from softmax(logits / T)
// restricted to the top-k tokens and then to the smallest top-p nucleus, with a seeded,
// portable random generator (same seed and logits -> same token on every machine). CPU reference
// twins of the CUDA sampling kernels; no allocation (the caller passes the workspace).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvblock::kernels {

struct SamplingParams {
  // Softmax temperature; <= 0 means greedy (argmax). Default: 0.
  float temperature = 0.0f;
  // Keep only the k most likely tokens; 0 keeps all. Default: 0.
  int32_t top_k = 0;
  // Keep the smallest set of most likely tokens whose probability reaches top_p, in (0, 1].
  // Default: 1 (all).
  float top_p = 1.0f;
  // Seed of the generator (the same seed repeats the same draws). Default: 0.
  uint64_t seed = 0;

  // INVALID_ARGUMENT for a NaN temperature, negative top_k or top_p outside (0, 1].
  absl::Status Validate() const;
};

// SplitMix64: a tiny counter-based generator; the state is one 64-bit word.
class SamplingRng {
 public:
  explicit SamplingRng(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, 1) with 53 random bits.
  double NextUniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

// Index of the largest logit; the first one on ties (torch.argmax). -1 for an empty span.
int32_t ArgMax(absl::Span<const float> logits);

// probs = softmax(logits / temperature), temperature > 0. INVALID_ARGUMENT for a size mismatch
// or a non-positive temperature.
absl::Status Softmax(absl::Span<const float> logits, float temperature, absl::Span<float> probs);

// Workspace of SampleToken: each span holds at least logits.size() entries.
struct SamplingWorkspace {
  absl::Span<float> probs;
  absl::Span<int32_t> order;
};

// The next token under `params`, drawing from `rng` only when temperature > 0. INVALID_ARGUMENT
// for bad params, empty logits or a short workspace.
absl::StatusOr<int32_t> SampleToken(absl::Span<const float> logits, const SamplingParams& params,
                                    SamplingRng& rng, SamplingWorkspace workspace);

}  // namespace kvblock::kernels
