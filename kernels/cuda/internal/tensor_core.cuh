// Device helpers shared by the tensor-core attention kernels (attention.cu, attention_wgmma.cu):
// shared-memory addresses, cp.async copies, the softmax's fast exp2 and bf16 packing.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace kvblock::cuda::internal {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared (`dst` a shared-memory address); `valid` false writes zeros and
// reads nothing (src-size 0: keys past a tile's end, rows past a sequence).
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
  CpAsync16(SmemAddr(dst), src, valid);
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// 2^x on the special-function unit alone (relative error ~2^-22; exp2f adds range handling that
// the softmax, whose arguments are <= 0 or -inf, does not need). 2^-inf = 0.
__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace kvblock::cuda::internal
