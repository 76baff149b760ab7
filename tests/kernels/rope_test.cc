#include <cmath>
#include <numbers>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/rope.h"
#include "tests/kernels/test_util.h"

namespace kvblock::kernels {
namespace {

using testing::RandomVector;

std::vector<float> InvFreq(const RopeParams& p, int head_dim, int64_t seq_len = 0) {
  std::vector<float> f(head_dim / 2);
  EXPECT_TRUE(ComputeRopeInvFreq(p, head_dim, seq_len, absl::MakeSpan(f)).ok());
  return f;
}

TEST(RopeInvFreqTest, DefaultAndLinear) {
  RopeParams p;
  p.theta = 500000.0;
  std::vector<float> f = InvFreq(p, 128);
  for (int i = 0; i < 64; ++i) {
    EXPECT_NEAR(f[i], 1.0 / std::pow(500000.0, 2.0 * i / 128), 2e-6 * (1.0 / std::pow(500000.0, 2.0 * i / 128)));
  }
  p.type = RopeType::kLinear;
  p.factor = 4.0;
  std::vector<float> lin = InvFreq(p, 128);
  for (int i = 0; i < 64; ++i) EXPECT_FLOAT_EQ(lin[i], f[i] / 4.0f);
}

TEST(RopeInvFreqTest, Llama3HitsAllThreeBands) {
  RopeParams p;
  p.type = RopeType::kLlama3;
  p.theta = 500000.0;
  p.factor = 8.0;
  p.low_freq_factor = 1.0;
  p.high_freq_factor = 4.0;
  p.original_max_position_embeddings = 64;
  const int d = 32;
  std::vector<float> f = InvFreq(p, d);
  int high = 0, medium = 0, low = 0;
  for (int i = 0; i < d / 2; ++i) {
    const double base = 1.0 / std::pow(500000.0, 2.0 * i / d);
    const double wavelen = 2 * std::numbers::pi / base;
    double want;
    if (wavelen < 64.0 / 4.0) {
      want = base, ++high;
    } else if (wavelen > 64.0) {
      want = base / 8.0, ++low;
    } else {
      const double smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1 - smooth) * base / 8.0 + smooth * base, ++medium;
    }
    EXPECT_NEAR(f[i], want, 3e-6 * want) << i;
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(medium, 0);
  EXPECT_GT(low, 0);
}

TEST(RopeInvFreqTest, DynamicIsDefaultUpToMaxThenScalesBase) {
  RopeParams p;
  p.type = RopeType::kDynamic;
  p.factor = 2.0;
  p.max_position_embeddings = 4096;
  RopeParams plain;
  EXPECT_EQ(InvFreq(p, 64, 100), InvFreq(plain, 64));
  EXPECT_EQ(InvFreq(p, 64, 4096), InvFreq(plain, 64));
  std::vector<float> f = InvFreq(p, 64, 8192);
  const double base = 10000.0 * std::pow(2.0 * 8192 / 4096 - 1.0, 64.0 / 62.0);
  for (int i = 0; i < 32; ++i) {
    const double want = 1.0 / std::pow(base, 2.0 * i / 64);
    EXPECT_NEAR(f[i], want, 3e-6 * want);
  }
}

TEST(RopeInvFreqTest, RejectsBadParams) {
  std::vector<float> f(8);
  RopeParams p;
  EXPECT_FALSE(ComputeRopeInvFreq(p, 15, 0, absl::MakeSpan(f)).ok());
  EXPECT_FALSE(ComputeRopeInvFreq(p, 32, 0, absl::MakeSpan(f)).ok());  // needs 16
  p.theta = -1;
  EXPECT_FALSE(ComputeRopeInvFreq(p, 16, 0, absl::MakeSpan(f)).ok());
  p = RopeParams{};
  p.type = RopeType::kLlama3;
  p.factor = 8;
  p.low_freq_factor = 4;
  p.high_freq_factor = 1;
  EXPECT_FALSE(p.Validate().ok());
}

// Direct rotation of one head vector in double: pair (i, i + half) by pos * inv_freq[i].
std::vector<double> Rotate(const float* x, int d, double pos, const std::vector<float>& inv) {
  std::vector<double> y(d);
  for (int i = 0; i < d / 2; ++i) {
    const double a = pos * inv[i];
    y[i] = x[i] * std::cos(a) - x[i + d / 2] * std::sin(a);
    y[i + d / 2] = x[i + d / 2] * std::cos(a) + x[i] * std::sin(a);
  }
  return y;
}

TEST(ApplyRopeTest, RotatesHalfPairsAtGivenPositions) {
  const int tokens = 9, heads = 3, d = 32;
  RopeParams p;
  std::vector<float> inv = InvFreq(p, d);
  std::vector<int64_t> pos = {0, 1, 2, 7, 50, 51, 100, 257, 1000};
  std::vector<float> cos(tokens * d / 2), sin(tokens * d / 2);
  ASSERT_TRUE(BuildRopeTable(inv, pos, absl::MakeSpan(cos), absl::MakeSpan(sin)).ok());
  std::vector<float> x = RandomVector(tokens * heads * d, 11, -2, 2);
  std::vector<float> orig = x;
  ASSERT_TRUE(ApplyRope(Contiguous3(x.data(), tokens, heads, d), cos, sin).ok());
  for (int t = 0; t < tokens; ++t) {
    for (int h = 0; h < heads; ++h) {
      const int off = (t * heads + h) * d;
      std::vector<double> want = Rotate(orig.data() + off, d, pos[t], inv);
      for (int i = 0; i < d; ++i) EXPECT_NEAR(x[off + i], want[i], 2e-4) << t << " " << h;
    }
  }
  // Position 0 is the identity.
  for (int i = 0; i < heads * d; ++i) EXPECT_FLOAT_EQ(x[i], orig[i]);
}

// The block-attention identity: K encoded at j, then re-encoded by p == K encoded at j + p.
void CheckReencode(const RopeParams& params, int d, int64_t offset) {
  const int kv_heads = 2, tokens = 40;
  std::vector<float> inv = InvFreq(params, d);
  std::vector<float> raw = RandomVector(kv_heads * tokens * d, 21, -2, 2);
  auto encode_at = [&](int64_t start) {
    std::vector<float> k = raw;
    for (int h = 0; h < kv_heads; ++h) {
      std::vector<int64_t> pos(tokens);
      for (int t = 0; t < tokens; ++t) pos[t] = start + t;
      std::vector<float> c(tokens * d / 2), s(tokens * d / 2);
      EXPECT_TRUE(BuildRopeTable(inv, pos, absl::MakeSpan(c), absl::MakeSpan(s)).ok());
      // One head at a time: the view [tokens][1][d] over K's [kv_heads][tokens][d] layout.
      EXPECT_TRUE(ApplyRope(View3<float>{k.data() + h * tokens * d, tokens, 1, d, d, d}, c, s).ok());
    }
    return k;
  };
  std::vector<float> k = encode_at(0);
  const std::vector<float> at_zero = k;
  ASSERT_TRUE(ReencodeK(Contiguous3(k.data(), kv_heads, tokens, d), offset, inv).ok());
  std::vector<float> want = encode_at(offset);
  double max_err = 0;
  for (size_t i = 0; i < k.size(); ++i) max_err = std::max(max_err, std::abs(double(k[i]) - want[i]));
  EXPECT_LT(max_err, 1e-5 * (1 + offset / 100.0)) << "offset " << offset;
  double moved = 0;
  for (size_t i = 0; i < k.size(); ++i) moved = std::max(moved, std::abs(double(k[i]) - at_zero[i]));
  if (offset > 0) EXPECT_GT(moved, 0.01);
  if (offset == 0) EXPECT_EQ(moved, 0.0);
}

TEST(ReencodeKTest, EqualsEncodingAtTheOffset) {
  RopeParams p;
  CheckReencode(p, 64, 0);
  CheckReencode(p, 64, 37);
  CheckReencode(p, 16, 226);
  RopeParams l3;
  l3.type = RopeType::kLlama3;
  l3.theta = 500000;
  l3.factor = 8;
  l3.original_max_position_embeddings = 64;
  CheckReencode(l3, 32, 101);
  RopeParams lin;
  lin.type = RopeType::kLinear;
  lin.factor = 4;
  CheckReencode(lin, 128, 500);
}

TEST(ReencodeKTest, RejectsMismatches) {
  std::vector<float> k(2 * 3 * 8, 1.0f), inv(3, 1.0f);
  EXPECT_FALSE(ReencodeK(Contiguous3(k.data(), 2, 3, 8), 5, inv).ok());
  inv.resize(4, 1.0f);
  EXPECT_FALSE(ReencodeK(Contiguous3(k.data(), 2, 3, 8), -1, inv).ok());
  EXPECT_TRUE(ReencodeK(Contiguous3(k.data(), 2, 3, 8), 5, inv).ok());
}

}  // namespace
}  // namespace kvblock::kernels
