// Attention of query sequences over segment lists (cached blocks re-encoded as they are loaded,
// then the sequence's own tokens), GQA, causal from `causal_start`, flash-style online softmax,
// optionally split over the key axis and merged by a combine kernel.
//
// Two kernels compute the same function:
//  - MmaAttentionKernel<D>: bf16, head_dim 64/128, tensor cores (mma.sync m16n8k16, f32
//    accumulate). A CTA takes 64 query rows of one KV head (rows = token-major (token, head in
//    group) pairs, so GQA heads share every K/V tile) and walks 64-key tiles of its key range.
//    K tiles of a segment with rope_offset != 0 are rotated while they are copied to shared
//    memory: re-encoding costs no extra pass over the KV.
//  - GenericAttentionKernel<T>: f32 or bf16, any even head_dim <= 256, one warp per query row,
//    CUDA cores; used for f32 (tests at ~1e-5) and unusual shapes.
#include <cfloat>

#include "kernels/cuda/internal/common.cuh"
#include "kernels/cuda/internal/launch.h"

namespace kvblock::cuda::internal {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMmaRows = 64;
constexpr int kMmaKeys = 64;
constexpr int kMmaThreads = 128;
constexpr int kGenericWarps = 4;

struct KeyRange {
  int begin, end;
};

// Keys [begin, end) that split `split` of `splits` handles for rows whose largest token is t_max.
__device__ __forceinline__ KeyRange SplitRange(const AttnSequence& s, int split, int splits,
                                               int t_max) {
  int chunk = (s.num_keys + splits - 1) / splits;
  chunk = (chunk + kMmaKeys - 1) / kMmaKeys * kMmaKeys;
  KeyRange r;
  r.begin = split * chunk;
  r.end = min(s.num_keys, r.begin + chunk);
  r.end = min(r.end, s.causal_start + t_max + 1);
  return r;
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                           uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                                uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
// d += a * b for one 16x8x16 bf16 tile.
__device__ __forceinline__ void Mma(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}


__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  // src-size 0 zero-fills the 16 bytes (keys past the tile's end) without reading gmem.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A tile of up to 64 keys inside one segment.
struct Tile {
  int k0;           // global key index of the first key
  int seg;          // segment index
  int in_seg;       // first key's index inside the segment
  int len;          // keys in the tile
  int rope_offset;  // the segment's re-encoding offset
};

// The tile starting at key k0 (< end), advancing the segment cursor; false past the end.
__device__ __forceinline__ bool FindTile(const AttentionParams& p, const AttnSequence& seq, int k0,
                                         int end, int& seg, int& seg_start, Tile& t) {
  if (k0 >= end) return false;
  while (seg < seq.seg_end && k0 - seg_start >= p.segs[seg].num_tokens) {
    seg_start += p.segs[seg].num_tokens;
    ++seg;
  }
  if (seg >= seq.seg_end) return false;  // malformed table: fewer keys than num_keys
  const int n = p.segs[seg].num_tokens;
  t.k0 = k0;
  t.seg = seg;
  t.in_seg = k0 - seg_start;
  t.len = min(kMmaKeys, min(end - k0, n - t.in_seg));
  t.rope_offset = p.segs[seg].rope_offset;
  return true;
}

// Starts the asynchronous copy of a tile's K and V into one shared-memory stage.
template <int D>
__device__ __forceinline__ void IssueTileLoad(const AttentionParams& p, const Tile& t, int kvh,
                                              bf16* sK, bf16* sV, int tid, int threads) {
  constexpr int kStride = D + 8;
  const AttnSegment& sg = p.segs[t.seg];
  const bf16* kbase = static_cast<const bf16*>(sg.k) + kvh * sg.head_stride + static_cast<int64_t>(t.in_seg) * D;
  const bf16* vbase = static_cast<const bf16*>(sg.v) + kvh * sg.head_stride + static_cast<int64_t>(t.in_seg) * D;
  for (int i = tid; i < kMmaKeys * (D / 8); i += threads) {
    const int key = i / (D / 8), c = i % (D / 8);
    const bool valid = key < t.len;
    const int off = valid ? key * D + c * 8 : 0;
    CpAsync16(sK + key * kStride + c * 8, kbase + off, valid);
    CpAsync16(sV + key * kStride + c * 8, vbase + off, valid);
  }
}

template <int D>
struct MmaShape {
  static constexpr int kStride = D + 8;  // bf16 per shared row: 16-byte pad against bank conflicts
  static constexpr int kSmemBytes = (kMmaRows + 4 * kMmaKeys) * kStride * 2 + D * 4;  // Q, 2x(K, V)
};

// Writes one row's result: straight to `o` (normalized, storage type) without splits, else the
// normalized partial and (m, l) to the workspace.
struct PartialOut {
  float* o;   // [seqs][splits][max_q_len][heads][D]
  float* ml;  // [seqs][splits][max_q_len][heads][2]
};

template <int D>
__global__ void __launch_bounds__(kMmaThreads)
    MmaAttentionKernel(AttentionParams p, int splits, PartialOut ws) {
  using S = MmaShape<D>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + kMmaRows * S::kStride;   // two stages
  bf16* sV = sK + 2 * kMmaKeys * S::kStride;  // two stages
  float* sCos = reinterpret_cast<float*>(sV + 2 * kMmaKeys * S::kStride);
  float* sSin = sCos + D / 2;

  const AttnSequence seq = p.seqs[blockIdx.z];
  const int group = p.num_heads / p.num_kv_heads;
  const int rows_total = seq.q_len * group;
  const int row0 = blockIdx.x * kMmaRows;
  if (row0 >= rows_total) return;
  const int kvh = blockIdx.y / splits, split = blockIdx.y % splits;
  const int t_max = (min(rows_total, row0 + kMmaRows) - 1) / group;
  const KeyRange range = SplitRange(seq, split, splits, t_max);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tq = lane & 3;

  // Q tile -> shared -> A fragments.
  const bf16* q = static_cast<const bf16*>(seq.q);
  for (int i = tid; i < kMmaRows * (D / 8); i += kMmaThreads) {
    const int rr = i / (D / 8), c = i % (D / 8), r = row0 + rr;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < rows_total) {
      const int t = r / group, h = kvh * group + r % group;
      val = *reinterpret_cast<const uint4*>(q + t * p.q_stride + h * D + c * 8);
    }
    *reinterpret_cast<uint4*>(sQ + rr * S::kStride + c * 8) = val;
  }
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const bf16* ptr = sQ + (warp * 16 + (lane & 15)) * S::kStride + ks * 16 + (lane >> 4) * 8;
    LdMatrixX4(SmemAddr(ptr), qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3]);
  }

  float oacc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  int t_row[2];
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) t_row[hi] = (row0 + warp * 16 + g + hi * 8) / group;
  const float scale_log2 = p.scale * kLog2e;

  // Tiles stream through two shared-memory stages: the next tile's cp.async copies are in
  // flight while the current one is computed.
  Tile cur, nxt;
  int seg = seq.seg_begin, seg_start = 0;
  bool have = FindTile(p, seq, range.begin, range.end, seg, seg_start, cur);
  if (have) IssueTileLoad<D>(p, cur, kvh, sK, sV, tid, kMmaThreads);
  CpAsyncCommit();
  int stage = 0;
  int table_offset = 0;  // rope offset whose cos/sin are in sCos/sSin (0 = none)
  while (have) {
    const bool more = FindTile(p, seq, cur.k0 + cur.len, range.end, seg, seg_start, nxt);
    if (more) {
      IssueTileLoad<D>(p, nxt, kvh, sK + (stage ^ 1) * kMmaKeys * S::kStride,
                       sV + (stage ^ 1) * kMmaKeys * S::kStride, tid, kMmaThreads);
    }
    CpAsyncCommit();
    CpAsyncWait<1>();  // the current tile's group has landed (this thread's part)
    __syncthreads();
    bf16* tK = sK + stage * kMmaKeys * S::kStride;
    const bf16* tV = sV + stage * kMmaKeys * S::kStride;
    if (cur.rope_offset != 0) {
      if (cur.rope_offset != table_offset) {
        for (int i = tid; i < D / 2; i += kMmaThreads) {
          // Angle in f64 like the CPU twin (kernels/cpu/rope.h ReencodeK): offsets reach 1e5 rad.
          double sn, cs;
          sincos(static_cast<double>(cur.rope_offset) * p.inv_freq[i], &sn, &cs);
          sCos[i] = static_cast<float>(cs);
          sSin[i] = static_cast<float>(sn);
        }
        table_offset = cur.rope_offset;
        __syncthreads();
      }
      // Re-encode K in shared memory: rotate pairs (i, i + D/2) by rope_offset * inv_freq[i].
      for (int i = tid; i < kMmaKeys * (D / 16); i += kMmaThreads) {
        const int key = i / (D / 16), c = i % (D / 16);
        uint4 lo = *reinterpret_cast<uint4*>(tK + key * S::kStride + c * 8);
        uint4 hi = *reinterpret_cast<uint4*>(tK + key * S::kStride + D / 2 + c * 8);
        bf16* l8 = reinterpret_cast<bf16*>(&lo);
        bf16* h8 = reinterpret_cast<bf16*>(&hi);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float cs = sCos[c * 8 + e], sn = sSin[c * 8 + e];
          const float x0 = __bfloat162float(l8[e]), x1 = __bfloat162float(h8[e]);
          l8[e] = __float2bfloat16_rn(x0 * cs - x1 * sn);
          h8[e] = __float2bfloat16_rn(x1 * cs + x0 * sn);
        }
        *reinterpret_cast<uint4*>(tK + key * S::kStride + c * 8) = lo;
        *reinterpret_cast<uint4*>(tK + key * S::kStride + D / 2 + c * 8) = hi;
      }
      __syncthreads();
    }
    const int k0 = cur.k0, tile_len = cur.len;

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float sacc[kMmaKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; ++n) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
      for (int np = 0; np < kMmaKeys / 16; ++np) {
        const bf16* ptr =
            tK + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * S::kStride + ks * 16 + ((lane >> 3) & 1) * 8;
        uint32_t b0, b1, b2, b3;
        LdMatrixX4(SmemAddr(ptr), b0, b1, b2, b3);
        Mma(sacc[2 * np], qf[ks], b0, b1);
        Mma(sacc[2 * np + 1], qf[ks], b2, b3);
      }
    }
    // Mask, online softmax (log2 domain), P into A fragments.
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int limit = seq.causal_start + t_row[hi] - k0;  // last visible key in tile coords
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kMmaKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = n * 8 + tq * 2 + e;
          float s = sacc[n][hi * 2 + e] * scale_log2;
          if (key >= tile_len || key > limit) s = -INFINITY;
          sacc[n][hi * 2 + e] = s;
          mx = fmaxf(mx, s);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[hi], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m_run[hi] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kMmaKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pv = exp2f(sacc[n][hi * 2 + e] - m_use);
          sacc[n][hi * 2 + e] = pv;
          sum += pv;
        }
      }
      l_run[hi] = l_run[hi] * alpha + sum;
      m_run[hi] = m_new;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        oacc[n][hi * 2] *= alpha;
        oacc[n][hi * 2 + 1] *= alpha;
      }
    }
    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kMmaKeys / 16; ++kk) {
      uint32_t a[4];
      a[0] = PackBf16(sacc[2 * kk][0], sacc[2 * kk][1]);
      a[1] = PackBf16(sacc[2 * kk][2], sacc[2 * kk][3]);
      a[2] = PackBf16(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
      a[3] = PackBf16(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        const int mi = lane >> 3;
        const bf16* ptr = tV + (kk * 16 + (mi & 1) * 8 + (lane & 7)) * S::kStride + dp * 16 + (mi >> 1) * 8;
        uint32_t b0, b1, b2, b3;
        LdMatrixX4Trans(SmemAddr(ptr), b0, b1, b2, b3);
        Mma(oacc[2 * dp], a, b0, b1);
        Mma(oacc[2 * dp + 1], a, b2, b3);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
    cur = nxt;
    have = more;
    stage ^= 1;
  }
  CpAsyncWait<0>();

  // Finish: full row sums, then write.
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    l_run[hi] += __shfl_xor_sync(0xffffffffu, l_run[hi], 1);
    l_run[hi] += __shfl_xor_sync(0xffffffffu, l_run[hi], 2);
  }
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int r = row0 + warp * 16 + g + hi * 8;
    if (r >= rows_total) continue;
    const int t = r / group, h = kvh * group + r % group;
    const float inv = l_run[hi] > 0.f ? 1.f / l_run[hi] : 0.f;
    if (splits == 1) {
      bf16* o = static_cast<bf16*>(seq.o) + t * p.o_stride + h * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        *reinterpret_cast<uint32_t*>(o + n * 8 + tq * 2) =
            PackBf16(oacc[n][hi * 2] * inv, oacc[n][hi * 2 + 1] * inv);
      }
    } else {
      const int64_t idx =
          ((static_cast<int64_t>(blockIdx.z) * splits + split) * p.max_q_len + t) * p.num_heads + h;
      float* o = ws.o + idx * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        *reinterpret_cast<float2*>(o + n * 8 + tq * 2) =
            make_float2(oacc[n][hi * 2] * inv, oacc[n][hi * 2 + 1] * inv);
      }
      if (tq == 0) {
        ws.ml[idx * 2] = l_run[hi] > 0.f ? m_run[hi] : -INFINITY;
        ws.ml[idx * 2 + 1] = l_run[hi];
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kGenericWarps * 32)
    GenericAttentionKernel(AttentionParams p, int splits, PartialOut ws) {
  constexpr int kMaxPer = 8;  // head_dim <= 256
  const AttnSequence seq = p.seqs[blockIdx.z];
  const int group = p.num_heads / p.num_kv_heads;
  const int rows_total = seq.q_len * group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * kGenericWarps + warp;
  if (r >= rows_total) return;
  const int kvh = blockIdx.y / splits, split = blockIdx.y % splits;
  const int t = r / group, h = kvh * group + r % group;
  const int D = p.head_dim, half = D / 2;
  const KeyRange range = SplitRange(seq, split, splits, t);
  const float scale_log2 = p.scale * kLog2e;

  const T* q = static_cast<const T*>(seq.q) + t * p.q_stride + h * D;
  float qv[kMaxPer], acc[kMaxPer];
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int d = lane + 32 * i;
    qv[i] = d < D ? ToF(q[d]) * scale_log2 : 0.f;
    acc[i] = 0.f;
  }
  float m_run = -INFINITY, l_run = 0.f;
  int seg = seq.seg_begin, seg_start = 0, table_offset = 0;
  float cs[kMaxPer], sn[kMaxPer];
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) cs[i] = 1.f, sn[i] = 0.f;
  for (int j = range.begin; j < range.end; ++j) {
    while (seg < seq.seg_end && j - seg_start >= p.segs[seg].num_tokens) {
      seg_start += p.segs[seg].num_tokens;
      ++seg;
    }
    if (seg >= seq.seg_end) break;
    const AttnSegment sg = p.segs[seg];
    if (sg.rope_offset != table_offset) {
#pragma unroll
      for (int i = 0; i < kMaxPer; ++i) {
        const int d = lane + 32 * i;
        if (d < D) {
          double sd, cd;
          sincos(static_cast<double>(sg.rope_offset) * p.inv_freq[d % half], &sd, &cd);
          sn[i] = static_cast<float>(sd);
          cs[i] = static_cast<float>(cd);
        }
      }
      table_offset = sg.rope_offset;
    }
    const T* k = static_cast<const T*>(sg.k) + kvh * sg.head_stride +
                 static_cast<int64_t>(j - seg_start) * D;
    const T* v = static_cast<const T*>(sg.v) + kvh * sg.head_stride +
                 static_cast<int64_t>(j - seg_start) * D;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPer; ++i) {
      const int d = lane + 32 * i;
      if (d < D) {
        float kd = ToF(k[d]);
        if (sg.rope_offset != 0) {
          kd = d < half ? kd * cs[i] - ToF(k[d + half]) * sn[i] : kd * cs[i] + ToF(k[d - half]) * sn[i];
          if constexpr (sizeof(T) == 2) kd = ToF(FromF<T>(kd));  // as stored after re-encoding
        }
        dot += qv[i] * kd;
      }
    }
    dot = WarpSum(dot);
    const float m_new = fmaxf(m_run, dot);
    const float alpha = exp2f(m_run - m_new);
    const float pv = exp2f(dot - m_new);
    l_run = l_run * alpha + pv;
    m_run = m_new;
#pragma unroll
    for (int i = 0; i < kMaxPer; ++i) {
      const int d = lane + 32 * i;
      if (d < D) acc[i] = acc[i] * alpha + pv * ToF(v[d]);
    }
  }
  const float inv = l_run > 0.f ? 1.f / l_run : 0.f;
  if (splits == 1) {
    T* o = static_cast<T*>(seq.o) + t * p.o_stride + h * D;
#pragma unroll
    for (int i = 0; i < kMaxPer; ++i) {
      const int d = lane + 32 * i;
      if (d < D) o[d] = FromF<T>(acc[i] * inv);
    }
  } else {
    const int64_t idx =
        ((static_cast<int64_t>(blockIdx.z) * splits + split) * p.max_q_len + t) * p.num_heads + h;
#pragma unroll
    for (int i = 0; i < kMaxPer; ++i) {
      const int d = lane + 32 * i;
      if (d < D) ws.o[idx * D + d] = acc[i] * inv;
    }
    if (lane == 0) {
      ws.ml[idx * 2] = l_run > 0.f ? m_run : -INFINITY;
      ws.ml[idx * 2 + 1] = l_run;
    }
  }
}

// Merges the splits' partials of one (sequence, token, head).
template <typename T>
__global__ void CombineKernel(AttentionParams p, int splits, PartialOut ws) {
  const AttnSequence seq = p.seqs[blockIdx.z];
  const int t = blockIdx.y, h = blockIdx.x;
  if (t >= seq.q_len) return;
  const int D = p.head_dim;
  auto index = [&](int s) {
    return ((static_cast<int64_t>(blockIdx.z) * splits + s) * p.max_q_len + t) * p.num_heads + h;
  };
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, ws.ml[index(s) * 2]);
  T* o = static_cast<T*>(seq.o) + t * p.o_stride + h * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0.f, den = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t idx = index(s);
      const float ms = ws.ml[idx * 2], ls = ws.ml[idx * 2 + 1];
      if (ls <= 0.f) continue;
      const float w = ls * exp2f(ms - m);
      num += w * ws.o[idx * D + d];
      den += w;
    }
    o[d] = FromF<T>(den > 0.f ? num / den : 0.f);
  }
}

template <int D>
cudaError_t LaunchMma(const AttentionParams& p, int splits, PartialOut ws, cudaStream_t stream) {
  using S = MmaShape<D>;
  // Idempotent and host-only; set on every launch so no static state is shared across threads.
  cudaError_t e = cudaFuncSetAttribute(MmaAttentionKernel<D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
  if (e != cudaSuccess) return e;
  const int group = p.num_heads / p.num_kv_heads;
  dim3 grid((p.max_q_len * group + kMmaRows - 1) / kMmaRows, p.num_kv_heads * splits, p.num_seqs);
  MmaAttentionKernel<D><<<grid, kMmaThreads, S::kSmemBytes, stream>>>(p, splits, ws);
  return cudaGetLastError();
}

// CTAs of the tensor-core kernel that fit on one multiprocessor at once (registers and shared
// memory decide); 2 if the occupancy query fails.
int MmaBlocksPerSm(int head_dim) {
  auto query = [](auto kernel, int smem) {
    int n = 0;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kMmaThreads, smem) != cudaSuccess || n < 1) {
      cudaGetLastError();  // clear a sticky-free error from the query
      return 2;
    }
    return n;
  };
  static const int n64 = query(MmaAttentionKernel<64>, MmaShape<64>::kSmemBytes);
  static const int n128 = query(MmaAttentionKernel<128>, MmaShape<128>::kSmemBytes);
  return head_dim == 64 ? n64 : n128;
}

}  // namespace

int32_t AttentionSplits(const AttentionParams& p, int num_sms) {
  if (p.num_splits > 0) return p.num_splits;
  const int group = p.num_heads / p.num_kv_heads;
  const int64_t ctas = static_cast<int64_t>((p.max_q_len * group + kMmaRows - 1) / kMmaRows) *
                       p.num_kv_heads * p.num_seqs;
  // Fill exactly one wave of resident CTAs: a second, partial wave would double the time of the
  // slowest split.
  const int64_t slots = static_cast<int64_t>(MmaBlocksPerSm(p.head_dim)) * num_sms;
  int64_t splits = slots / ctas;
  const int64_t by_keys = p.max_keys / 256 > 1 ? p.max_keys / 256 : 1;
  if (splits > by_keys) splits = by_keys;
  if (splits > 128) splits = 128;
  return static_cast<int32_t>(splits < 1 ? 1 : splits);
}

size_t AttentionWorkspaceBytes(const AttentionParams& p, int32_t splits) {
  if (splits <= 1) return 0;
  const size_t rows = static_cast<size_t>(p.num_seqs) * splits * p.max_q_len * p.num_heads;
  return rows * (p.head_dim + 2) * sizeof(float);
}

cudaError_t LaunchAttention(const AttentionParams& p, int32_t splits, void* workspace,
                            bool force_generic, cudaStream_t stream) {
  PartialOut ws{nullptr, nullptr};
  if (splits > 1) {
    const size_t rows = static_cast<size_t>(p.num_seqs) * splits * p.max_q_len * p.num_heads;
    ws.o = static_cast<float*>(workspace);
    ws.ml = ws.o + rows * p.head_dim;
  }
  const bool mma_ok = p.dtype == DType::kBF16 && (p.head_dim == 64 || p.head_dim == 128) &&
                      p.q_stride % 8 == 0 && p.o_stride % 8 == 0;
  cudaError_t err;
  if (mma_ok && !force_generic) {
    err = p.head_dim == 64 ? LaunchMma<64>(p, splits, ws, stream) : LaunchMma<128>(p, splits, ws, stream);
  } else {
    const int group = p.num_heads / p.num_kv_heads;
    dim3 grid((p.max_q_len * group + kGenericWarps - 1) / kGenericWarps, p.num_kv_heads * splits,
              p.num_seqs);
    KVBLOCK_DISPATCH_DTYPE(p.dtype, T,
                           GenericAttentionKernel<T><<<grid, kGenericWarps * 32, 0, stream>>>(
                               p, splits, ws));
    err = cudaGetLastError();
  }
  if (err != cudaSuccess || splits <= 1) return err;
  dim3 grid(p.num_heads, p.max_q_len, p.num_seqs);
  const int threads = p.head_dim >= 128 ? 128 : (p.head_dim >= 64 ? 64 : 32);
  KVBLOCK_DISPATCH_DTYPE(p.dtype, T, CombineKernel<T><<<grid, threads, 0, stream>>>(p, splits, ws));
  return cudaGetLastError();
}

}  // namespace kvblock::cuda::internal
