#include "worker/model/safetensors.h"

#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "cache/dtype.h"
#include "gtest/gtest.h"
#include "tests/worker/fixture_util.h"

namespace kvblock {
namespace {

using testing::TempDir;

std::vector<uint8_t> FloatBytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A small valid file: two tensors, F32 and BF16.
std::vector<uint8_t> MakeFile(const TempDir& dir) {
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> d(-2, 2);
  std::vector<float> a(6);
  for (float& x : a) x = d(gen);
  std::vector<uint8_t> b(8);
  for (int i = 0; i < 4; ++i) {
    const uint16_t h = FloatToBf16(d(gen));
    b[2 * i] = h & 0xff;
    b[2 * i + 1] = h >> 8;
  }
  std::vector<uint8_t> ab = FloatBytes(a);
  const std::vector<TensorToWrite> t = {{"a", TensorDtype::kF32, {2, 3}, ab},
                                        {"b", TensorDtype::kBF16, {4}, b}};
  EXPECT_TRUE(WriteSafetensors(dir / "x.safetensors", t).ok());
  return ReadAll(dir / "x.safetensors");
}

std::vector<uint8_t> WithHeader(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> f(8 + header.size() + data_bytes, 0x3f);
  for (int i = 0; i < 8; ++i) f[i] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  std::memcpy(f.data() + 8, header.data(), header.size());
  return f;
}

TEST(SafetensorsTest, WriteThenMapRoundTrips) {
  TempDir dir;
  std::vector<uint8_t> bytes = MakeFile(dir);
  auto f = SafetensorsFile::Open(dir / "x.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->tensors().size(), 2u);
  const TensorInfo* a = (*f)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, TensorDtype::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->NumElements(), 6);
  // The view points into the mapping: same bytes as the file at the recorded offset.
  const uint64_t header = bytes[0] | (uint64_t{bytes[1]} << 8);
  EXPECT_EQ(std::memcmp(a->bytes.data(), bytes.data() + 8 + header, 24), 0);
  EXPECT_EQ((*f)->Find("b")->dtype, TensorDtype::kBF16);
  EXPECT_EQ((*f)->Find("missing"), nullptr);
  EXPECT_EQ(SafetensorsFile::Open(dir / "nope.safetensors").status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, EveryTruncationIsAnErrorNotACrash) {
  TempDir dir;
  std::vector<uint8_t> bytes = MakeFile(dir);
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto f = SafetensorsFile::FromBuffer(absl::MakeConstSpan(bytes.data(), n), "cut");
    EXPECT_FALSE(f.ok()) << "prefix " << n;
    if (!f.ok()) EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(SafetensorsFile::FromBuffer(bytes, "whole").ok());
}

TEST(SafetensorsTest, MalformedHeadersGiveClearErrors) {
  struct Case {
    std::string header;
    size_t data;
    std::string expect;  // substring of the message
  };
  const std::vector<Case> cases = {
      {"not json", 0, "not valid JSON"},
      {"[1,2]", 0, "not a JSON object"},
      {R"({"t":5})", 0, "\"t\" is not an object"},
      {R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4, "dtype"},
      {R"({"t":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", 4, "unknown dtype"},
      {R"({"t":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", 4, "shape"},
      {R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, "non-negative"},
      {R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4, "non-negative"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4, "data_offsets"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}})", 4, "data_offsets"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4, "outside"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}})", 4, "outside"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", 4, "outside"},
      {R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "expected 12"},
      {R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8, "too large"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, "overlap"},
      {R"({"__metadata__":7})", 0, "__metadata__"},
  };
  for (const Case& c : cases) {
    std::vector<uint8_t> f = WithHeader(c.header, c.data);
    auto r = SafetensorsFile::FromBuffer(f, "bad.safetensors");
    ASSERT_FALSE(r.ok()) << c.header;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.header;
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status() << " / " << c.expect;
    EXPECT_NE(r.status().message().find("bad.safetensors"), std::string::npos);
  }
  // A header length beyond the file.
  std::vector<uint8_t> huge(16, 0);
  huge[0] = 0xff;
  huge[5] = 0x01;
  EXPECT_FALSE(SafetensorsFile::FromBuffer(huge, "huge").ok());
  // Valid: empty tensor, metadata object, zero-size data.
  EXPECT_TRUE(SafetensorsFile::FromBuffer(
                  WithHeader(R"({"__metadata__":{"format":"pt"},"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]}})", 0), "ok")
                  .ok());
}

TEST(SafetensorsTest, RandomHeaderMutationsNeverCrash) {
  TempDir dir;
  const std::vector<uint8_t> good = MakeFile(dir);
  std::mt19937 gen(99);
  int rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> f = good;
    const int flips = 1 + iter % 4;
    for (int i = 0; i < flips; ++i) {
      const size_t pos = gen() % std::min<size_t>(f.size(), 8 + 160);
      f[pos] = static_cast<uint8_t>(gen());
    }
    auto r = SafetensorsFile::FromBuffer(f, "mutant");
    if (!r.ok()) {
      ++rejected;
      continue;
    }
    // Anything accepted must be self-consistent: every view inside the buffer.
    for (const TensorInfo& t : (*r)->tensors()) {
      ASSERT_GE(t.bytes.data(), f.data());
      ASSERT_LE(t.bytes.data() + t.bytes.size(), f.data() + f.size());
      ASSERT_EQ(static_cast<int64_t>(t.bytes.size()), t.NumElements() * int64_t(TensorDtypeSize(t.dtype)));
    }
  }
  EXPECT_GT(rejected, 1000);
}

TEST(CheckpointTest, OpensSingleAndShardedCheckpoints) {
  auto single = Checkpoint::Open(std::string(KVBLOCK_SHARED_DIR) + "/fixtures/llama-tiny");
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->files().size(), 1u);
  EXPECT_NE((*single)->Find("model.embed_tokens.weight"), nullptr);
  auto sharded = Checkpoint::Open(std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures/mistral-tiny");
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  EXPECT_EQ((*sharded)->files().size(), 4u);
  EXPECT_EQ((*sharded)->AllTensors().size(), 3u + 2 * 9);  // embed, norm, lm_head; 9 per layer
  EXPECT_NE((*sharded)->Find("lm_head.weight"), nullptr);
  EXPECT_NE((*sharded)->Find("model.layers.1.mlp.down_proj.weight"), nullptr);
}

TEST(CheckpointTest, BadDirectoriesAndIndexesAreClearErrors) {
  TempDir dir;
  EXPECT_EQ(Checkpoint::Open(dir / "absent").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Checkpoint::Open(dir.path()).status().code(), absl::StatusCode::kNotFound);
  testing::CopyCheckpoint(std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures/mistral-tiny", dir / "m");
  const std::string index = dir / "m/model.safetensors.index.json";
  auto write = [&](const std::string& text) { std::ofstream(index, std::ios::trunc) << text; };
  write("{\"weight_map\": 3}");
  EXPECT_NE(Checkpoint::Open(dir / "m").status().message().find("weight_map"), std::string::npos);
  write("{\"weight_map\": {\"lm_head.weight\": \"model-00009-of-00009.safetensors\"}}");
  auto missing = Checkpoint::Open(dir / "m");
  EXPECT_NE(missing.status().message().find("model-00009-of-00009"), std::string::npos) << missing.status();
  write("{\"weight_map\": {\"lm_head.weight\": \"../../etc/passwd\"}}");
  EXPECT_FALSE(Checkpoint::Open(dir / "m").ok());
  write("{\"weight_map\": {\"not.there\": \"model-00001-of-00004.safetensors\"}}");
  auto wrong = Checkpoint::Open(dir / "m");
  EXPECT_NE(wrong.status().message().find("not.there"), std::string::npos) << wrong.status();
  write("{broken");
  EXPECT_EQ(Checkpoint::Open(dir / "m").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvblock
