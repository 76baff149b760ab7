#include "cache/block_key.h"

#include <vector>

#include "gtest/gtest.h"

namespace kvblock {
namespace {

TEST(BlockKeyTest, GoldenKeyNeverChanges) {
  // If this fails, the key function changed and every stored block is orphaned. Bump
  // kBlockLayoutVersion deliberately instead, and update these values in the same commit.
  const ModelFingerprint model{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  const std::vector<int32_t> tokens = {256, 72, 101, 108, 108, 111, 0, 128255};
  EXPECT_EQ(ComputeBlockKey(model, KvDtype::kBF16, tokens).ToHex(),
            "5e1303f91725c3db51ec7debde7ca8c3");
  EXPECT_EQ(ComputeBlockKey(model, KvDtype::kF32, tokens).ToHex(),
            "c1d91a9cbe0f629ee4a901df5a57a3a1");
  EXPECT_EQ(ComputeBlockKey(ModelFingerprint{}, KvDtype::kF32, {}).ToHex(),
            "533a878e13d50515e05476ca5cbd1d30");
}

TEST(BlockKeyTest, EveryInputChangesTheKey) {
  const ModelFingerprint model{1, 2};
  const std::vector<int32_t> tokens = {1, 2, 3};
  const BlockKey base = ComputeBlockKey(model, KvDtype::kF16, tokens);
  EXPECT_EQ(base, ComputeBlockKey(model, KvDtype::kF16, tokens));
  EXPECT_NE(base, ComputeBlockKey(ModelFingerprint{1, 3}, KvDtype::kF16, tokens));
  EXPECT_NE(base, ComputeBlockKey(model, KvDtype::kBF16, tokens));
  EXPECT_NE(base, ComputeBlockKey(model, KvDtype::kF16, std::vector<int32_t>{1, 2, 4}));
  EXPECT_NE(base, ComputeBlockKey(model, KvDtype::kF16, std::vector<int32_t>{1, 2, 3, 0}));
  EXPECT_NE(base, ComputeBlockKey(model, KvDtype::kF16, std::vector<int32_t>{3, 2, 1}));
}

TEST(BlockKeyTest, HexRoundTripAndErrors) {
  const Hash128 h{0x00ff00ff00ff00ffULL, 0x1234567890abcdefULL};
  EXPECT_EQ(h.ToHex(), "00ff00ff00ff00ff1234567890abcdef");
  auto parsed = Hash128::FromHex(h.ToHex());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, h);
  EXPECT_EQ(*Hash128::FromHex("00FF00FF00FF00FF1234567890ABCDEF"), h);
  EXPECT_FALSE(Hash128::FromHex("00ff").ok());
  EXPECT_FALSE(Hash128::FromHex("00ff00ff00ff00ff1234567890abcdeg").ok());
  uint8_t bytes[16];
  h.ToBytes(bytes);
  EXPECT_EQ(bytes[0], 0xef);  // little-endian, lo first
  EXPECT_EQ(Hash128::FromBytes(bytes), h);
}

}  // namespace
}  // namespace kvblock
