// `kvblock tokenize --tokenizer PATH --text-file F [--decode]`: prints the token ids of the text in
// F as a JSON array, or with --decode reads a JSON array of ids from F and prints their text.
#pragma once

#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace CLI {
class App;
}

namespace kvblock {

struct TokenizeCommandOptions {
  // tokenizer.json, or a model directory (LoadTokenizer). Required. Default: "".
  std::string tokenizer_path;
  // The input: UTF-8 text, or with `decode` a JSON array of ids. Required. Default: "".
  std::string text_file;
  // Decode ids to text instead of encoding text. Default: false.
  bool decode = false;
  // With `decode`: leave special tokens (BOS/EOS, <|...|>) out of the text. Default: false.
  bool skip_special_tokens = false;
  // Print load and encode/decode times and throughput (MB/s) to the timing stream. Default: false.
  bool report_timing = false;

  // INVALID_ARGUMENT when a required path is empty.
  absl::Status Validate() const;
};

// Runs the command: the result goes to `out` only when everything succeeded (nothing is written on
// error); timings, when asked for, to `timing`. NOT_FOUND for unreadable files, INVALID_ARGUMENT
// for malformed input (not UTF-8, not a JSON array of ids, an id outside the vocabulary).
absl::Status RunTokenize(const TokenizeCommandOptions& options, std::ostream& out, std::ostream& timing);

// Registers the subcommand; on error it prints one line to stderr and exits with code 1.
void AddTokenizeCommand(CLI::App& app);

}  // namespace kvblock
