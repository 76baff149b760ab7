// The CUDA kernel API of kvblock: each function validates its arguments, enqueues work on
// `stream` and returns a status; none allocates (callers pass workspaces sized by the Plan/Bytes
// helpers). Layouts are described by the plain structs of kernels/cuda/layouts.h. Every kernel
// has a CPU twin computing the same function: kernels/cpu/ (attention, RMSNorm, RoPE,
// re-encoding, SwiGLU) and kernels/cuda/sampling_twin.h (sampling).
//
// Status codes: INVALID_ARGUMENT for shapes/dtypes a kernel does not support (checked on the
// host before any launch), INTERNAL for CUDA launch errors, carrying cudaGetErrorString.
// Asynchronous faults surface at the caller's next synchronization (see CudaStatus).
// Thread safety: every function may be called from any thread; work on one stream is ordered.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/layouts.h"

namespace kvblock::cuda {

// Converts a CUDA runtime / cuBLAS result; `what` names the call for the message.
absl::Status CudaStatus(cudaError_t err, std::string_view what);
absl::Status CublasStatus(cublasStatus_t st, std::string_view what);

// out[t] = table[ids[t]] (rows of `hidden`). Ids outside [0, vocab) produce NaN rows.
absl::Status Embedding(DType dtype, const int32_t* ids, int32_t num_tokens, const void* table,
                       int32_t vocab, int32_t hidden, void* out, cudaStream_t stream);

// residual += delta (if delta != nullptr, rounded to dtype and stored), then
// out = residual * rsqrt(mean(residual^2) + eps) * weight, per row.
absl::Status AddRmsNorm(DType dtype, void* residual, const void* delta, const void* weight,
                        int32_t rows, int32_t hidden, float eps, void* out, cudaStream_t stream);

// RoPE (rotate-half pairs (i, i + head_dim/2)) at positions[t] on Q in place and on K, and the
// store of K and V into the KV cache (see RopeStoreParams).
absl::Status RopeStore(const RopeStoreParams& p, cudaStream_t stream);

// Block re-encoding as a separate pass: dst = K rotated by `offset` positions. src and dst are
// [num_kv_heads][num_tokens][head_dim] with `head_stride`; they may be the same buffer. The
// attention kernels do this on the fly (AttnSegment::rope_offset); this is for copies.
absl::Status ReencodeK(DType dtype, const void* src, void* dst, int32_t num_kv_heads,
                       int32_t num_tokens, int32_t head_dim, int64_t head_stride, int32_t offset,
                       const float* inv_freq, cudaStream_t stream);

// out[r][i] = silu(gate_up[r][i]) * gate_up[r][inter + i].
absl::Status SwiGlu(DType dtype, const void* gate_up, int64_t gate_up_stride, int32_t rows,
                    int32_t inter, void* out, cudaStream_t stream);

// out[r][i] = row[i] for r < rows, i < n (rows `ld` elements apart): a bias before a GEMM with
// beta = 1.
absl::Status BroadcastRows(DType dtype, const void* row, int32_t rows, int32_t n, void* out,
                           int64_t ld, cudaStream_t stream);

// Element-wise conversion between storage types.
absl::Status Cast(DType from, DType to, const void* src, void* dst, int64_t n, cudaStream_t stream);

// Dequantizes one fp8-e4m3 layer of a block payload (cache/block_payload.h: K scales f32
// [kv_heads], V scales, then K and V as [kv_heads][num_tokens][head_dim] bytes) into K then V of
// `dtype` (the same layout without the scales): value = fp8 * its (K|V, head) scale. `src` must
// be 4-byte aligned. The CPU twin is BlockView::ReadLayerF32.
absl::Status DequantizeFp8Layer(const void* src, int32_t kv_heads, int32_t num_tokens,
                                int32_t head_dim, DType dtype, void* dst, cudaStream_t stream);

// Uniform values in [-scale, scale) from (seed, index): weights for benchmarks, made on the GPU.
absl::Status FillRandom(DType dtype, void* dst, int64_t n, uint64_t seed, float scale,
                        cudaStream_t stream);

// How an attention launch is split over the key axis and the workspace it needs.
struct AttentionPlan {
  int32_t splits = 1;
  size_t workspace_bytes = 0;
};
// INVALID_ARGUMENT unless heads divide into kv heads, head_dim is even and <= 256, and bounds
// are positive. `num_sms` is the device's multiprocessor count.
absl::StatusOr<AttentionPlan> PlanAttention(const AttentionParams& p, int num_sms);
// Runs attention as planned; `workspace` has plan.workspace_bytes (may be null when 0).
// bf16 with head_dim 64/128 uses tensor cores unless `force_generic`. Device tables must satisfy
// AttnSequence/AttnSegment's contracts; for the tensor-core path, K/V/Q/O element pointers must
// be 16-byte aligned and head strides multiples of 8.
absl::Status Attention(const AttentionParams& p, const AttentionPlan& plan, void* workspace,
                       cudaStream_t stream, bool force_generic = false);

// One token per row of f32 logits ([rows][row_stride]); params is a device array of `rows`.
absl::Status Sample(const float* logits, int32_t rows, int32_t vocab, int64_t row_stride,
                    const SamplingParams* params, int32_t* out_tokens, cudaStream_t stream);

// cuBLAS handle bound to one stream, for the projections. Not thread-safe: one per stream.
class Blas {
 public:
  // INTERNAL if cuBLAS cannot be initialised (no device, driver mismatch).
  static absl::StatusOr<std::unique_ptr<Blas>> Create(cudaStream_t stream);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // y[m][n] = x[m][k] * w[n][k]^T (+ beta * y): the row-major "linear" of HF weight layouts.
  // x and w have `in`; y has `out` (f32 output from bf16 inputs is allowed, for logits).
  // ldx/ldy: elements between rows of x / y (0 = k / n). f32 inputs use exact f32 math.
  absl::Status Linear(DType in, const void* x, int64_t ldx, const void* w, int32_t m, int32_t n,
                      int32_t k, DType out, void* y, int64_t ldy, float beta = 0.f);

 private:
  explicit Blas(cublasHandle_t h) : handle_(h) {}
  cublasHandle_t handle_;
};

}  // namespace kvblock::cuda
