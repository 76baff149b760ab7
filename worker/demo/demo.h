// `kvblock demo`, the README's main command: on an embedded store (memory over RocksDB in a data
// directory) it writes the bundled trained model (models/kvblock-demo-qa, block fine-tuned on
// synthetic town QA), indexes the bundled corpus through the real indexer, then answers the bundled
// questions in block mode and in full mode, printing TTFT, cache hits and the answers side by side
// with the expected ones, twice: the second pass finds every block in the cache.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"

namespace kvblock {

// The bundled data (worker/demo/data/*.jsonl, compiled into the binary).
std::string_view DemoCorpusJsonl();
std::string_view DemoQuestionsJsonl();

struct DemoOptions {
  // Where the model, the corpus copy, the manifest and the cache live (created if missing).
  // Default: "kvblock-demo-data".
  std::string data_dir = "kvblock-demo-data";
  // A JSONL corpus replacing the bundled one. Default: empty (bundled).
  std::string corpus_path;
  // A JSONL question file replacing the bundled one ({"id","question","passages":[ids]} and an
  // optional "answer", the expected one). Default: empty (bundled).
  std::string questions_path;
  // Tokens generated per answer at most (generation stops at EOS). Default: 32.
  int32_t max_new_tokens = 32;
  // Times the questions are asked (the second pass shows the cache at work). Default: 2.
  int32_t passes = 2;
  // Longest block, in tokens. Default: 512.
  int64_t max_block_tokens = 512;
  // Memory of the embedded store (bytes). Default: 256 MiB.
  uint64_t memory_bytes = uint64_t{256} << 20;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

// Per pass: what the demo measured (returned so tests can check more than the text).
struct DemoPassSummary {
  int64_t questions = 0;
  int64_t block_hits = 0;    // blocks found in the cache, block mode
  int64_t block_misses = 0;  // blocks encoded, block mode
  int64_t with_answer = 0;   // questions that name an expected answer
  int64_t correct_block = 0; // of those, answered exactly (NormalizeAnswer) in block mode
  int64_t correct_full = 0;  // ... in full mode
  double mean_ttft_block_ms = 0;
  double mean_ttft_full_ms = 0;
};
struct DemoSummary {
  int64_t indexed_blocks = 0;
  int64_t indexed_passages = 0;
  std::vector<DemoPassSummary> passes;
};

// Runs the demo, writing the human-readable report to `out`. Errors: INVALID_ARGUMENT for bad
// options or data files; the model's, store's and engine's errors otherwise. Not thread-safe
// for one data_dir (RocksDB locks it: a second demo on the same directory fails).
absl::StatusOr<DemoSummary> RunDemo(const DemoOptions& options, std::ostream& out);

}  // namespace kvblock
