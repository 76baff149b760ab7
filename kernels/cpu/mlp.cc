#include "kernels/cpu/mlp.h"

#include <cmath>

namespace kvblock::kernels {

absl::Status SwiGlu(View2<const float> gate, View2<const float> up, View2<float> out) {
  if (absl::Status s = CheckView(gate, "swiglu gate"); !s.ok()) return s;
  if (absl::Status s = CheckView(up, "swiglu up"); !s.ok()) return s;
  if (absl::Status s = CheckView(out, "swiglu output"); !s.ok()) return s;
  if (gate.rows != up.rows || gate.cols != up.cols || out.rows != gate.rows ||
      out.cols != gate.cols) {
    return absl::InvalidArgumentError(absl::StrCat("swiglu: gate [", gate.rows, "][", gate.cols,
                                                   "], up [", up.rows, "][", up.cols, "], out [",
                                                   out.rows, "][", out.cols, "] disagree"));
  }
  for (int64_t r = 0; r < gate.rows; ++r) {
    const float* g = gate.Row(r);
    const float* u = up.Row(r);
    float* o = out.Row(r);
    for (int64_t i = 0; i < gate.cols; ++i) {
      const float x = g[i];
      o[i] = x / (1.0f + std::exp(-x)) * u[i];
    }
  }
  return absl::OkStatus();
}

}  // namespace kvblock::kernels
