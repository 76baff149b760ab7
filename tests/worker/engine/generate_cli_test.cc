// `kvblock generate` end to end through the real binary: a fixture's reference.json as the
// request, block and full mode, the cache across two processes, --dump-logits, text requests,
// and bad input (exit status != 0, one line on stderr, no output file).
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/worker/fixture_util.h"
#include "worker/model/safetensors.h"

namespace kvblock {
namespace {

using json = nlohmann::json;
using testing::TempDir;

struct RunResult {
  int status = -1;
  std::string err;
};

// Runs the binary with `args` (already shell-quoted where needed); stderr captured.
RunResult Generate(const TempDir& dir, const std::string& args) {
  const std::string err_path = dir / "stderr.txt";
  const std::string cmd = absl::StrCat(KVBLOCK_BIN, " generate ", args, " 2>", err_path);
  RunResult r;
  const int raw = std::system(cmd.c_str());
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream in(err_path);
  r.err.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return r;
}

json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

class GenerateCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_ / "model";
    testing::CopyCheckpoint(std::string(KVBLOCK_SHARED_DIR) + "/fixtures/llama-tiny", model_);
    request_ = std::string(KVBLOCK_SHARED_DIR) + "/fixtures/llama-tiny/reference.json";
    base_ = absl::StrCat("--model ", model_, " --cache-dir ", dir_ / "cache");
  }
  TempDir dir_;
  std::string model_, request_, base_;
};

TEST_F(GenerateCliTest, ReferenceRequestInBothModesWithCacheAcrossProcesses) {
  testing::Reference ref = testing::LoadReference(std::string(KVBLOCK_SHARED_DIR) + "/fixtures/llama-tiny");
  const std::string out = dir_ / "out.json";
  const std::string logits = dir_ / "logits.safetensors";
  RunResult r = Generate(dir_, absl::StrCat(base_, " --request ", request_, " --output ", out,
                                      " --dump-logits ", logits));
  ASSERT_EQ(r.status, 0) << r.err;
  json o = ReadJson(out);
  EXPECT_EQ(o["tokens"].get<std::vector<int32_t>>(), ref.greedy_block);  // no EOS in this one
  EXPECT_EQ(o["mode"], "block");
  EXPECT_EQ(o["cache"]["misses"], 4);
  EXPECT_EQ(o["cache"]["hits"], 0);
  EXPECT_TRUE(o["text"].is_string());
  for (const char* k : {"lookup", "encode_blocks", "load_blocks", "prefill", "decode", "ttft", "total"}) {
    EXPECT_TRUE(o["timings_ms"][k].is_number()) << k;
  }
  auto dumped = SafetensorsFile::Open(logits);
  ASSERT_TRUE(dumped.ok()) << dumped.status();
  const TensorInfo* t = (*dumped)->Find("logits");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{23, 259}));
  std::vector<float> got(t->NumElements());
  std::memcpy(got.data(), t->bytes.data(), t->bytes.size());
  EXPECT_LT(testing::MaxRelError(got, ref.Tensor("logits_final_block_mode")), 1e-4);

  // A second process: every block from the embedded store (RocksDB in --cache-dir).
  const std::string out2 = dir_ / "out2.json";
  r = Generate(dir_, absl::StrCat(base_, " --request ", request_, " --output ", out2));
  ASSERT_EQ(r.status, 0) << r.err;
  json o2 = ReadJson(out2);
  EXPECT_EQ(o2["cache"]["hits"], 4);
  EXPECT_EQ(o2["cache"]["misses"], 0);
  EXPECT_EQ(o2["tokens"], o["tokens"]);
  EXPECT_EQ(o2["model_fingerprint"], o["model_fingerprint"]);

  const std::string out3 = dir_ / "out3.json";
  r = Generate(dir_, absl::StrCat(base_, " --request ", request_, " --mode full --output ", out3));
  ASSERT_EQ(r.status, 0) << r.err;
  json o3 = ReadJson(out3);
  EXPECT_EQ(o3["tokens"].get<std::vector<int32_t>>(), ref.greedy_full);
  EXPECT_EQ(o3["mode"], "full");
}

TEST_F(GenerateCliTest, TextBlocksGoThroughTheTokenizer) {
  // The tiny models have no tokenizer.json: the byte-level tokenizer maps each byte to its id.
  const std::string text_req = dir_ / "text.json";
  const std::string ids_req = dir_ / "ids.json";
  std::ofstream(text_req) << R"({"blocks": ["Block attention reuses passages.", "Second passage"],
                                 "final_block": "Which passage?", "max_new_tokens": 6})";
  json ids = {{"blocks", {std::vector<int>(), std::vector<int>()}}, {"final_block", std::vector<int>()},
              {"max_new_tokens", 6}};
  for (unsigned char c : std::string("Block attention reuses passages.")) ids["blocks"][0].push_back(c);
  for (unsigned char c : std::string("Second passage")) ids["blocks"][1].push_back(c);
  for (unsigned char c : std::string("Which passage?")) ids["final_block"].push_back(c);
  std::ofstream(ids_req) << ids.dump();
  RunResult a = Generate(dir_, absl::StrCat(base_, " --request ", text_req, " --output ", dir_ / "a.json"));
  ASSERT_EQ(a.status, 0) << a.err;
  RunResult b = Generate(dir_, absl::StrCat(base_, " --request ", ids_req, " --output ", dir_ / "b.json"));
  ASSERT_EQ(b.status, 0) << b.err;
  json ja = ReadJson(dir_ / "a.json"), jb = ReadJson(dir_ / "b.json");
  EXPECT_EQ(ja["tokens"], jb["tokens"]);
  EXPECT_EQ(jb["cache"]["hits"], 2);  // the text request stored the same blocks
  EXPECT_EQ(ja["tokens"].size(), 6u);
}

TEST_F(GenerateCliTest, BadInputFailsWithOneLineAndNoOutput) {
  struct Case {
    std::string name;
    std::string request;  // file contents; empty: use the reference request
    std::string extra;    // extra/overriding arguments
    std::string expect;   // substring of the stderr line
  };
  const std::vector<Case> cases = {
      {"model dir", "", "", "nope"},
      {"malformed json", "{\"blocks\": [[1, 2]", "", "not valid JSON"},
      {"wrong type", R"({"blocks": [[1, "x"]], "final_block": [5]})", "", "blocks[0][1]"},
      {"no final", R"({"blocks": [[1, 2]]})", "", "final_block"},
      {"empty final", R"({"blocks": [[1, 2]], "final_block": []})", "", "final block is empty"},
      {"id >= vocab", R"({"final_block": [1, 259]})", "", "token id 259"},
      {"too long", "(generated below)", "", "limit of 4096"},
      {"bad mode", "", " --mode sideways", "--mode"},
      {"bad temperature", R"({"final_block": [1], "temperature": -1})", "", "temperature"},
  };
  for (const Case& c : cases) {
    std::string req = request_;
    if (!c.request.empty()) {
      req = dir_ / "bad.json";
      std::string body = c.request;
      if (c.name == "too long") {
        body = "{\"final_block\": [";
        for (int i = 0; i < 4100; ++i) body += i ? ",7" : "7";
        body += "]}";
      }
      std::ofstream(req, std::ios::trunc) << body;
    }
    const std::string out = dir_ / "never.json";
    const std::string model_args =
        c.name == "model dir" ? absl::StrCat("--model ", dir_ / "nope", " --cache-dir ", dir_ / "cache")
                              : base_;
    RunResult r = Generate(dir_, absl::StrCat(model_args, " --request ", req, " --output ", out, c.extra));
    EXPECT_NE(r.status, 0) << c.name;
    EXPECT_FALSE(std::filesystem::exists(out)) << c.name;
    std::vector<std::string> lines = absl::StrSplit(r.err, '\n', absl::SkipEmpty());
    ASSERT_EQ(lines.size(), 1u) << c.name << ": " << r.err;
    EXPECT_EQ(lines[0].rfind("kvblock generate: ", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find(c.expect), std::string::npos) << c.name << ": " << lines[0];
  }
}

}  // namespace
}  // namespace kvblock
