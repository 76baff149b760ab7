#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvblock::kernels {

absl::Status SamplingParams::Validate() const {
  if (std::isnan(temperature)) return absl::InvalidArgumentError("sampling: temperature is NaN");
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("sampling: top_k ", top_k, " < 0"));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: top_p ", top_p, " not in (0, 1]"));
  }
  return absl::OkStatus();
}

uint64_t SamplingRng::Next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int32_t ArgMax(absl::Span<const float> logits) {
  if (logits.empty()) return -1;
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

absl::Status Softmax(absl::Span<const float> logits, float temperature, absl::Span<float> probs) {
  if (probs.size() != logits.size() || logits.empty()) {
    return absl::InvalidArgumentError("softmax: empty input or output size mismatch");
  }
  if (!(temperature > 0.0f)) return absl::InvalidArgumentError("softmax: temperature must be > 0");
  float max_logit = logits[0];
  for (float x : logits) max_logit = std::max(max_logit, x);
  double sum = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp((logits[i] - max_logit) / temperature);
    sum += probs[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (float& p : probs) p *= inv;
  return absl::OkStatus();
}

absl::StatusOr<int32_t> SampleToken(absl::Span<const float> logits, const SamplingParams& params,
                                    SamplingRng& rng, SamplingWorkspace workspace) {
  if (absl::Status s = params.Validate(); !s.ok()) return s;
  if (logits.empty()) return absl::InvalidArgumentError("sampling: empty logits");
  const size_t vocab = logits.size();
  if (workspace.probs.size() < vocab || workspace.order.size() < vocab) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: workspace smaller than vocab ", vocab));
  }
  if (params.temperature <= 0.0f) return ArgMax(logits);

  absl::Span<float> probs = workspace.probs.subspan(0, vocab);
  int32_t* order = workspace.order.data();
  if (absl::Status s = Softmax(logits, params.temperature, probs); !s.ok()) return s;
  for (size_t i = 0; i < vocab; ++i) order[i] = static_cast<int32_t>(i);
  // Most likely first; ties by lower id so the order (and the draw) is deterministic.
  auto more_likely = [&](int32_t a, int32_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  };
  size_t keep = vocab;
  if (params.top_k > 0) keep = std::min(keep, static_cast<size_t>(params.top_k));
  if (keep < vocab || params.top_p < 1.0f) {
    std::partial_sort(order, order + keep, order + vocab, more_likely);
  }
  double kept_mass = 0.0;
  for (size_t i = 0; i < keep; ++i) kept_mass += probs[order[i]];
  if (params.top_p < 1.0f) {
    // Smallest prefix (at least one token) whose renormalised mass reaches top_p.
    const double target = static_cast<double>(params.top_p) * kept_mass;
    double cum = 0.0;
    size_t m = 0;
    while (m < keep) {
      cum += probs[order[m]];
      ++m;
      if (cum >= target) break;
    }
    keep = m;
    kept_mass = cum;
  }
  const double u = rng.NextUniform() * kept_mass;
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += probs[order[i]];
    if (u < cum) return order[i];
  }
  return order[keep - 1];  // u landed on the rounding slack at the very end
}

}  // namespace kvblock::kernels
