// Device helpers shared by the .cu files: element load/store for the two storage types and
// warp/block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/layouts.h"

namespace kvblock::cuda::internal {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float ToF(float x) { return x; }
__device__ __forceinline__ float ToF(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 FromF<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 floats. blockDim.x
// must be a multiple of 32.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < nwarps ? scratch[lane] : 0.f;
  return WarpSum(t);
}

// Dispatches a DType to a C++ element type.
#define KVBLOCK_DISPATCH_DTYPE(dtype, T, ...)        \
  do {                                               \
    if ((dtype) == ::kvblock::cuda::DType::kF32) {   \
      using T = float;                               \
      __VA_ARGS__;                                   \
    } else {                                         \
      using T = ::kvblock::cuda::internal::bf16;     \
      __VA_ARGS__;                                   \
    }                                                \
  } while (0)

}  // namespace kvblock::cuda::internal
