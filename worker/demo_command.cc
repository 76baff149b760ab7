#include "worker/demo_command.h"

#include <iostream>

#include "CLI/CLI.hpp"

namespace kvblock {

void AddDemoCommand(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("demo", "Index a sample corpus and answer questions in block and full mode");
  cmd->callback([] {
    std::cout << "kvblock demo will: build an embedded cache (memory over RocksDB), index a bundled\n"
                 "corpus with a small model, then answer sample questions in block mode and full\n"
                 "mode, printing TTFT, cache hits and answers side by side. The engine and worker\n"
                 "are not built yet, so this run stops here.\n";
  });
}

}  // namespace kvblock
