// RMSNorm as Llama, Qwen2 and Mistral compute it (in f32): y = x / sqrt(mean(x^2) + eps) * w,
// and the fused residual-add variant used between sublayers. CPU reference twins.
#pragma once

#include "absl/status/status.h"
#include "kernels/cpu/layout.h"

namespace kvblock::kernels {

// out[r] = RmsNorm(x[r]) * weight for every row. weight has x.cols entries. `out` may alias `x`.
// INVALID_ARGUMENT for mismatched shapes or eps < 0.
absl::Status RmsNorm(View2<const float> x, const float* weight, float eps, View2<float> out);

// residual[r] += add[r]; out[r] = RmsNorm(residual[r]) * weight. The residual stream is updated in
// place (the transformer's hidden state). `out` must not alias `residual`.
absl::Status AddRmsNorm(View2<float> residual, View2<const float> add, const float* weight,
                        float eps, View2<float> out);

}  // namespace kvblock::kernels
