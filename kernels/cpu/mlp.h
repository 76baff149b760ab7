// The gated MLP activation of Llama-family models: out = silu(gate) * up, with
// silu(x) = x * sigmoid(x). CPU reference twin.
#pragma once

#include "absl/status/status.h"
#include "kernels/cpu/layout.h"

namespace kvblock::kernels {

// gate, up, out: [rows][intermediate] (any row strides, so gate and up may be the two halves of
// one fused projection). `out` may alias `gate` or `up`. INVALID_ARGUMENT for mismatched shapes.
absl::Status SwiGlu(View2<const float> gate, View2<const float> up, View2<float> out);

}  // namespace kvblock::kernels
