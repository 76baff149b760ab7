// worker/eval: BuildQaRequest lays a prompt out as the demo model was trained (instruction,
// passages, "Question: ...\nAnswer:"), NormalizeAnswer, ParseQaDataset's errors, and the real
// `kvblock eval` binary with the committed models/kvblock-demo-qa on the first 30 examples of its
// committed test split: block mode must score at least the recorded level minus a small margin.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/run_command.h"
#include "tests/worker/fixture_util.h"
#include "worker/eval/eval.h"
#include "worker/eval/qa_prompt.h"
#include "worker/tokenizer/byte_tokenizer.h"

namespace kvblock {
namespace {

std::vector<int32_t> Bytes(std::string_view s) { return std::vector<int32_t>(s.begin(), s.end()); }

TEST(QaPromptTest, LayoutIsInstructionPassagesQuestion) {
  auto tok = ByteTokenizer::Create({});
  ASSERT_TRUE(tok.ok());
  const std::vector<std::string> passages = {"Aa is a town.\n", "Bb is a port.\n"};
  absl::StatusOr<GenerateRequest> req = BuildQaRequest(**tok, passages, "Who?", 512);
  ASSERT_TRUE(req.ok()) << req.status();
  ASSERT_EQ(req->blocks.size(), 3u);
  EXPECT_EQ(req->blocks[0], Bytes(kQaInstruction));
  EXPECT_EQ(req->blocks[1], Bytes(passages[0]));
  EXPECT_EQ(req->blocks[2], Bytes(passages[1]));
  EXPECT_EQ(req->final_block, Bytes("Question: Who?\nAnswer:"));
  // A passage longer than a block is cut as the indexer cuts it.
  absl::StatusOr<GenerateRequest> cut = BuildQaRequest(**tok, {std::string(25, 'x')}, "Q", 10);
  ASSERT_TRUE(cut.ok());
  ASSERT_EQ(cut->blocks.size(), 4u);
  EXPECT_EQ(cut->blocks[3].size(), 5u);
  EXPECT_FALSE(BuildQaRequest(**tok, passages, "Q", 0).ok());
}

TEST(QaPromptTest, NormalizeAnswer) {
  EXPECT_EQ(NormalizeAnswer(" salt and amber"), "salt and amber");
  EXPECT_EQ(NormalizeAnswer(" 1473\nQuestion: more"), "1473");
  EXPECT_EQ(NormalizeAnswer("\t a spring fair \r"), "a spring fair");
  EXPECT_EQ(NormalizeAnswer("\nx"), "");
}

TEST(QaDatasetTest, ParsesAndRejects) {
  absl::StatusOr<std::vector<QaExample>> ok = ParseQaDataset(
      R"({"id": "a", "passages": ["p1", "p2"], "question": "q", "answer": "x", "extra": 1})"
      "\n\n"
      R"({"passages": [], "question": "q2", "answer": "y"})"
      "\n");
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ((*ok)[0].passages, (std::vector<std::string>{"p1", "p2"}));
  EXPECT_EQ((*ok)[1].id, "line3");
  for (const char* bad : {R"({"passages": ["p"], "question": "q"})",
                          R"({"passages": "p", "question": "q", "answer": "a"})",
                          R"({"passages": [""], "question": "q", "answer": "a"})", "not json", ""}) {
    EXPECT_EQ(ParseQaDataset(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

using testing::CommandRun;
using testing::RunCommand;

// Block-mode exact matches of models/kvblock-demo-qa on the first 30 examples of
// models/kvblock-demo-qa/eval/test.jsonl, as recorded in its README.md. Greedy decoding is
// deterministic; the margin allows an engine change that moves a near-tie argmax or two.
constexpr int kRecordedCorrect = 20;
constexpr int kMargin = 2;

TEST(EvalCommandTest, CommittedModelKeepsItsRecordedAccuracy) {
  testing::TempDir dir;
  const std::string model = std::string(KVBLOCK_SOURCE_DIR) + "/models/kvblock-demo-qa";
  const std::string report = dir / "report.json";
  CommandRun r = RunCommand(std::string(KVBLOCK_BIN) + " eval --model " + model + " --dataset " +
                            model + "/eval/test.jsonl --mode block --limit 30 --json " + report);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(report);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.output;
  EXPECT_EQ(j["mode"], "block");
  ASSERT_EQ(j["examples"], 30);
  ASSERT_EQ(j["results"].size(), 30u);
  int correct = 0, hits = 0;
  for (const auto& x : j["results"]) {
    const bool c = x["answer"] == x["expected"];
    EXPECT_EQ(x["correct"], c);
    correct += c;
    hits += x["cache_hits"].get<int>();
  }
  EXPECT_EQ(j["correct"], correct);
  EXPECT_GT(hits, 0);  // the instruction block and shared passages come from the cache
  EXPECT_NE(r.output.find("exact match " + std::to_string(correct) + "/30"), std::string::npos)
      << r.output;
  EXPECT_GE(correct, kRecordedCorrect - kMargin) << r.output;
}

TEST(EvalCommandTest, BadArgumentsFail) {
  testing::TempDir dir;
  const std::string model = std::string(KVBLOCK_SOURCE_DIR) + "/models/kvblock-demo-qa";
  CommandRun r = RunCommand(std::string(KVBLOCK_BIN) + " eval --model " + model + " --dataset " +
                            (dir / "missing.jsonl"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("missing.jsonl"), std::string::npos) << r.output;
  r = RunCommand(std::string(KVBLOCK_BIN) + " eval --model " + model + " --dataset " + model +
                 "/eval/test.jsonl --mode sideways");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("block or full"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kvblock
