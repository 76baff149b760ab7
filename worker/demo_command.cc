#include "worker/demo_command.h"

#include <iostream>
#include <memory>

#include "CLI/CLI.hpp"
#include "worker/demo/demo.h"

namespace kvblock {

void AddDemoCommand(CLI::App& app) {
  auto options = std::make_shared<DemoOptions>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Index a sample corpus and answer questions in block and full mode");
  cmd->add_option("--data-dir", options->data_dir,
                  "Model, corpus copy, manifest and cache (created if missing)")
      ->capture_default_str();
  cmd->add_option("--corpus", options->corpus_path,
                  "JSONL corpus replacing the bundled one ({\"id\",\"title\",\"text\"})");
  cmd->add_option("--questions", options->questions_path,
                  "JSONL questions replacing the bundled ones ({\"id\",\"question\",\"passages\"})");
  cmd->add_option("--max-new-tokens", options->max_new_tokens, "Tokens per answer")
      ->capture_default_str();
  cmd->add_option("--passes", options->passes, "Times the questions are asked")
      ->capture_default_str();
  cmd->callback([options] {
    absl::StatusOr<DemoSummary> s = RunDemo(*options, std::cout);
    if (!s.ok()) {
      std::cerr << "kvblock demo: " << s.status() << "\n";
      throw CLI::RuntimeError(1);
    }
  });
}

}  // namespace kvblock
