#include "cache/block_payload.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvblock {
namespace {

BlockMeta SmallMeta(KvDtype dtype) {
  BlockMeta m;
  m.model = Hash128{0xabc, 0xdef};
  m.key = Hash128{0x123, 0x456};
  m.dtype = dtype;
  m.num_layers = 3;
  m.num_kv_heads = 2;
  m.head_dim = 8;
  m.num_tokens = 5;
  return m;
}

std::vector<float> RandomValues(size_t n, uint32_t seed, float scale = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Max error allowed per dtype, relative to the largest magnitude in the head.
double Tolerance(KvDtype d) {
  switch (d) {
    case KvDtype::kF32: return 0;
    case KvDtype::kBF16: return 1.0 / 256;
    case KvDtype::kF16: return 1.0 / 2048;
    case KvDtype::kFP8E4M3: return 1.0 / 16;
  }
  return 0;
}

class PayloadRoundTrip : public ::testing::TestWithParam<KvDtype> {};

TEST_P(PayloadRoundTrip, EncodeParseDecode) {
  const BlockMeta meta = SmallMeta(GetParam());
  const size_t n = LayerElements(meta) * meta.num_layers;
  const std::vector<float> k = RandomValues(n, 1), v = RandomValues(n, 2);
  auto payload = EncodeBlock(meta, k, v);
  ASSERT_TRUE(payload.ok()) << payload.status();
  EXPECT_EQ(payload->size(), PayloadBytes(meta));
  auto view = BlockView::Parse(*payload);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->meta(), meta);

  float max_abs = 0;
  for (float x : k) max_abs = std::max(max_abs, std::fabs(x));
  for (float x : v) max_abs = std::max(max_abs, std::fabs(x));
  const size_t per_layer = LayerElements(meta);
  std::vector<float> kl(per_layer), vl(per_layer);
  for (uint32_t l = 0; l < meta.num_layers; ++l) {
    view->ReadLayerF32(l, kl.data(), vl.data());
    for (size_t i = 0; i < per_layer; ++i) {
      EXPECT_NEAR(kl[i], k[l * per_layer + i], Tolerance(meta.dtype) * max_abs) << l << "/" << i;
      EXPECT_NEAR(vl[i], v[l * per_layer + i], Tolerance(meta.dtype) * max_abs) << l << "/" << i;
    }
  }
  // Raw re-encoding of the data section reproduces the payload byte for byte.
  auto raw = EncodeBlockRaw(meta, absl::MakeSpan(*payload).subspan(kBlockHeaderBytes));
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(*raw, *payload);
}

TEST_P(PayloadRoundTrip, EverySingleByteFlipIsRejected) {
  const BlockMeta meta = SmallMeta(GetParam());
  const size_t n = LayerElements(meta) * meta.num_layers;
  auto payload = EncodeBlock(meta, RandomValues(n, 3), RandomValues(n, 4));
  ASSERT_TRUE(payload.ok());
  std::vector<uint8_t> bytes = *payload;
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xFF}) {
      bytes[i] ^= mask;
      EXPECT_FALSE(BlockView::Parse(bytes).ok()) << "flip at byte " << i << " mask " << int{mask};
      bytes[i] ^= mask;
    }
  }
  EXPECT_TRUE(BlockView::Parse(bytes).ok());
}

TEST_P(PayloadRoundTrip, EveryTruncationAndExtensionIsRejected) {
  const BlockMeta meta = SmallMeta(GetParam());
  const size_t n = LayerElements(meta) * meta.num_layers;
  auto payload = EncodeBlock(meta, RandomValues(n, 5), RandomValues(n, 6));
  ASSERT_TRUE(payload.ok());
  for (size_t len = 0; len < payload->size(); ++len) {
    EXPECT_FALSE(BlockView::Parse(absl::MakeSpan(*payload).subspan(0, len)).ok()) << len;
  }
  std::vector<uint8_t> longer = *payload;
  longer.push_back(0);
  EXPECT_FALSE(BlockView::Parse(longer).ok());
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, PayloadRoundTrip,
                         ::testing::Values(KvDtype::kF32, KvDtype::kBF16, KvDtype::kF16,
                                           KvDtype::kFP8E4M3),
                         [](const auto& info) {
                           std::string name(DtypeName(info.param));
                           std::erase(name, '-');
                           return name;
                         });

TEST(BlockPayloadTest, HeaderAloneDecodes) {
  const BlockMeta meta = SmallMeta(KvDtype::kBF16);
  const size_t n = LayerElements(meta) * meta.num_layers;
  auto payload = EncodeBlock(meta, RandomValues(n, 7), RandomValues(n, 8));
  ASSERT_TRUE(payload.ok());
  auto header = DecodeHeader(absl::MakeSpan(*payload).subspan(0, kBlockHeaderBytes));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->meta, meta);
  EXPECT_EQ(header->data_bytes, DataBytes(meta));
}

TEST(BlockPayloadTest, InvalidShapesAreRejected) {
  BlockMeta meta = SmallMeta(KvDtype::kF32);
  const size_t n = LayerElements(meta) * meta.num_layers;
  std::vector<float> k(n, 1.0f), v(n, 1.0f);
  BlockMeta bad = meta;
  bad.num_tokens = 0;
  EXPECT_EQ(EncodeBlock(bad, k, v).status().code(), absl::StatusCode::kInvalidArgument);
  bad = meta;
  bad.head_dim = kMaxHeadDim + 1;
  EXPECT_EQ(EncodeBlock(bad, k, v).status().code(), absl::StatusCode::kInvalidArgument);
  bad = meta;
  bad.dtype = static_cast<KvDtype>(9);
  EXPECT_EQ(EncodeBlock(bad, k, v).status().code(), absl::StatusCode::kInvalidArgument);
  k.pop_back();
  EXPECT_EQ(EncodeBlock(meta, k, v).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeBlockRaw(meta, std::vector<uint8_t>(3)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BlockPayloadTest, ChecksumErrorsAreDataLoss) {
  const BlockMeta meta = SmallMeta(KvDtype::kF16);
  const size_t n = LayerElements(meta) * meta.num_layers;
  auto payload = EncodeBlock(meta, RandomValues(n, 9), RandomValues(n, 10));
  ASSERT_TRUE(payload.ok());
  (*payload)[kBlockHeaderBytes + 17] ^= 0x10;
  EXPECT_EQ(BlockView::Parse(*payload).status().code(), absl::StatusCode::kDataLoss);
  // Trusted data (verified earlier in this host's memory) is not re-hashed; the header and the
  // size still are.
  EXPECT_TRUE(BlockView::Parse(*payload, DataCheck::kTrusted).ok());
  EXPECT_EQ(BlockView::Parse(absl::MakeConstSpan(*payload).first(payload->size() - 1), DataCheck::kTrusted)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  (*payload)[kBlockHeaderBytes + 17] ^= 0x10;
  (*payload)[30] ^= 0x10;  // inside the key
  EXPECT_EQ(BlockView::Parse(*payload).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(BlockView::Parse(*payload, DataCheck::kTrusted).status().code(), absl::StatusCode::kDataLoss);
}

TEST(BlockPayloadTest, Fp8ScalesPerHeadKeepSmallHeadsAccurate) {
  // One head has values 1000x smaller than the other; per-head scales keep its relative error
  // at fp8 precision instead of flushing it to zero.
  BlockMeta meta = SmallMeta(KvDtype::kFP8E4M3);
  meta.num_layers = 1;
  const size_t per_head = meta.num_tokens * meta.head_dim;
  std::vector<float> k = RandomValues(2 * per_head, 11), v = RandomValues(2 * per_head, 12);
  for (size_t i = per_head; i < 2 * per_head; ++i) k[i] *= 1e-3f;
  auto payload = EncodeBlock(meta, k, v);
  ASSERT_TRUE(payload.ok());
  auto view = BlockView::Parse(*payload);
  ASSERT_TRUE(view.ok());
  std::vector<float> kd(2 * per_head), vd(2 * per_head);
  view->ReadLayerF32(0, kd.data(), vd.data());
  double err = 0, norm = 0;
  for (size_t i = per_head; i < 2 * per_head; ++i) {
    err += (kd[i] - k[i]) * (kd[i] - k[i]);
    norm += k[i] * k[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 0.05);
}

}  // namespace
}  // namespace kvblock
