#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/mlp.h"
#include "kernels/cpu/norm.h"
#include "tests/kernels/test_util.h"

namespace kvblock::kernels {
namespace {

using testing::RandomVector;

std::vector<double> RefNorm(const float* x, const float* w, int n, double eps) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double inv = 1.0 / std::sqrt(ss / n + eps);
  std::vector<double> y(n);
  for (int i = 0; i < n; ++i) y[i] = w[i] * x[i] * inv;
  return y;
}

TEST(RmsNormTest, MatchesDoubleReferenceWithStrides) {
  const int rows = 7, cols = 96, stride = 100;
  std::vector<float> x = RandomVector(rows * stride, 1, -3, 3);
  std::vector<float> w = RandomVector(cols, 2, 0.5, 1.5);
  std::vector<float> out(rows * cols, 0.0f);
  ASSERT_TRUE(RmsNorm(View2<const float>{x.data(), rows, cols, stride}, w.data(), 1e-5f,
                      Contiguous2(out.data(), rows, cols))
                  .ok());
  for (int r = 0; r < rows; ++r) {
    std::vector<double> ref = RefNorm(x.data() + r * stride, w.data(), cols, 1e-5);
    for (int i = 0; i < cols; ++i) EXPECT_NEAR(out[r * cols + i], ref[i], 1e-5) << r << "," << i;
  }
}

TEST(RmsNormTest, FusedResidualAddUpdatesResidualAndNormalises) {
  const int rows = 5, cols = 64;
  std::vector<float> h = RandomVector(rows * cols, 3);
  std::vector<float> a = RandomVector(rows * cols, 4);
  std::vector<float> w = RandomVector(cols, 5, 0.8, 1.2);
  std::vector<float> expect_h(rows * cols);
  for (size_t i = 0; i < h.size(); ++i) expect_h[i] = h[i] + a[i];
  std::vector<float> out(rows * cols);
  ASSERT_TRUE(AddRmsNorm(Contiguous2(h.data(), rows, cols),
                         Contiguous2<const float>(a.data(), rows, cols), w.data(), 1e-6f,
                         Contiguous2(out.data(), rows, cols))
                  .ok());
  for (size_t i = 0; i < h.size(); ++i) EXPECT_FLOAT_EQ(h[i], expect_h[i]);
  for (int r = 0; r < rows; ++r) {
    std::vector<double> ref = RefNorm(expect_h.data() + r * cols, w.data(), cols, 1e-6);
    for (int i = 0; i < cols; ++i) EXPECT_NEAR(out[r * cols + i], ref[i], 1e-5);
  }
}

TEST(RmsNormTest, RejectsBadShapes) {
  std::vector<float> x(12, 1.0f), w(4, 1.0f), out(12);
  EXPECT_EQ(RmsNorm(Contiguous2<const float>(x.data(), 3, 4), w.data(), 1e-5f,
                    Contiguous2(out.data(), 4, 3))
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RmsNorm(Contiguous2<const float>(x.data(), 3, 4), nullptr, 1e-5f,
                    Contiguous2(out.data(), 3, 4))
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RmsNorm(View2<const float>{x.data(), 3, 4, 2}, w.data(), 1e-5f,
                    Contiguous2(out.data(), 3, 4))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SwiGluTest, MatchesDoubleReferenceOnFusedGateUpLayout) {
  const int rows = 6, inter = 40;
  std::vector<float> gu = RandomVector(rows * 2 * inter, 6, -4, 4);  // [gate | up] per row
  std::vector<float> out(rows * inter);
  ASSERT_TRUE(SwiGlu(View2<const float>{gu.data(), rows, inter, 2 * inter},
                     View2<const float>{gu.data() + inter, rows, inter, 2 * inter},
                     Contiguous2(out.data(), rows, inter))
                  .ok());
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < inter; ++i) {
      const double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
      EXPECT_NEAR(out[r * inter + i], g / (1 + std::exp(-g)) * u, 1e-5);
    }
  }
  EXPECT_FALSE(SwiGlu(Contiguous2<const float>(gu.data(), rows, inter),
                      Contiguous2<const float>(gu.data(), rows, inter + 1),
                      Contiguous2(out.data(), rows, inter))
                   .ok());
}

}  // namespace
}  // namespace kvblock::kernels
