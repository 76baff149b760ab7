// `kvblock bench ttft`: the GPU time-to-first-token benchmark of issue 7 (Llama-3-8B shape, random
// bf16 weights made on the GPU): block mode with cached blocks in the GPU tier, block mode with
// the blocks fetched from a cache server in this process (loopback data plane) and copied to HBM
// layer by layer under the prefill, full mode, the block/full ratio, decode tokens/s at batch 1
// and 16, block-encoding tokens/s, and the baselines measured in the same run (pinned H2D and HBM
// copy bandwidth, cuBLAS bf16 GEMM rate).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace CLI {
class App;
}

namespace kvblock {

struct BenchTtftOptions {
  // Total prompt lengths, tokens. Default: 4096, 8192, 16384, 32768.
  std::vector<int> lengths = {4096, 8192, 16384, 32768};
  // Final-block length, tokens. Default: 50 (the paper's setting).
  int final_block = 50;
  // Passage (cached block) length, tokens; the last passage is shorter so totals are exact.
  // Default: 512.
  int passage = 512;
  // Timed runs per measurement (the median is reported). Default: 10.
  int runs = 10;
  // Untimed runs before each measurement. Default: 2.
  int warmup = 2;
  // Decode context per sequence, tokens. Default: 4096.
  int decode_context = 4096;
  // Decode batch sizes. Default: 1, 16.
  std::vector<int> decode_batches = {1, 16};
  // Passages per encoding batch. Default: 16.
  int encode_batch = 16;
  // Skip full-mode prefill (the slowest part). Default: false.
  bool skip_full = false;
  // Skip block mode with blocks fetched from a cache server. Default: false.
  bool skip_fetch = false;
  // Threads fetching (and verifying) blocks in parallel in fetched block mode, each with a data
  // plane lane of its own (1..64). Default: 8.
  int fetch_threads = 8;
  // Also write the results as JSON here. Default: empty (none).
  std::string json_path;
  // Seed of weights and token ids. Default: 1.
  uint64_t seed = 1;

  // INVALID_ARGUMENT for non-positive sizes or thread counts, a length not larger than the final
  // block, or runs below 1.
  absl::Status Validate() const;
};

// Runs the benchmark on GPU 0, printing a table to stdout. FAILED_PRECONDITION when built
// without CUDA or no GPU is present; INTERNAL for CUDA failures.
absl::Status RunBenchTtft(const BenchTtftOptions& options);

void AddBenchCommand(CLI::App& app);

}  // namespace kvblock
