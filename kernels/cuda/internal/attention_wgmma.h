// Hopper (sm_90a) warpgroup-MMA attention: bf16, head_dim 128, any segment table (cached blocks
// re-encoded by rotating the queries by -rope_offset per segment, then the sequence's own keys,
// causal from causal_start), optionally split over the key axis into the PartialOut workspace
// that CombineKernel merges. LaunchAttention (attention.cu) uses it when WgmmaAttentionApplies;
// MmaAttentionKernel computes the same function everywhere else. Implemented in
// attention_wgmma.cu, built for sm_90a only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/internal/attention_common.cuh"
#include "kernels/cuda/layouts.h"

namespace kvblock::cuda::internal {

// Query rows ((token, head in group) pairs of one KV head) per CTA; one CTA per multiprocessor.
constexpr int kWgmmaRowsPerCta = 128;

// True when the kernel was built for the current device (sm_90a) and its shared memory fits.
// Probed once per process (host-only).
bool WgmmaAttentionRunnable();

// True when the launch may use the wgmma kernel: at least one CTA's rows (max_q_len x heads per
// kv head >= kWgmmaRowsPerCta), a positive softmax scale, bf16, head_dim 128, strides multiples
// of 8, and WgmmaAttentionRunnable(). Any number of key splits.
bool WgmmaAttentionApplies(const AttentionParams& p);

// Enqueues the kernel for `p` (which WgmmaAttentionApplies accepted) on `stream`: with splits > 1
// each split's partial rows go to `ws` (the caller runs CombineKernel), else the output is
// written directly. Returns the launch status.
cudaError_t LaunchWgmmaAttention(const AttentionParams& p, int32_t splits, PartialOut ws,
                                 cudaStream_t stream);

}  // namespace kvblock::cuda::internal
