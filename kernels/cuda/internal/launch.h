// Raw kernel launchers implemented in the .cu files. Internal: callers use kernels/cuda/kernels.h,
// which validates arguments and converts cudaError_t to absl::Status. Every launcher enqueues on
// `stream`, allocates nothing, and returns the launch status (cudaGetLastError after the launch).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/layouts.h"

namespace kvblock::cuda::internal {

cudaError_t LaunchEmbedding(DType dtype, const int32_t* ids, int32_t num_tokens, const void* table,
                            int32_t vocab, int32_t hidden, void* out, cudaStream_t stream);
cudaError_t LaunchAddRmsNorm(DType dtype, void* residual, const void* delta, const void* weight,
                             int32_t rows, int32_t hidden, float eps, void* out,
                             cudaStream_t stream);
cudaError_t LaunchRopeStore(const RopeStoreParams& p, cudaStream_t stream);
cudaError_t LaunchReencodeK(DType dtype, const void* src, void* dst, int32_t num_kv_heads,
                            int32_t num_tokens, int32_t head_dim, int64_t head_stride,
                            int32_t offset, const float* inv_freq, cudaStream_t stream);
cudaError_t LaunchSwiGlu(DType dtype, const void* gate_up, int64_t gate_up_stride, int32_t rows,
                         int32_t inter, void* out, cudaStream_t stream);
cudaError_t LaunchBroadcastRows(DType dtype, const void* row, int32_t rows, int32_t n, void* out,
                                int64_t ld, cudaStream_t stream);
cudaError_t LaunchCast(DType from, DType to, const void* src, void* dst, int64_t n,
                       cudaStream_t stream);
cudaError_t LaunchDequantizeFp8Layer(const void* src, int32_t kv_heads, int32_t num_tokens,
                                     int32_t head_dim, DType dtype, void* dst, cudaStream_t stream);
cudaError_t LaunchFillRandom(DType dtype, void* dst, int64_t n, uint64_t seed, float scale,
                             cudaStream_t stream);

int32_t AttentionSplits(const AttentionParams& p, int num_sms);
size_t AttentionWorkspaceBytes(const AttentionParams& p, int32_t splits);
// Uses the tensor-core kernel for bf16 with head_dim 64/128, the generic kernel otherwise.
cudaError_t LaunchAttention(const AttentionParams& p, int32_t splits, void* workspace,
                            bool force_generic, cudaStream_t stream);

cudaError_t LaunchSample(const float* logits, int32_t rows, int32_t vocab, int64_t row_stride,
                         const SamplingParams* params, int32_t* out_tokens, cudaStream_t stream);

}  // namespace kvblock::cuda::internal
