#include "cache/dtype.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace kvblock {
namespace {

TEST(DtypeTest, NamesRoundTrip) {
  for (KvDtype d : {KvDtype::kF32, KvDtype::kBF16, KvDtype::kF16, KvDtype::kFP8E4M3}) {
    auto parsed = ParseDtype(DtypeName(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_FALSE(ParseDtype("f64").ok());
  EXPECT_FALSE(IsValidDtype(0));
  EXPECT_FALSE(IsValidDtype(5));
}

TEST(DtypeTest, Bf16ExactValuesAndRounding) {
  for (float f : {0.0f, 1.0f, -2.5f, 65536.0f, 1.0f / 128}) EXPECT_EQ(Bf16ToFloat(FloatToBf16(f)), f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down to 1.0).
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  EXPECT_TRUE(std::isinf(Bf16ToFloat(FloatToBf16(INFINITY))));
}

TEST(DtypeTest, F16MatchesAllHalfValues) {
  // Every finite half decodes and re-encodes to itself.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToF16(f), h) << "half 0x" << std::hex << h;
  }
  EXPECT_EQ(F16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(FloatToF16(70000.0f), 0x7C00);  // overflow to inf
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(NAN))));
}

TEST(DtypeTest, F16RoundingErrorIsBounded) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1000.0f, 1000.0f);
  for (int i = 0; i < 100000; ++i) {
    float f = dist(rng);
    float back = F16ToFloat(FloatToF16(f));
    EXPECT_LE(std::fabs(back - f), std::fabs(f) * (1.0f / 2048) + 1e-7f) << f;
  }
}

TEST(DtypeTest, Fp8E4M3AllCodesRoundTrip) {
  for (int b = 0; b < 256; ++b) {
    float f = Fp8E4M3ToFloat(static_cast<uint8_t>(b));
    if (std::isnan(f)) continue;
    if (b == 0x80) continue;  // -0 encodes as -0: same code
    EXPECT_EQ(FloatToFp8E4M3(f), b) << "code " << b << " value " << f;
  }
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(FloatToFp8E4M3(1e6f), 0x7E);    // saturates
  EXPECT_EQ(FloatToFp8E4M3(-1e6f), 0xFE);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(FloatToFp8E4M3(NAN))));
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
}

TEST(DtypeTest, Fp8RoundsToNearest) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> dist(-440.0f, 440.0f);
  for (int i = 0; i < 100000; ++i) {
    float f = dist(rng);
    float back = Fp8E4M3ToFloat(FloatToFp8E4M3(f));
    // 3 mantissa bits: relative error at most 2^-4 for normals, 2^-10 absolute for subnormals.
    EXPECT_LE(std::fabs(back - f), std::fabs(f) / 16 + std::ldexp(1.0f, -10)) << f;
  }
}

}  // namespace
}  // namespace kvblock
