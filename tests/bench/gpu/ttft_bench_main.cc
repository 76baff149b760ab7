// Standalone driver of `kvblock bench ttft` (worker/bench_command.h) for the GPU machine: the same
// benchmark with the same flags, linked without the services and the rest of the worker so it
// builds in a minute. `kvblock bench ttft ...` == `ttft_bench ...`.
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "worker/bench_command.h"

int main(int argc, char** argv) {
  CLI::App app{"kvblock bench (standalone)"};
  app.require_subcommand(1);
  kvblock::AddBenchCommand(app);
  // Accept both `ttft_bench bench ttft ...` and `ttft_bench ttft ...`.
  std::vector<char*> args(argv, argv + argc);
  char bench[] = "bench";
  if (argc < 2 || std::string(argv[1]) != "bench") args.insert(args.begin() + 1, bench);
  CLI11_PARSE(app, static_cast<int>(args.size()), args.data());
  return 0;
}
