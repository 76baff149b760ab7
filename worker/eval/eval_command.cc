#include "worker/eval/eval_command.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/eval/eval.h"

namespace kvblock {
namespace {

struct EvalArgs {
  EvalOptions options;
  std::string mode = "block";
  std::string json_report;
};

absl::Status WriteReport(const std::string& path, const EvalReport& report) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << report.ToJson().dump(2) << "\n";
    if (!out.good()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status Run(EvalArgs& args) {
  if (args.mode == "block") {
    args.options.mode = AttentionMode::kBlock;
  } else if (args.mode == "full") {
    args.options.mode = AttentionMode::kFull;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--mode must be block or full, got ", args.mode));
  }
  absl::StatusOr<EvalReport> report = RunEval(args.options, &std::cerr);
  if (!report.ok()) return report.status();
  std::cout << absl::StrFormat(
      "kvblock eval: %s, %s mode: exact match %d/%d = %.2f%% (%.1f s)\n", report->model_dir,
      std::string(AttentionModeName(report->mode)), report->correct, report->examples,
      100.0 * report->accuracy(), report->seconds);
  if (!args.json_report.empty()) return WriteReport(args.json_report, *report);
  return absl::OkStatus();
}

}  // namespace

void AddEvalCommand(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Exact-match accuracy of a model on a retrieval-QA JSONL dataset (block or full mode)");
  cmd->add_option("--model", args->options.model_dir, "Hugging Face model directory")->required();
  cmd->add_option("--dataset", args->options.dataset_path,
                  "JSONL examples {\"id\",\"passages\":[texts],\"question\",\"answer\"}")
      ->required();
  cmd->add_option("--mode", args->mode, "block or full")->capture_default_str();
  cmd->add_option("--limit", args->options.limit, "Evaluate the first N examples (0: all)")
      ->capture_default_str();
  cmd->add_option("--json", args->json_report, "Write the JSON report here");
  cmd->add_option("--cache-dir", args->options.cache_dir,
                  "Embedded cache directory (default: a temporary one, removed afterwards)");
  cmd->add_option("--max-new-tokens", args->options.max_new_tokens, "Tokens per answer at most")
      ->capture_default_str();
  cmd->callback([args] {
    absl::Status s = Run(*args);
    if (!s.ok()) {
      std::cerr << "kvblock eval: " << s << "\n";
      throw CLI::RuntimeError(1);
    }
  });
}

}  // namespace kvblock
