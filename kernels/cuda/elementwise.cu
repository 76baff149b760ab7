// Row-wise kernels of the forward pass: embedding gather, residual add fused with RMSNorm, RoPE
// (fused with the KV-cache store), block re-encoding, SwiGLU, casts, fp8 KV dequantization and
// on-device random fill.
#include <cuda_fp8.h>

#include "kernels/cuda/internal/common.cuh"
#include "kernels/cuda/internal/launch.h"
#include "kernels/cuda/sampling_rng.h"

namespace kvblock::cuda::internal {
namespace {

template <typename T>
__global__ void EmbeddingKernel(const int32_t* ids, const T* table, int32_t vocab, int32_t hidden,
                                T* out) {
  const int t = blockIdx.x;
  const int32_t id = ids[t];
  T* dst = out + static_cast<int64_t>(t) * hidden;
  if (id < 0 || id >= vocab) {  // loud, never silently a valid row
    for (int h = threadIdx.x; h < hidden; h += blockDim.x) dst[h] = FromF<T>(__int_as_float(0x7fc00000));
    return;
  }
  const T* src = table + static_cast<int64_t>(id) * hidden;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) dst[h] = src[h];
}

template <typename T>
__global__ void AddRmsNormKernel(T* residual, const T* delta, const T* weight, int32_t hidden,
                                 float eps, T* out) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  T* res = residual + row * hidden;
  const T* del = delta ? delta + row * hidden : nullptr;
  float ss = 0.f;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
    float x = ToF(res[h]);
    if (del) {
      const T r = FromF<T>(x + ToF(del[h]));
      res[h] = r;
      x = ToF(r);
    }
    ss += x * x;
  }
  const float total = BlockSum(ss, scratch);
  const float inv = rsqrtf(total / hidden + eps);
  T* o = out + row * hidden;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
    o[h] = FromF<T>(ToF(res[h]) * inv * ToF(weight[h]));
  }
}

template <typename T>
__global__ void RopeStoreKernel(RopeStoreParams p) {
  const int t = blockIdx.x;
  const int half = p.head_dim / 2;
  T* row = static_cast<T*>(p.qkv) + static_cast<int64_t>(t) * p.qkv_stride;
  const float pos = static_cast<float>(p.positions[t]);
  const int64_t cache_base = p.cache_offsets[t];
  T* kc = static_cast<T*>(p.k_cache);
  T* vc = static_cast<T*>(p.v_cache);
  const int rot_heads = p.num_heads + p.num_kv_heads;
  for (int idx = threadIdx.x; idx < rot_heads * half; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    float s, c;
    sincosf(pos * p.inv_freq[i], &s, &c);
    T* x = row + static_cast<int64_t>(h) * p.head_dim;
    const float x0 = ToF(x[i]), x1 = ToF(x[i + half]);
    const float y0 = x0 * c - x1 * s, y1 = x1 * c + x0 * s;
    if (h < p.num_heads) {
      x[i] = FromF<T>(y0);
      x[i + half] = FromF<T>(y1);
    } else {
      T* dst = kc + cache_base + static_cast<int64_t>(h - p.num_heads) * p.cache_head_stride;
      dst[i] = FromF<T>(y0);
      dst[i + half] = FromF<T>(y1);
    }
  }
  const T* v = row + static_cast<int64_t>(rot_heads) * p.head_dim;
  for (int idx = threadIdx.x; idx < p.num_kv_heads * p.head_dim; idx += blockDim.x) {
    const int h = idx / p.head_dim, d = idx % p.head_dim;
    vc[cache_base + static_cast<int64_t>(h) * p.cache_head_stride + d] = v[idx];
  }
}

template <typename T>
__global__ void ReencodeKKernel(const T* src, T* dst, int32_t num_tokens, int32_t head_dim,
                                int64_t head_stride, int32_t offset, const float* inv_freq) {
  const int t = blockIdx.x, h = blockIdx.y, half = head_dim / 2;
  const int64_t base = static_cast<int64_t>(h) * head_stride + static_cast<int64_t>(t) * head_dim;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double sd, cd;  // angle in f64, as the CPU twin
    sincos(static_cast<double>(offset) * inv_freq[i], &sd, &cd);
    const float s = static_cast<float>(sd), c = static_cast<float>(cd);
    const float x0 = ToF(src[base + i]), x1 = ToF(src[base + i + half]);
    dst[base + i] = FromF<T>(x0 * c - x1 * s);
    dst[base + i + half] = FromF<T>(x1 * c + x0 * s);
  }
}

template <typename T>
__global__ void SwiGluKernel(const T* gate_up, int64_t stride, int32_t inter, T* out) {
  const int64_t r = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= inter) return;
  const float g = ToF(gate_up[r * stride + i]);
  const float u = ToF(gate_up[r * stride + inter + i]);
  out[r * inter + i] = FromF<T>(g / (1.f + __expf(-g)) * u);
}

template <typename T>
__global__ void BroadcastRowsKernel(const T* row, int32_t n, T* out, int64_t ld) {
  const int64_t r = blockIdx.y;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    out[r * ld + i] = row[i];
  }
}

template <typename S, typename D>
__global__ void CastKernel(const S* src, D* dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = FromF<D>(ToF(src[i]));
  }
}

// src: one fp8 payload layer, [K scales f32[kv_heads]][V scales][K [kv_heads][head_elems]][V];
// element i belongs to (K|V, head) i / head_elems, which is also its scale's index.
template <typename T>
__global__ void DequantizeFp8LayerKernel(const uint8_t* src, int32_t kv_heads, int64_t head_elems,
                                         T* dst) {
  const float* scales = reinterpret_cast<const float*>(src);
  const uint8_t* q = src + 2 * kv_heads * sizeof(float);
  const int64_t n = 2 * kv_heads * head_elems;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    __nv_fp8_e4m3 v;
    v.__x = q[i];
    dst[i] = FromF<T>(static_cast<float>(v) * scales[i / head_elems]);
  }
}

template <typename T>
__global__ void FillRandomKernel(T* dst, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = UniformDraw(seed, 0, static_cast<uint64_t>(i));
    dst[i] = FromF<T>((2.f * u - 1.f) * scale);
  }
}

int GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace

cudaError_t LaunchEmbedding(DType dtype, const int32_t* ids, int32_t num_tokens, const void* table,
                            int32_t vocab, int32_t hidden, void* out, cudaStream_t stream) {
  KVBLOCK_DISPATCH_DTYPE(dtype, T,
                         EmbeddingKernel<T><<<num_tokens, 256, 0, stream>>>(
                             ids, static_cast<const T*>(table), vocab, hidden, static_cast<T*>(out)));
  return cudaGetLastError();
}

cudaError_t LaunchAddRmsNorm(DType dtype, void* residual, const void* delta, const void* weight,
                             int32_t rows, int32_t hidden, float eps, void* out,
                             cudaStream_t stream) {
  const int threads = hidden >= 4096 ? 1024 : 256;
  KVBLOCK_DISPATCH_DTYPE(dtype, T,
                         AddRmsNormKernel<T><<<rows, threads, 0, stream>>>(
                             static_cast<T*>(residual), static_cast<const T*>(delta),
                             static_cast<const T*>(weight), hidden, eps, static_cast<T*>(out)));
  return cudaGetLastError();
}

cudaError_t LaunchRopeStore(const RopeStoreParams& p, cudaStream_t stream) {
  KVBLOCK_DISPATCH_DTYPE(p.dtype, T, RopeStoreKernel<T><<<p.num_tokens, 256, 0, stream>>>(p));
  return cudaGetLastError();
}

cudaError_t LaunchReencodeK(DType dtype, const void* src, void* dst, int32_t num_kv_heads,
                            int32_t num_tokens, int32_t head_dim, int64_t head_stride,
                            int32_t offset, const float* inv_freq, cudaStream_t stream) {
  dim3 grid(num_tokens, num_kv_heads);
  KVBLOCK_DISPATCH_DTYPE(dtype, T,
                         ReencodeKKernel<T><<<grid, 64, 0, stream>>>(
                             static_cast<const T*>(src), static_cast<T*>(dst), num_tokens,
                             head_dim, head_stride, offset, inv_freq));
  return cudaGetLastError();
}

cudaError_t LaunchSwiGlu(DType dtype, const void* gate_up, int64_t gate_up_stride, int32_t rows,
                         int32_t inter, void* out, cudaStream_t stream) {
  dim3 grid((inter + 255) / 256, rows);
  KVBLOCK_DISPATCH_DTYPE(dtype, T,
                         SwiGluKernel<T><<<grid, 256, 0, stream>>>(
                             static_cast<const T*>(gate_up), gate_up_stride, inter,
                             static_cast<T*>(out)));
  return cudaGetLastError();
}

cudaError_t LaunchBroadcastRows(DType dtype, const void* row, int32_t rows, int32_t n, void* out,
                                int64_t ld, cudaStream_t stream) {
  dim3 grid((n + 255) / 256, rows);
  KVBLOCK_DISPATCH_DTYPE(dtype, T,
                         BroadcastRowsKernel<T><<<grid, 256, 0, stream>>>(
                             static_cast<const T*>(row), n, static_cast<T*>(out), ld));
  return cudaGetLastError();
}

cudaError_t LaunchCast(DType from, DType to, const void* src, void* dst, int64_t n,
                       cudaStream_t stream) {
  const int grid = GridFor(n, 256);
  KVBLOCK_DISPATCH_DTYPE(from, S, KVBLOCK_DISPATCH_DTYPE(to, D,
      CastKernel<S, D><<<grid, 256, 0, stream>>>(static_cast<const S*>(src),
                                                 static_cast<D*>(dst), n)));
  return cudaGetLastError();
}

cudaError_t LaunchDequantizeFp8Layer(const void* src, int32_t kv_heads, int32_t num_tokens,
                                     int32_t head_dim, DType dtype, void* dst, cudaStream_t stream) {
  const int64_t head_elems = int64_t{num_tokens} * head_dim;
  const int grid = GridFor(2 * kv_heads * head_elems, 256);
  KVBLOCK_DISPATCH_DTYPE(dtype, T,
                         DequantizeFp8LayerKernel<T><<<grid, 256, 0, stream>>>(
                             static_cast<const uint8_t*>(src), kv_heads, head_elems,
                             static_cast<T*>(dst)));
  return cudaGetLastError();
}

cudaError_t LaunchFillRandom(DType dtype, void* dst, int64_t n, uint64_t seed, float scale,
                             cudaStream_t stream) {
  const int grid = GridFor(n, 256);
  KVBLOCK_DISPATCH_DTYPE(dtype, T,
                         FillRandomKernel<T><<<grid, 256, 0, stream>>>(static_cast<T*>(dst), n,
                                                                       seed, scale));
  return cudaGetLastError();
}

}  // namespace kvblock::cuda::internal
