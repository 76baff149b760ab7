// Runs the real `kvblock` binary: --help lists the subcommands, bad invocations fail cleanly.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "gtest/gtest.h"

namespace {

struct Result {
  int exit_code;
  std::string output;
};

Result RunKvblock(const std::string& args) {
  std::string cmd = std::string(KVBLOCK_BIN) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  Result r{-1, ""};
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(CliTest, HelpListsSubcommands) {
  Result r = RunKvblock("--help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* sub : {"demo", "inspect"}) {
    EXPECT_NE(r.output.find(sub), std::string::npos) << sub << " missing from:\n" << r.output;
  }
}

TEST(CliTest, ConfigFileSectionSetsSubcommandFlags) {
  // Without --cache cache-ctl is a usage error (1); with the cache read from the file's
  // [cache-ctl] section it tries the (closed) port and reports it unreachable (3).
  const std::string path = std::string(KVBLOCK_BINARY_DIR) + "/cli_test_config.toml";
  FILE* f = fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("[cache-ctl]\ncache = \"127.0.0.1:1\"\ntimeout-s = 0.2\n", f);
  fclose(f);
  EXPECT_EQ(RunKvblock("cache-ctl stats").exit_code, 1);
  Result r = RunKvblock("--config " + path + " cache-ctl stats");
  EXPECT_EQ(r.exit_code, 3) << r.output;
}

TEST(CliTest, UnknownSubcommandFails) {
  Result r = RunKvblock("no-such-command");
  EXPECT_NE(r.exit_code, 0);
}

TEST(CliTest, InspectRejectsGarbage) {
  std::string path = std::string(KVBLOCK_BINARY_DIR) + "/cli_test_garbage.bin";
  FILE* f = fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  fputs("definitely not a block", f);
  fclose(f);
  Result r = RunKvblock("inspect " + path);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("shorter than its header"), std::string::npos) << r.output;
}

}  // namespace
