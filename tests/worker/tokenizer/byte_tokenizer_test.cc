// Tests of the byte-level tokenizer of the test models and of LoadTokenizer's dispatch.
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/tokenizer/test_util.h"
#include "worker/tokenizer/byte_tokenizer.h"
#include "worker/tokenizer/hf_tokenizer.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {
namespace {

const std::string kShared = KVBLOCK_SHARED_DIR;

TEST(ByteTokenizerTest, FixtureConfig) {
  auto tok = LoadTokenizer(kShared + "/fixtures/llama-tiny");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto* byte = dynamic_cast<ByteTokenizer*>(tok->get());
  ASSERT_NE(byte, nullptr) << "a model directory without tokenizer.json gets the byte tokenizer";
  EXPECT_EQ(byte->VocabSize(), 259);
  EXPECT_EQ(byte->options().bos_id, 256);
  EXPECT_EQ(byte->options().eos_ids, std::vector<int32_t>{257});
  EXPECT_EQ(byte->options().pad_id, 258);
  auto ids = byte->Encode("hi \xE6\x9D\xB1\xFF");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{104, 105, 32, 0xE6, 0x9D, 0xB1, 0xFF}));
  auto text = byte->Decode(std::vector<int32_t>{256, 104, 105, 257});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "hi");  // BOS/EOS have no text
  EXPECT_TRUE(byte->IsSpecialToken(257));
  EXPECT_FALSE(byte->IsSpecialToken(65));
  auto lossy = byte->Decode(std::vector<int32_t>{0xE6, 65});
  ASSERT_TRUE(lossy.ok());
  EXPECT_EQ(*lossy, "\xEF\xBF\xBD" "A");
  EXPECT_EQ(byte->Decode(std::vector<int32_t>{259}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(byte->Decode(std::vector<int32_t>{-3}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ByteTokenizerTest, RandomRoundTrip) {
  auto tok = ByteTokenizer::Create({});
  ASSERT_TRUE(tok.ok());
  const uint64_t seed = testing_util::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 20; ++i) {
    const std::string text = testing_util::RandomText(rng, 300);
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(ids->size(), text.size());
    auto back = (*tok)->Decode(*ids);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, text);
  }
}

TEST(ByteTokenizerTest, OptionsValidate) {
  ByteTokenizerOptions options;
  EXPECT_TRUE(options.Validate().ok());
  options.vocab_size = 100;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.eos_ids = {300};
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.bos_id = 65;  // a byte cannot be special
  EXPECT_FALSE(ByteTokenizer::Create(options).ok());
}

TEST(LoadTokenizerTest, DispatchAndErrors) {
  auto missing = LoadTokenizer("/nonexistent/kvblock/tokenizer.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/kvblock/tokenizer.json"), std::string_view::npos);

  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / "kvblock_empty_model_dir";
  std::filesystem::create_directories(dir);
  auto empty = LoadTokenizer(dir.string());
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kNotFound);

  // A config.json with a bad vocab_size is named in the error.
  {
    std::ofstream(dir / "config.json") << R"({"vocab_size": 12})";
  }
  auto bad = LoadTokenizer(dir.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("config.json"), std::string_view::npos) << bad.status();
  std::filesystem::remove_all(dir);

  auto hf = LoadTokenizer(kShared + "/tokenizers/qwen3");  // directory holding tokenizer.json
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_NE(dynamic_cast<HfTokenizer*>(hf->get()), nullptr);
}

}  // namespace
}  // namespace kvblock
