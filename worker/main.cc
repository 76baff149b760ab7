// The `kvblock` binary. main only dispatches: every subcommand is defined in its own module
// (cache/, services/, worker/) and registered here.
#include <iostream>

#include "CLI/CLI.hpp"
#include "cache/inspect_command.h"
#include "services/cache_ctl_command.h"
#include "services/cache_server_command.h"
#include "worker/bench_command.h"
#include "worker/demo_command.h"
#include "worker/eval/eval_command.h"
#include "worker/generate_command.h"
#include "worker/indexer/index_command.h"
#include "worker/tokenize_command.h"
#include "worker/worker_command.h"

int main(int argc, char** argv) {
  CLI::App app{"kvblock: Block-Attention serving with a cluster-wide KV cache of passages"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kvblock 0.1.0");
  // One config mechanism for every subcommand: `kvblock --config FILE SUBCOMMAND ...`, where a
  // [SUBCOMMAND] section of the TOML/INI file sets that subcommand's flags (command-line flags
  // win).
  app.set_config("--config", "", "TOML/INI file; a [subcommand] section sets its flags");
  kvblock::AddDemoCommand(app);
  kvblock::AddBenchCommand(app);
  kvblock::AddGenerateCommand(app);
  kvblock::AddEvalCommand(app);
  kvblock::AddIndexCommand(app);
  kvblock::AddTokenizeCommand(app);
  kvblock::AddInspectCommand(app);
  kvblock::AddCacheServerCommand(app);
  kvblock::AddCacheCtlCommand(app);
  kvblock::AddWorkerCommand(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
