// End to end: runs the real `kvblock demo` binary twice on a fresh data directory and checks its
// report: the bundled trained model is written and named, both modes answer every question (each
// judged against its expected answer), the second pass of a run is all cache hits, and a second
// run finds the whole corpus already indexed (nothing encoded, every block a hit).
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "gtest/gtest.h"
#include "tests/run_command.h"
#include "tests/worker/fixture_util.h"

namespace kvblock {
namespace {

using testing::CommandRun;
using testing::RunCommand;

// {hits, total} of the "pass N: block-mode cache hits H/T" line.
std::pair<int, int> PassHits(const std::string& out, int pass) {
  std::smatch m;
  const std::regex re("pass " + std::to_string(pass) + R"(: block-mode cache hits (\d+)/(\d+))");
  if (!std::regex_search(out, m, re)) return {-1, -1};
  return {std::stoi(m[1]), std::stoi(m[2])};
}

int CountLines(const std::string& out, const std::regex& re) {
  return static_cast<int>(std::distance(std::sregex_iterator(out.begin(), out.end(), re),
                                        std::sregex_iterator()));
}

TEST(DemoCommandTest, TwoRunsSecondPassAndSecondRunAllHits) {
  testing::TempDir dir;
  const std::string cmd =
      std::string(KVBLOCK_BIN) + " demo --data-dir " + (dir / "data");
  CommandRun first = RunCommand(cmd);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("model: kvblock-demo-qa"), std::string::npos) << first.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "data/model/model.safetensors"));
  // Six bundled questions, each answered in both modes, in each of two passes.
  EXPECT_EQ(CountLines(first.output,
                       std::regex(R"(\n\s+block\s+[0-9.]+\s+\d+/\d+\s+".*"\s+(right|wrong))")),
            12)
      << first.output;
  EXPECT_EQ(CountLines(first.output, std::regex(R"(\n\s+full\s+[0-9.]+\s+-\s+".*"\s+(right|wrong))")),
            12)
      << first.output;
  // Greedy decoding over the same cached blocks: both passes give the same answers.
  std::smatch p1, p2;
  ASSERT_TRUE(std::regex_search(first.output, p1,
                                std::regex(R"(pass 1: expected answers matched: block (\d+)/6, full (\d+)/6)")))
      << first.output;
  ASSERT_TRUE(std::regex_search(first.output, p2,
                                std::regex(R"(pass 2: expected answers matched: block (\d+)/6, full (\d+)/6)")))
      << first.output;
  EXPECT_EQ(p1[1], p2[1]);
  EXPECT_EQ(p1[2], p2[2]);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(first.output, m,
                                std::regex(R"(index: 120 passages -> (\d+) blocks.*encoded (\d+))")))
      << first.output;
  EXPECT_GE(std::stoi(m[1]), 120);
  EXPECT_GT(std::stoi(m[2]), 0);
  auto [h1, t1] = PassHits(first.output, 1);
  auto [h2, t2] = PassHits(first.output, 2);
  ASSERT_GT(t1, 0) << first.output;
  EXPECT_EQ(t1, t2);
  EXPECT_EQ(h1, t1 - 1);  // only the instruction block was new
  EXPECT_EQ(h2, t2);      // second pass: all hits

  CommandRun second = RunCommand(cmd);
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("encoded 0,"), std::string::npos) << second.output;
  auto [h3, t3] = PassHits(second.output, 1);
  EXPECT_EQ(h3, t3);
  EXPECT_EQ(t3, t1);
}

TEST(DemoCommandTest, BadQuestionsFileFails) {
  testing::TempDir dir;
  {
    std::ofstream q(dir / "q.jsonl");
    q << R"({"id": "x", "question": "?", "passages": ["no-such-passage"]})" << "\n";
  }
  CommandRun r = RunCommand(std::string(KVBLOCK_BIN) + " demo --data-dir " + (dir / "data") +
                     " --questions " + (dir / "q.jsonl"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no-such-passage"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kvblock
