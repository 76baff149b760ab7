// CPU twin of the CUDA sampling kernel; see sampling_twin.h.
#include "kernels/cuda/sampling_twin.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/cuda/sampling_rng.h"

namespace kvblock::cuda::twin {
namespace {

std::vector<int32_t> Kept(const float* x, int32_t vocab, const SamplingParams& sp, double mx,
                          std::vector<double>* probs) {
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return x[a] > x[b]; });
  float threshold = -std::numeric_limits<float>::infinity();
  if (sp.top_k > 0 && sp.top_k < vocab) threshold = x[order[sp.top_k - 1]];
  probs->assign(vocab, 0.0);
  double z = 0;
  for (int i = 0; i < vocab; ++i) {
    if (x[i] >= threshold) {
      (*probs)[i] = std::exp((double{x[i]} - mx) / sp.temperature);
      z += (*probs)[i];
    }
  }
  if (sp.top_p < 1.f) {
    const double target = sp.top_p * z;
    double cum = 0;
    for (size_t r = 0; r < order.size(); ++r) {
      const float v = x[order[r]];
      if (v < threshold) break;
      cum += (*probs)[order[r]];
      const bool tie_next = r + 1 < order.size() && x[order[r + 1]] == v;
      if (cum >= target && !tie_next) {
        threshold = std::max(threshold, v);
        break;
      }
    }
  }
  std::vector<int32_t> kept;
  for (int i = 0; i < vocab; ++i) {
    if (x[i] >= threshold) kept.push_back(i);
  }
  return kept;
}

}  // namespace

std::vector<int32_t> SampleKeptSet(const float* logits, int32_t vocab, const SamplingParams& sp) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < vocab; ++i) mx = std::max(mx, double{logits[i]});
  std::vector<double> probs;
  return Kept(logits, vocab, sp, mx, &probs);
}

int32_t Sample(const float* x, int32_t vocab, const SamplingParams& sp, int32_t row) {
  int32_t argmax = 0;
  for (int i = 0; i < vocab; ++i) {
    if (std::isnan(x[i])) return -1;
    if (x[i] > x[argmax]) argmax = i;
  }
  if (sp.temperature <= 0.f || sp.top_k == 1) return argmax;
  std::vector<double> probs;
  const std::vector<int32_t> kept = Kept(x, vocab, sp, x[argmax], &probs);
  double total = 0;
  for (int32_t i : kept) total += probs[i];
  const double target = double{UniformDraw(sp.seed, sp.step, static_cast<uint64_t>(row))} * total;
  double cum = 0;
  for (int32_t i : kept) {
    cum += probs[i];
    if (cum > target) return i;
  }
  return argmax;
}

}  // namespace kvblock::cuda::twin
