// Token sampling, one CTA per row of f32 logits: greedy (argmax, lowest index on ties), or
// temperature with top-k and top-p. Thresholds are found exactly by bisection over the bits of
// the order-preserving integer image of the logits (no sort), so the kept set is "every logit
// >= threshold" (ties at the boundary are all kept). The draw comes from UniformDraw(seed, step,
// row) and picks the token by cumulative mass in index order, exactly as the CPU twin does.
// A row containing NaN yields token -1.
#include "kernels/cuda/internal/common.cuh"
#include "kernels/cuda/internal/launch.h"
#include "kernels/cuda/sampling_rng.h"

namespace kvblock::cuda::internal {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t OrderedKey(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ int BlockCount(int v, int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int t = lane < (blockDim.x >> 5) ? scratch[lane] : 0;
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* logits, int32_t vocab, int64_t row_stride,
                 const SamplingParams* params, int32_t* out) {
  __shared__ float fscratch[32];
  __shared__ int iscratch[32];
  __shared__ float prefix[kThreads];
  __shared__ int result;
  const int row = blockIdx.x;
  const float* x = logits + row * row_stride;
  const SamplingParams sp = params[row];

  // Argmax (value, lowest index) and NaN detection.
  float best = -INFINITY;
  int best_i = vocab;
  int nan = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    if (isnan(v)) nan = 1;
    if (v > best || (v == best && i < best_i)) best = v, best_i = i;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ov > best || (ov == best && oi < best_i)) best = ov, best_i = oi;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) fscratch[warp] = best, iscratch[warp] = best_i;
  __syncthreads();
  if (warp == 0) {
    best = lane < (blockDim.x >> 5) ? fscratch[lane] : -INFINITY;
    best_i = lane < (blockDim.x >> 5) ? iscratch[lane] : vocab;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
      if (ov > best || (ov == best && oi < best_i)) best = ov, best_i = oi;
    }
    if (lane == 0) fscratch[0] = best, iscratch[0] = best_i;
  }
  __syncthreads();
  const float max_logit = fscratch[0];
  const int argmax = iscratch[0];
  const int any_nan = BlockCount(nan, iscratch);
  if (any_nan > 0 || argmax >= vocab) {
    if (threadIdx.x == 0) out[row] = -1;
    return;
  }
  if (sp.temperature <= 0.f || sp.top_k == 1) {
    if (threadIdx.x == 0) out[row] = argmax;
    return;
  }

  // Top-k threshold: the k-th largest key.
  uint32_t tau = 0;
  if (sp.top_k > 0 && sp.top_k < vocab) {
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = tau | (1u << bit);
      int c = 0;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) c += OrderedKey(x[i]) >= cand;
      if (BlockCount(c, iscratch) >= sp.top_k) tau = cand;
    }
  }
  const float k2 = 1.4426950408889634f / sp.temperature;
  auto mass = [&](uint32_t thr) {
    float s = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = x[i];
      if (OrderedKey(v) >= thr) s += exp2f((v - max_logit) * k2);
    }
    return BlockSum(s, fscratch);
  };
  if (sp.top_p < 1.f) {
    const float target = sp.top_p * mass(tau);
    uint32_t tp = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = tp | (1u << bit);
      const uint32_t thr = cand > tau ? cand : tau;
      if (mass(thr) >= target) tp = cand;
    }
    if (tp > tau) tau = tp;
  }

  // Draw: first index whose cumulative kept mass (index order) exceeds u * total.
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int begin = min(vocab, static_cast<int>(threadIdx.x) * chunk);
  const int end = min(vocab, begin + chunk);
  float own = 0.f;
  for (int i = begin; i < end; ++i) {
    if (OrderedKey(x[i]) >= tau) own += exp2f((x[i] - max_logit) * k2);
  }
  prefix[threadIdx.x] = own;
  if (threadIdx.x == 0) result = -1;
  __syncthreads();
  // Inclusive scan (Hillis-Steele) over the per-thread sums.
  for (int off = 1; off < blockDim.x; off <<= 1) {
    const float add = threadIdx.x >= off ? prefix[threadIdx.x - off] : 0.f;
    __syncthreads();
    prefix[threadIdx.x] += add;
    __syncthreads();
  }
  const float total = prefix[blockDim.x - 1];
  const float target = UniformDraw(sp.seed, sp.step, static_cast<uint64_t>(row)) * total;
  const float start = prefix[threadIdx.x] - own;
  if (own > 0.f && target >= start && target < start + own) {
    float c = start;
    int pick = -1;
    for (int i = begin; i < end; ++i) {
      if (OrderedKey(x[i]) < tau) continue;
      pick = i;
      c += exp2f((x[i] - max_logit) * k2);
      if (c > target) break;
    }
    atomicMax(&result, pick);
  }
  __syncthreads();
  if (threadIdx.x == 0) out[row] = result >= 0 ? result : argmax;  // rounding at the very top
}

}  // namespace

cudaError_t LaunchSample(const float* logits, int32_t rows, int32_t vocab, int64_t row_stride,
                         const SamplingParams* params, int32_t* out_tokens, cudaStream_t stream) {
  SampleKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, row_stride, params, out_tokens);
  return cudaGetLastError();
}

}  // namespace kvblock::cuda::internal
