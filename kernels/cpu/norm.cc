#include "kernels/cpu/norm.h"

#include <cmath>

namespace kvblock::kernels {
namespace {

void NormRow(const float* x, const float* w, int64_t n, float eps, float* y) {
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * inv);
}

absl::Status CheckNorm(View2<const float> x, const float* weight, float eps, View2<float> out) {
  if (absl::Status s = CheckView(x, "rmsnorm input"); !s.ok()) return s;
  if (absl::Status s = CheckView(out, "rmsnorm output"); !s.ok()) return s;
  if (out.rows != x.rows || out.cols != x.cols) {
    return absl::InvalidArgumentError(absl::StrCat("rmsnorm: output [", out.rows, "][", out.cols,
                                                   "] != input [", x.rows, "][", x.cols, "]"));
  }
  if (weight == nullptr && x.cols > 0) return absl::InvalidArgumentError("rmsnorm: null weight");
  if (!(eps >= 0.0f)) return absl::InvalidArgumentError("rmsnorm: eps must be >= 0");
  return absl::OkStatus();
}

}  // namespace

absl::Status RmsNorm(View2<const float> x, const float* weight, float eps, View2<float> out) {
  if (absl::Status s = CheckNorm(x, weight, eps, out); !s.ok()) return s;
  for (int64_t r = 0; r < x.rows; ++r) NormRow(x.Row(r), weight, x.cols, eps, out.Row(r));
  return absl::OkStatus();
}

absl::Status AddRmsNorm(View2<float> residual, View2<const float> add, const float* weight,
                        float eps, View2<float> out) {
  if (absl::Status s = CheckNorm(residual, weight, eps, out); !s.ok()) return s;
  if (absl::Status s = CheckView(add, "rmsnorm addend"); !s.ok()) return s;
  if (add.rows != residual.rows || add.cols != residual.cols) {
    return absl::InvalidArgumentError("add_rmsnorm: addend shape != residual shape");
  }
  for (int64_t r = 0; r < residual.rows; ++r) {
    float* h = residual.Row(r);
    const float* a = add.Row(r);
    for (int64_t i = 0; i < residual.cols; ++i) h[i] += a[i];
    NormRow(h, weight, residual.cols, eps, out.Row(r));
  }
  return absl::OkStatus();
}

}  // namespace kvblock::kernels
