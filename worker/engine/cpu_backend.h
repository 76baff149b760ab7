// The CPU backend: f32 math, projections through OpenBLAS sgemm/sgemv (which use every core),
// everything else through the kernels/cpu reference twins; attention is split across KV heads
// on a few threads for long sequences. DecodeStep runs a batch of sequences as one sgemm per
// projection (M = batch; one sgemv per sequence below CpuBackendOptions::gemm_min_rows) and
// attention per sequence (split across sequences on a few threads when the batch's attention
// work is large); ForwardBatch runs the tokens of several sequences in one pass the same way
// (projections per sequence unless CpuBackendOptions::batch_invariant is off). This is the
// reference every faster backend is checked against, and what CI runs.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "worker/engine/backend.h"
#include "worker/model/weights.h"

namespace kvblock {

struct CpuBackendOptions {
  // Threads for attention (KV heads are split between them); 0 = one per hardware thread.
  // Default: 0.
  int attention_threads = 0;
  // Below this many multiply-adds per attention call a single thread is used. Default: 1 << 21.
  int64_t attention_parallel_min_work = int64_t{1} << 21;
  // Projections over at least this many token rows (a prefill, a large decode batch) are one
  // sgemm; fewer rows run one sgemv per row, which OpenBLAS 0.3.21 does faster than an sgemm
  // that packs the whole weight matrix (docs/benchmarks.md, CPU engine). Default: 6.
  int64_t gemm_min_rows = 6;
  // ForwardBatch gives every sequence exactly (bit for bit) what Forward gives it alone: each
  // sequence's projections are their own sgemm, because OpenBLAS 0.3.21 rounds a row
  // differently depending on how many rows the call has. So a block's payload does not depend
  // on the blocks encoded with it (an indexer and a worker write the same bytes). false: one
  // sgemm over all rows of the batch, which reads the weights once per pass: 2.3x the encoding
  // rate of 64-token blocks, none at 512 (docs/benchmarks.md, batched block encoding), with
  // payloads equal to the one-by-one ones only up to f32 rounding. Default: true.
  bool batch_invariant = true;

  // INVALID_ARGUMENT for negative values.
  absl::Status Validate() const;
};

// Creates the backend over loaded weights (shared: several backends may use one copy).
// INVALID_ARGUMENT for bad options or a config that fails Validate().
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(
    std::shared_ptr<const ModelWeights> weights, const ModelConfig& config,
    const CpuBackendOptions& options = {});

}  // namespace kvblock
