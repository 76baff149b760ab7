// Tests of `kvblock tokenize` through RunTokenize (the CLI's core) on real files.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "worker/tokenize_command.h"

namespace kvblock {
namespace {

const std::string kLlama3 = std::string(KVBLOCK_SHARED_DIR) + "/tokenizers/llama3/tokenizer.json";

std::string WriteTemp(const std::string& name, const std::string& contents) {
  const std::string path = (std::filesystem::path(testing::TempDir()) / name).string();
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

TEST(TokenizeCommandTest, EncodeAndDecode) {
  std::ostringstream out, timing;
  TokenizeCommandOptions options;
  options.tokenizer_path = kLlama3;
  options.text_file = WriteTemp("tok_in.txt", "<|begin_of_text|>Hello world");
  options.report_timing = true;
  ASSERT_TRUE(RunTokenize(options, out, timing).ok());
  EXPECT_EQ(out.str(), "[128000,9906,1917]\n");
  EXPECT_NE(timing.str().find("MB/s"), std::string::npos);

  std::ostringstream text, quiet;
  options.text_file = WriteTemp("tok_ids.json", out.str());
  options.decode = true;
  options.report_timing = false;
  ASSERT_TRUE(RunTokenize(options, text, quiet).ok());
  EXPECT_EQ(text.str(), "<|begin_of_text|>Hello world");
  EXPECT_TRUE(quiet.str().empty());

  std::ostringstream skipped;
  options.skip_special_tokens = true;
  ASSERT_TRUE(RunTokenize(options, skipped, quiet).ok());
  EXPECT_EQ(skipped.str(), "Hello world");
}

TEST(TokenizeCommandTest, ErrorsWriteNothing) {
  TokenizeCommandOptions options;
  options.tokenizer_path = kLlama3;
  const auto expect_error = [&](absl::StatusCode code, std::string_view needle) {
    std::ostringstream out, timing;
    const absl::Status status = RunTokenize(options, out, timing);
    EXPECT_EQ(status.code(), code) << status;
    EXPECT_NE(std::string(status.message()).find(needle), std::string::npos) << status;
    EXPECT_TRUE(out.str().empty());
  };
  options.text_file = "";
  expect_error(absl::StatusCode::kInvalidArgument, "--text-file");
  options.text_file = "/nonexistent/input.txt";
  expect_error(absl::StatusCode::kNotFound, "/nonexistent/input.txt");
  options.text_file = WriteTemp("tok_bad_utf8.txt", "ok \xC3(");
  expect_error(absl::StatusCode::kInvalidArgument, "not valid UTF-8");
  options.decode = true;
  options.text_file = WriteTemp("tok_bad_ids.json", "[1, \"x\"]");
  expect_error(absl::StatusCode::kInvalidArgument, "element 1");
  options.text_file = WriteTemp("tok_big_id.json", "[1, 128256]");
  expect_error(absl::StatusCode::kInvalidArgument, "128256");
  options.text_file = WriteTemp("tok_not_array.json", "{\"ids\": [1]}");
  expect_error(absl::StatusCode::kInvalidArgument, "JSON array");
  options.tokenizer_path = "/nonexistent/tokenizer.json";
  expect_error(absl::StatusCode::kNotFound, "/nonexistent/tokenizer.json");
}

}  // namespace
}  // namespace kvblock
