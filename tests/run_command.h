// Test helpers for running commands: a shell command's exit code and output, and the project's
// Python (the venv scripts/python-env.sh keeps) for the tests that drive kvblock from Python.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace kvblock::testing {

struct CommandRun {
  int exit_code = -1;  // -1 when the command could not run or did not exit normally
  std::string output;  // stdout and stderr, merged
};

// Runs `cmd` with /bin/sh, stderr merged into the output.
inline CommandRun RunCommand(const std::string& cmd) {
  CommandRun r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Sets *python to the venv interpreter made by scripts/python-env.sh under `source_dir` (or
// $KVBLOCK_VENV). Exits the test program with 77 (ctest SKIP) when PyPI is unreachable; a
// failed install is a test failure (call through ASSERT_NO_FATAL_FAILURE).
inline void ProjectPython(const std::string& source_dir, std::string* python) {
  const CommandRun env = RunCommand("bash " + source_dir + "/scripts/python-env.sh");
  if (env.exit_code == 77) {
    std::fprintf(stderr, "SKIP: PyPI unreachable, cannot install grpcio: %s\n", env.output.c_str());
    std::exit(77);
  }
  ASSERT_EQ(env.exit_code, 0) << env.output;
  const char* venv = std::getenv("KVBLOCK_VENV");
  *python = (venv != nullptr ? std::string(venv) : source_dir + "/.venv") + "/bin/python";
}

}  // namespace kvblock::testing
