// The weight-streaming bf16 GEMM for few rows (kernels/cuda/skinny_gemm.cu), behind
// Blas::Linear(..., LinearImpl::kSkinny): y[m][n] = x[m][k] * w[n][k]^T (+ beta * y) for
// m <= kSkinnyMaxM. Internal: callers use Blas::Linear (kernels/cuda/kernels.h), which owns the
// setup and the workspace.
//
// Every CTA streams an equal share of W's 128 x 64 tiles (stream-K over the flattened (n-tile,
// k-tile) space, so all SMs read the same number of weight bytes whatever the shape) through a
// cp.async pipeline, with x's rows read alongside; tensor cores (mma.sync bf16, f32 accumulate).
// A tile whose k-range is split between CTAs is finished by the last of them to arrive: partials
// are summed in CTA order from the workspace, never with float atomics, so a launch is
// deterministic (bit-identical outputs for identical inputs on one device).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/layouts.h"

namespace kvblock::cuda::internal {

inline constexpr int kSkinnyMaxM = 64;
// Number of kernel instantiations: rows padded to 8, 16, 32 or 64, times bf16 / f32 output.
inline constexpr int kSkinnyVariants = 8;

// Per-device facts SetUpSkinnyGemm found: how many CTAs of each instantiation fit on an SM (0 =
// the instantiation cannot run here, e.g. too little shared memory: such calls use cuBLAS).
struct SkinnyGemmSetup {
  int num_sms = 0;
  int ctas_per_sm[kSkinnyVariants] = {};
};

// Reads the current device's SM count and raises each instantiation's shared-memory limit. Not
// a stream operation; call once per device before any launch (Blas::Create does).
cudaError_t SetUpSkinnyGemm(SkinnyGemmSetup* setup);

// Bytes of the workspace every launch with `setup` needs: split-tile partials (two per CTA) and
// one arrival counter per n-tile, which must be zero before the first launch (each launch leaves
// them zero again, so CUDA graphs may replay it).
size_t SkinnyGemmWorkspaceBytes(const SkinnyGemmSetup& setup);
// Byte offset of the counters inside the workspace (the part to zero once).
size_t SkinnyGemmCounterOffset(const SkinnyGemmSetup& setup);

// Whether LaunchSkinnyGemm handles this call (x and w bf16, y of `out`): 1 <= m <= kSkinnyMaxM,
// k >= 8 and k, ldx multiples of 8, x and w 16-byte aligned, n within the workspace's counters,
// and the instantiation runnable on this device.
bool SkinnyGemmSupports(const SkinnyGemmSetup& setup, const void* x, int64_t ldx, const void* w,
                        int32_t m, int32_t n, int32_t k, DType out);

// Enqueues y = x * w^T (+ beta * y) on `stream`; y is bf16 or f32 per `out`, rows `ldy` apart.
// y is read only when beta != 0. Preconditions: SkinnyGemmSupports, a workspace of
// SkinnyGemmWorkspaceBytes whose counters are zero, and no other launch using the same
// workspace running concurrently (one workspace per stream).
cudaError_t LaunchSkinnyGemm(const SkinnyGemmSetup& setup, void* workspace, const void* x,
                             int64_t ldx, const void* w, int32_t m, int32_t n, int32_t k, DType out,
                             void* y, int64_t ldy, float beta, cudaStream_t stream);

}  // namespace kvblock::cuda::internal
