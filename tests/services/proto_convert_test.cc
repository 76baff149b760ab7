#include "services/proto_convert.h"

#include "gtest/gtest.h"

namespace kvblock {
namespace {

TEST(ProtoConvertTest, Hash128RoundTrip) {
  const Hash128 h{0x8000000000000001ULL, 0xfedcba9876543210ULL};
  v1::Hash128 p;
  ToProto(h, &p);
  EXPECT_EQ(FromProto(p), h);
}

TEST(ProtoConvertTest, DtypesMatchTheWireEnum) {
  EXPECT_EQ(ToProto(KvDtype::kF32), v1::KV_DTYPE_F32);
  EXPECT_EQ(ToProto(KvDtype::kBF16), v1::KV_DTYPE_BF16);
  EXPECT_EQ(ToProto(KvDtype::kF16), v1::KV_DTYPE_F16);
  EXPECT_EQ(ToProto(KvDtype::kFP8E4M3), v1::KV_DTYPE_FP8_E4M3);
  for (KvDtype d : {KvDtype::kF32, KvDtype::kBF16, KvDtype::kF16, KvDtype::kFP8E4M3}) {
    EXPECT_EQ(*FromProto(ToProto(d)), d);
  }
  EXPECT_FALSE(FromProto(v1::KV_DTYPE_UNSPECIFIED).ok());
  EXPECT_FALSE(FromProto(static_cast<v1::KvDtype>(77)).ok());
}

}  // namespace
}  // namespace kvblock
