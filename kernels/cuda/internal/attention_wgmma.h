// Hopper (sm_90a) warpgroup-MMA attention for causal full-prompt prefill: bf16, head_dim 128,
// every sequence over one segment of its own keys with rope_offset 0 (AttentionParams::
// single_segment), no key splits. LaunchAttention (attention.cu) uses it when
// WgmmaAttentionApplies; MmaAttentionKernel computes the same function everywhere else.
// Implemented in attention_wgmma.cu, built for sm_90a only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/layouts.h"

namespace kvblock::cuda::internal {

// True when the kernel was built for the current device (sm_90a) and its shared memory fits.
// Probed once per process (host-only).
bool WgmmaAttentionRunnable();

// True when the launch may use the wgmma kernel: single_segment, splits == 1, at least one
// CTA's 128 rows (max_q_len x heads per kv head), a positive softmax scale, bf16, head_dim 128,
// strides multiples of 8, and WgmmaAttentionRunnable().
bool WgmmaAttentionApplies(const AttentionParams& p, int32_t splits);

// Enqueues the kernel for `p` (which WgmmaAttentionApplies accepted) on `stream`; returns the
// launch status.
cudaError_t LaunchWgmmaAttention(const AttentionParams& p, cudaStream_t stream);

}  // namespace kvblock::cuda::internal
