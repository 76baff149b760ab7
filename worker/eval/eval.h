// `kvblock eval`'s core: runs every example of a retrieval-QA dataset through the real Engine over
// an embedded block store (OpenRuntime, as `kvblock demo` does), greedy, in block or full mode,
// and scores the answers by exact match after NormalizeAnswer (worker/eval/qa_prompt.h).
// Dataset: JSONL, one example a line: {"id", "passages": [texts], "question", "answer"}
// (training/make_data.py writes it; other keys are ignored).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/engine.h"

namespace kvblock {

struct QaExample {
  std::string id;
  std::vector<std::string> passages;
  std::string question;
  std::string answer;
};

// INVALID_ARGUMENT naming the line for a malformed example or an empty dataset.
absl::StatusOr<std::vector<QaExample>> ParseQaDataset(std::string_view jsonl);

struct EvalOptions {
  // Hugging Face model directory. Required. Default: empty.
  std::string model_dir;
  // The JSONL dataset. Required. Default: empty.
  std::string dataset_path;
  // Attention mode of every request. Default: block.
  AttentionMode mode = AttentionMode::kBlock;
  // Examples evaluated (the first ones); 0 = all. Default: 0.
  int64_t limit = 0;
  // Embedded store directory; empty = a fresh temporary directory, removed afterwards (so block
  // mode starts cold and the score never depends on an earlier run). Default: empty.
  std::string cache_dir;
  // Memory of the embedded store (bytes). Default: 256 MiB.
  uint64_t memory_bytes = uint64_t{256} << 20;
  // Tokens generated at most per answer (generation also stops at EOS). Default: 32.
  int32_t max_new_tokens = 32;
  // Longest block, in tokens (longer passages are cut as the indexer cuts them). Default: 512.
  int64_t max_block_tokens = 512;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

struct EvalExampleResult {
  std::string id;
  std::string expected;
  std::string answer;  // normalized generated answer
  bool correct = false;
  std::string stop_reason;
  double ttft_ms = 0;
  int64_t cache_hits = 0;
  int64_t cache_misses = 0;
};

struct EvalReport {
  std::string model_dir;
  std::string model_fingerprint;
  std::string dataset;
  AttentionMode mode = AttentionMode::kBlock;
  int64_t examples = 0;
  int64_t correct = 0;
  double seconds = 0;
  std::vector<EvalExampleResult> results;

  double accuracy() const { return examples > 0 ? static_cast<double>(correct) / examples : 0; }
  // The JSON report: the summary fields, then "results" (one object per example).
  nlohmann::json ToJson() const;
};

// Evaluates; one progress line per 50 examples goes to `progress` when it is not null. Errors:
// INVALID_ARGUMENT for bad options or dataset, NOT_FOUND for a missing file, the model's, store's
// and engine's errors otherwise. Not thread-safe for one cache_dir (RocksDB locks it).
absl::StatusOr<EvalReport> RunEval(const EvalOptions& options, std::ostream* progress);

}  // namespace kvblock
