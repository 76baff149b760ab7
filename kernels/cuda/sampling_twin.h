// CPU twin of the CUDA sampling kernel (kernels/cuda/sampling.cu). It is separate from
// kernels/cpu/sampling.h because the GPU algorithm defines its own draw: thresholds keep every
// logit >= the k-th largest / the top-p boundary value (ties kept), and the token is picked by
// cumulative mass in index order with UniformDraw(seed, step, row). Pure functions: thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cuda/layouts.h"

namespace kvblock::cuda::twin {

// The token the kernel picks for row `row`; -1 if the logits contain NaN.
int32_t Sample(const float* logits, int32_t vocab, const SamplingParams& sp, int32_t row);
// The kept set (ascending indices) of temperature sampling: top-k, then top-p.
std::vector<int32_t> SampleKeptSet(const float* logits, int32_t vocab, const SamplingParams& sp);

}  // namespace kvblock::cuda::twin
