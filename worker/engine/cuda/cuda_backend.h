// CudaBackend: the Backend interface (worker/engine/backend.h) on one GPU, over CudaModel.
//
// A sequence's KV is [context runs ++ own slots]. Blocks appended before the sequence's first
// Forward are not copied into it: they are placed once in the backend's GpuTier (HBM, LRU under
// a byte budget, shared by all requests) and referenced as context runs, which the attention
// kernel re-encodes to the block's offset as it loads K. A block already in the tier (same
// BlockKey) costs no transfer at all. A block appended after the sequence has own tokens (or one
// larger than the tier) is copied into the own slots with its K re-encoded (CudaModel::ImportKv).
// Payloads in the model's dtype, or in fp8 (dequantized on the GPU), reach the tier through a
// LayerPipeline beside the model's stream, in one of two ways:
//   - MakeResident copies a block now (the engine calls it for blocks that arrive while others
//     are still being fetched or encoded);
//   - AppendBlock defers the copy to the sequence's next pass: the pending blocks are copied
//     layer-major, each layer of the pass waiting only for its own, and enter the tier after it.
// The tier's block memory comes from a stream-ordered pool that keeps what evicted blocks give
// back: no cudaMalloc per block, no device-wide synchronization per eviction.
// Own slots come from CudaModel's pool, allocated at the sequence's first Forward for the
// capacity that the context runs leave.
//
// Host regions (Backend::AddHostRegion) are registered with CUDA chunk by chunk as copies read
// them (cuda::HostRegions), so blocks read from a co-located cache node's mapped arena go to HBM
// at the pinned rate.
// Payloads of the model's dtype go to HBM with one copy; other dtypes (f32 <-> bf16) are
// converted on the GPU; f16 and fp8-e4m3 are dequantized on the host first.
//
// Forward calls longer than max_batch_tokens, or asking for more than max_logit_rows logits, are
// run as consecutive chunks (equivalent: the attention is causal). DecodeStep runs the whole
// batch in one CudaModel::Forward (weights read once per step for all sequences), and
// ForwardBatch the tokens of several sequences (batched block encoding) the same way; both split
// a batch into passes within max_batch_tokens, max_decode_batch and max_context_runs, and
// ForwardBatch runs a sequence longer than max_batch_tokens alone, chunked. Dynamic RoPE uses
// the default table, which is exact for sequences within max_position_embeddings (the Engine's
// limit).
//
// Thread safety: as backend.h requires. CudaModel has none, so every call takes one mutex (the
// GPU runs one stream anyway); sequences keep the backend's state alive and may outlive it.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "cache/block_store.h"
#include "cache/dtype.h"
#include "worker/engine/backend.h"
#include "worker/engine/cuda/cuda_model.h"
#include "worker/model/weights.h"

namespace kvblock {

struct CudaBackendOptions {
  // Storage type of weights, activations and KV: kF32 or kBF16 (accumulation is f32).
  // Default: bf16.
  KvDtype dtype = KvDtype::kBF16;
  // KV slots for the sequences' own tokens (cached blocks live in the GPU tier), tokens.
  // Default: 65536.
  int64_t kv_pool_tokens = 65536;
  // Most tokens of one model pass; longer Forward calls are chunked. Default: 8192.
  int64_t max_batch_tokens = 8192;
  // Most logits rows of one model pass; Forward calls asking for more are chunked. Default: 64.
  int32_t max_logit_rows = 64;
  // Most blocks referenced in place by one sequence; later ones are copied. Default: 4096.
  int32_t max_context_runs = 4096;
  // Most sequences of one batched pass (DecodeStep, ForwardBatch); larger batches run in
  // groups. Default: 64.
  int32_t max_decode_batch = 64;
  // HBM budget of the GPU block tier, bytes. Default: 4 GiB.
  int64_t gpu_tier_bytes = int64_t{4} << 30;

  // INVALID_ARGUMENT for a dtype other than f32/bf16, non-positive sizes or a decode batch
  // larger than max_batch_tokens.
  absl::Status Validate() const;
};

class CudaBackend : public Backend {
 public:
  // The GPU tier's counters (hits: blocks appended without a transfer).
  virtual TierStats GpuTierStats() const = 0;

};

// Uploads the weights (the host copy may be freed afterwards). FAILED_PRECONDITION without a
// CUDA device; INVALID_ARGUMENT for bad options or config; RESOURCE_EXHAUSTED when HBM is short.
absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const ModelWeights& weights,
                                                               const ModelConfig& config,
                                                               const CudaBackendOptions& options = {});
// A backend over a model already on the GPU (e.g. `kvblock bench ttft`'s random weights). The
// options' dtype and limits must fit the model's (CudaModelOptions) and `config` must describe
// its shape: INVALID_ARGUMENT otherwise.
absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(std::unique_ptr<cuda::CudaModel> model,
                                                               const ModelConfig& config,
                                                               const CudaBackendOptions& options);

namespace cuda {
// The GPU model's numbers for a parsed config (RoPE table for sequences up to `rope_seq_len`,
// which matters for dynamic RoPE only).
absl::StatusOr<CudaModelSpec> SpecFromConfig(const ModelConfig& config, int64_t rope_seq_len);
// Pointers into loaded host weights, in CudaModel::FromHost's form.
HostModel HostModelFromWeights(const ModelWeights& weights);
}  // namespace cuda

}  // namespace kvblock
