#include "worker/tokenize_command.h"

#include <chrono>
#include <iostream>
#include <memory>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/file_util.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {

namespace {

double MillisSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text, const std::string& path) {
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON array of token ids"));
  }
  std::vector<int32_t> ids;
  ids.reserve(json.size());
  for (size_t i = 0; i < json.size(); ++i) {
    const nlohmann::json& v = json[i];
    if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": element ", i, " (", v.dump(), ") is not an integer token id"));
    }
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

}  // namespace

absl::Status TokenizeCommandOptions::Validate() const {
  if (tokenizer_path.empty()) return absl::InvalidArgumentError("--tokenizer is required");
  if (text_file.empty()) return absl::InvalidArgumentError("--text-file is required");
  return absl::OkStatus();
}

absl::Status RunTokenize(const TokenizeCommandOptions& options, std::ostream& out, std::ostream& timing) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  auto input = tokenizer::ReadFileBytes(options.text_file);
  if (!input.ok()) return input.status();
  auto start = std::chrono::steady_clock::now();
  auto tok = LoadTokenizer(options.tokenizer_path);
  if (!tok.ok()) return tok.status();
  const double load_ms = MillisSince(start);

  std::string result;
  start = std::chrono::steady_clock::now();
  if (options.decode) {
    auto ids = ParseIds(*input, options.text_file);
    if (!ids.ok()) return ids.status();
    if (options.skip_special_tokens) {
      std::erase_if(*ids, [&](int32_t id) { return (*tok)->IsSpecialToken(id); });
    }
    auto text = (*tok)->Decode(*ids);
    if (!text.ok()) return text.status();
    result = *std::move(text);
  } else {
    auto ids = (*tok)->Encode(*input);
    if (!ids.ok()) {
      return absl::Status(ids.status().code(), absl::StrCat(options.text_file, ": ", ids.status().message()));
    }
    result.reserve(ids->size() * 7 + 2);
    result.push_back('[');
    for (size_t i = 0; i < ids->size(); ++i) {
      if (i > 0) result.push_back(',');
      absl::StrAppend(&result, (*ids)[i]);
    }
    result.append("]\n");
  }
  const double run_ms = MillisSince(start);
  out << result;
  out.flush();
  if (!out) return absl::DataLossError("writing the output failed");
  if (options.report_timing) {
    const double mb = static_cast<double>(input->size()) / 1e6;
    timing << absl::StrFormat(
        "kvblock tokenize: load %.1f ms, %s %.3f MB in %.1f ms (%.2f MB/s)\n", load_ms,
        options.decode ? "decode" : "encode", mb, run_ms, run_ms > 0 ? mb / (run_ms / 1e3) : 0.0);
  }
  return absl::OkStatus();
}

void AddTokenizeCommand(CLI::App& app) {
  auto options = std::make_shared<TokenizeCommandOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of a text file as JSON (or --decode ids to text)");
  cmd->add_option("--tokenizer", options->tokenizer_path, "tokenizer.json, or a model directory")->required();
  cmd->add_option("--text-file", options->text_file, "input: text, or a JSON array of ids with --decode")->required();
  cmd->add_flag("--decode", options->decode, "decode a JSON array of ids to text");
  cmd->add_flag("--skip-special-tokens", options->skip_special_tokens, "with --decode: leave special tokens out");
  cmd->add_flag("--report-timing", options->report_timing, "print load and encode times (MB/s) to stderr");
  cmd->callback([options] {
    const absl::Status status = RunTokenize(*options, std::cout, std::cerr);
    if (!status.ok()) {
      std::cerr << "kvblock tokenize: " << status.message() << "\n";
      throw CLI::RuntimeError(1);
    }
  });
}

}  // namespace kvblock
