// Attention of query sequences over segment lists (cached blocks re-encoded as they are loaded,
// then the sequence's own tokens), GQA, causal from `causal_start`, flash-style online softmax,
// optionally split over the key axis and merged by a combine kernel.
//
// Three kernels compute the same function:
//  - MmaAttentionKernel<D, WM>: bf16, head_dim 64/128, tensor cores (mma.sync m16n8k16, f32
//    accumulate). A CTA of 4 warps takes 64 * WM query rows of one KV head (rows = token-major
//    (token, head in group) pairs, so GQA heads share every K/V tile; each warp owns WM 16-row
//    fragments) and walks 64-key tiles of its key range through a two-stage cp.async pipeline.
//    A sequence's rows are shared evenly by the fewest CTAs that hold them, in whole fragments,
//    and a warp skips fragments past its CTA's rows: a 50-token final block with 4 query heads
//    per KV head (200 rows) computes 112 + 88 rows, not 128 + 128.
//    Re-encoding a segment (rope_offset != 0) rotates the CTA's queries by -rope_offset once per
//    segment instead of every K tile by +rope_offset: no extra pass over the KV and no pass over
//    shared K. Causal CTAs run longest-first and skip the mask on tiles below the diagonal.
//  - WgmmaAttentionKernel (attention_wgmma.cu): the same for bf16, head_dim 128 launches of at
//    least 128 rows per KV head (prefill, block-mode final blocks; any segments, key splits) on
//    Hopper's warpgroup MMA; its key-split partials are merged by the same CombineKernel.
//  - GenericAttentionKernel<T>: f32 or bf16, any even head_dim <= 256, one warp per query row,
//    CUDA cores; used for f32 (tests at ~1e-5) and unusual shapes.
#include <cfloat>

#include "kernels/cuda/internal/attention_common.cuh"
#include "kernels/cuda/internal/attention_wgmma.h"
#include "kernels/cuda/internal/common.cuh"
#include "kernels/cuda/internal/launch.h"
#include "kernels/cuda/internal/tensor_core.cuh"

namespace kvblock::cuda::internal {
namespace {

constexpr int kMmaKeys = 64;
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kGenericWarps = 4;

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                           uint32_t& r3) {
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
                                              bf16* sK, bf16* sV, int tid) {
  constexpr int kStride = D + 8;
  const AttnSegment& sg = p.segs[t.seg];
  const int64_t first = kvh * sg.head_stride + static_cast<int64_t>(t.in_seg) * D;
  const bf16* kbase = static_cast<const bf16*>(sg.k) + first;
  const bf16* vbase = static_cast<const bf16*>(sg.v) + first;
#pragma unroll 1  // rolled: registers are scarce beside two fragments' accumulators
  for (int i = tid; i < kMmaKeys * (D / 8); i += kMmaThreads) {
    const int key = i / (D / 8), c = i % (D / 8);
    const bool valid = key < t.len;
    const int off = valid ? key * D + c * 8 : 0;
    CpAsync16(sK + key * kStride + c * 8, kbase + off, valid);
    CpAsync16(sV + key * kStride + c * 8, vbase + off, valid);
  }
}

// Tile geometry of MmaAttentionKernel<D, WM>: kMmaWarps warps, each owning WM 16-row MMA
// fragments of query rows, so every K/V fragment read from shared memory feeds WM MMAs.
template <int D, int WM>
struct MmaShape {
  static constexpr int kRows = kMmaWarps * 16 * WM;  // query rows per CTA
  static constexpr int kStride = D + 8;  // bf16 per shared row: 16-byte pad against bank conflicts
  // Q, two stages of K and V, the cos/sin table.
  static constexpr int kSmemBytes = (kRows + 4 * kMmaKeys) * kStride * 2 + D * 4;
};

// Re-encoding a cached block rotates its K by +offset; since R(o)k . q = k . R(-o)q, the kernel
// rotates the CTA's queries by -offset once per segment instead of every K tile. The queries are
// copied to sQ with cp.async (IssueQLoad), then each thread rotates the chunks it copied
// (RotateQ) with the segment's cos/sin table (RopeTable).

// cos/sin of offset * inv_freq[i] for the D/2 frequencies (RopeCosSin).
template <int D>
__device__ __forceinline__ void RopeTable(const float* inv_freq, int offset, float* sCos,
                                          float* sSin, int tid) {
  for (int i = tid; i < D / 2; i += kMmaThreads) RopeCosSin(offset, inv_freq[i], &sCos[i], &sSin[i]);
}

// Starts copying the CTA's query rows into sQ (zeros for rows past the sequence). Thread `tid`
// copies the chunk pairs (row, c) and (row, c + D/2) that RotateQ gives it.
// Rows [row0, row0 + rows) are the CTA's; sQ gets `frag_rows` of them (zeros past `rows`).
template <int D>
__device__ __forceinline__ void IssueQLoad(const AttentionParams& p, const AttnSequence& seq,
                                           int row0, int rows, int frag_rows, int group, int kvh,
                                           bf16* sQ, int tid) {
  constexpr int kStride = D + 8;
  const bf16* q = static_cast<const bf16*>(seq.q);
#pragma unroll 1  // rolled, as IssueTileLoad
  for (int i = tid; i < frag_rows * (D / 16); i += kMmaThreads) {
    const int rr = i / (D / 16), c = i % (D / 16), r = row0 + rr;
    const bool valid = rr < rows;
    const bf16* src = q;
    if (valid) src = q + (r / group) * p.q_stride + (kvh * group + r % group) * D + c * 8;
    CpAsync16(sQ + rr * kStride + c * 8, src, valid);
    CpAsync16(sQ + rr * kStride + D / 2 + c * 8, valid ? src + D / 2 : src, valid);
  }
}

// Rotates the chunk pairs this thread copied in IssueQLoad by -offset (table in sCos/sSin), in
// place, after its copies have landed.
template <int D>
__device__ __forceinline__ void RotateQ(bf16* sQ, int frag_rows, const float* sCos,
                                        const float* sSin, int tid) {
  constexpr int kStride = D + 8;
#pragma unroll 1
  for (int i = tid; i < frag_rows * (D / 16); i += kMmaThreads) {
    const int rr = i / (D / 16), c = i % (D / 16);
    uint4* plo = reinterpret_cast<uint4*>(sQ + rr * kStride + c * 8);
    uint4* phi = reinterpret_cast<uint4*>(sQ + rr * kStride + D / 2 + c * 8);
    uint4 lo = *plo, hi = *phi;
    bf16* l8 = reinterpret_cast<bf16*>(&lo);
    bf16* h8 = reinterpret_cast<bf16*>(&hi);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float cs = sCos[c * 8 + e], sn = sSin[c * 8 + e];
      const float x0 = __bfloat162float(l8[e]), x1 = __bfloat162float(h8[e]);
      l8[e] = __float2bfloat16_rn(x0 * cs + x1 * sn);
      h8[e] = __float2bfloat16_rn(x1 * cs - x0 * sn);
    }
    *plo = lo;
    *phi = hi;
  }
}

template <int WM>
__device__ __forceinline__ bool AnyNotOne(const float (&alphas)[WM][2]) {
  bool any = false;
#pragma unroll
  for (int mf = 0; mf < WM; ++mf) any = any || alphas[mf][0] != 1.f || alphas[mf][1] != 1.f;
  return any;
}

// One 64-key tile for the first NF of a warp's WM query fragments (rows wrow ..): S = Q K^T, the
// causal mask unless `unmasked`, online softmax (log2 domain), O += P V. NF is a template
// argument so that a warp with fewer rows than WM fragments runs branch-free MMA sequences.
template <int D, int WM, int NF>
__device__ __forceinline__ void AttendTile(const bf16* sQ, const bf16* tK, const bf16* tV, int wrow,
                                           int lane, bool unmasked, int row0, int group,
                                           int causal_start, int k0, int tile_len, float scale_log2,
                                           float (&oacc)[WM][D / 8][4], float (&m_run)[WM][2],
                                           float (&l_run)[WM][2]) {
  constexpr int kStride = MmaShape<D, WM>::kStride;
  constexpr int kNk = kMmaKeys / 8;  // 8-key MMA column blocks per tile
  const int g = lane >> 2, tq = lane & 3;
  float sacc[NF][kNk][4];
#pragma unroll
  for (int mf = 0; mf < NF; ++mf) {
#pragma unroll
    for (int n = 0; n < kNk; ++n)
      sacc[mf][n][0] = sacc[mf][n][1] = sacc[mf][n][2] = sacc[mf][n][3] = 0.f;
  }
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t a[NF][4];
#pragma unroll
    for (int mf = 0; mf < NF; ++mf) {
      const bf16* ptr = sQ + (wrow + mf * 16 + (lane & 15)) * kStride + ks * 16 + (lane >> 4) * 8;
      LdMatrixX4(SmemAddr(ptr), a[mf][0], a[mf][1], a[mf][2], a[mf][3]);
    }
#pragma unroll
    for (int np = 0; np < kNk / 2; ++np) {
      const bf16* ptr =
          tK + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * kStride + ks * 16 + ((lane >> 3) & 1) * 8;
      uint32_t b0, b1, b2, b3;
      LdMatrixX4(SmemAddr(ptr), b0, b1, b2, b3);
#pragma unroll
      for (int mf = 0; mf < NF; ++mf) {
        Mma(sacc[mf][2 * np], a[mf], b0, b1);
        Mma(sacc[mf][2 * np + 1], a[mf], b2, b3);
      }
    }
  }
  if (!unmasked) {
#pragma unroll
    for (int mf = 0; mf < NF; ++mf) {
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        // The last key this row sees in the tile (causal limit or the tile's end).
        const int t = (row0 + wrow + mf * 16 + g + hi * 8) / group;
        const int last = min(tile_len, causal_start + t - k0 + 1) - 1;
#pragma unroll
        for (int n = 0; n < kNk; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (n * 8 + tq * 2 + e > last) sacc[mf][n][hi * 2 + e] = -INFINITY;
          }
        }
      }
    }
  }
  float alphas[NF][2];  // each row's O rescaling factor
#pragma unroll
  for (int mf = 0; mf < NF; ++mf) {
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kNk; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float s = sacc[mf][n][hi * 2 + e] * scale_log2;
          sacc[mf][n][hi * 2 + e] = s;
          mx = fmaxf(mx, s);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[mf][hi], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = FastExp2(m_run[mf][hi] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kNk; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pv = FastExp2(sacc[mf][n][hi * 2 + e] - m_use);
          sacc[mf][n][hi * 2 + e] = pv;
          sum += pv;
        }
      }
      l_run[mf][hi] = l_run[mf][hi] * alpha + sum;
      m_run[mf][hi] = m_new;
      alphas[mf][hi] = alpha;
    }
  }
  // Rescale O only where a row's maximum moved: after the first tiles it rarely does.
  if (__any_sync(0xffffffffu, AnyNotOne<NF>(alphas))) {
#pragma unroll
    for (int mf = 0; mf < NF; ++mf) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        oacc[mf][n][0] *= alphas[mf][0];
        oacc[mf][n][1] *= alphas[mf][0];
        oacc[mf][n][2] *= alphas[mf][1];
        oacc[mf][n][3] *= alphas[mf][1];
      }
    }
  }
  // O += P V, P packed from the S accumulators into A fragments.
#pragma unroll
  for (int kk = 0; kk < kNk / 2; ++kk) {
    uint32_t a[NF][4];
#pragma unroll
    for (int mf = 0; mf < NF; ++mf) {
      a[mf][0] = PackBf16(sacc[mf][2 * kk][0], sacc[mf][2 * kk][1]);
      a[mf][1] = PackBf16(sacc[mf][2 * kk][2], sacc[mf][2 * kk][3]);
      a[mf][2] = PackBf16(sacc[mf][2 * kk + 1][0], sacc[mf][2 * kk + 1][1]);
      a[mf][3] = PackBf16(sacc[mf][2 * kk + 1][2], sacc[mf][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      const int mi = lane >> 3;
      const bf16* ptr =
          tV + (kk * 16 + (mi & 1) * 8 + (lane & 7)) * kStride + dp * 16 + (mi >> 1) * 8;
      uint32_t b0, b1, b2, b3;
      LdMatrixX4Trans(SmemAddr(ptr), b0, b1, b2, b3);
#pragma unroll
      for (int mf = 0; mf < NF; ++mf) {
        Mma(oacc[mf][2 * dp], a[mf], b0, b1);
        Mma(oacc[mf][2 * dp + 1], a[mf], b2, b3);
      }
    }
  }
}

template <int D, int WM>
__global__ void __launch_bounds__(kMmaThreads)
    MmaAttentionKernel(AttentionParams p, int splits, PartialOut ws) {
  using S = MmaShape<D, WM>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + S::kRows * S::kStride;      // two stages
  bf16* sV = sK + 2 * kMmaKeys * S::kStride;  // two stages
  float* sCos = reinterpret_cast<float*>(sV + 2 * kMmaKeys * S::kStride);
  float* sSin = sCos + D / 2;

  const AttnSequence seq = p.seqs[blockIdx.z];
  const int group = p.num_heads / p.num_kv_heads;
  const int rows_total = seq.q_len * group;
  // The sequence's rows, shared evenly by the fewest CTAs that hold them (whole 16-row
  // fragments each). Last row blocks first: under the causal mask they see the most keys, so the
  // grid ends with short CTAs instead of a tail of long ones.
  const int ctas = (rows_total + S::kRows - 1) / S::kRows;
  const int cta = gridDim.x - 1 - blockIdx.x;
  if (cta >= ctas) return;
  const int cta_rows = ((rows_total + ctas - 1) / ctas + 15) / 16 * 16;
  const int row0 = cta * cta_rows;
  if (row0 >= rows_total) return;
  const int rows = min(cta_rows, rows_total - row0);  // this CTA's rows
  const int frag_rows = (rows + 15) / 16 * 16;
  const int kvh = blockIdx.y / splits, split = blockIdx.y % splits;
  const int t_min = row0 / group;
  const int t_max = (row0 + rows - 1) / group;
  const KeyRange range = SplitRange(seq, split, splits, t_max, kMmaKeys);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tq = lane & 3;
  const int wrow = warp * 16 * WM;  // the warp's first row inside the CTA
  // Fragments of this warp that hold rows (warp-uniform; the others are skipped).
  const int frags = min(WM, max(0, (rows - wrow + 15) / 16));

  float oacc[WM][D / 8][4];
  float m_run[WM][2], l_run[WM][2];
#pragma unroll
  for (int mf = 0; mf < WM; ++mf) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      oacc[mf][n][0] = oacc[mf][n][1] = oacc[mf][n][2] = oacc[mf][n][3] = 0.f;
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      m_run[mf][hi] = -INFINITY;
      l_run[mf][hi] = 0.f;
    }
  }
  const float scale_log2 = p.scale * kLog2e;

  // Tiles stream through two shared-memory stages: the next tile's cp.async copies are in
  // flight while the current one is computed.
  Tile cur, nxt;
  int seg, seg_start;
  LocateKey(p, seq, range.begin, lane, seg, seg_start);
  bool have = FindTile(p, seq, range.begin, range.end, seg, seg_start, cur);
  if (have) IssueTileLoad<D>(p, cur, kvh, sK, sV, tid);
  CpAsyncCommit();
  int stage = 0;
  bool q_loaded = false;
  int q_offset = 0;  // rotation of the queries in sQ
  while (have) {
    const bool more = FindTile(p, seq, cur.k0 + cur.len, range.end, seg, seg_start, nxt);
    // The queries, when the segment's rotation differs from the one in sQ (no thread reads sQ or
    // the table any more: the previous iteration ended with a barrier).
    const bool new_q = !q_loaded || cur.rope_offset != q_offset;
    if (new_q) {
      if (cur.rope_offset != 0) {
        RopeTable<D>(p.inv_freq, cur.rope_offset, sCos, sSin, tid);
        __syncthreads();
      }
      IssueQLoad<D>(p, seq, row0, rows, frag_rows, group, kvh, sQ, tid);
      CpAsyncCommit();
    }
    if (more) {
      IssueTileLoad<D>(p, nxt, kvh, sK + (stage ^ 1) * kMmaKeys * S::kStride,
                       sV + (stage ^ 1) * kMmaKeys * S::kStride, tid);
    }
    CpAsyncCommit();
    CpAsyncWait<1>();  // all but the next tile's group: this thread's part of the tile and sQ
    if (new_q) {
      if (cur.rope_offset != 0) RotateQ<D>(sQ, frag_rows, sCos, sSin, tid);
      q_offset = cur.rope_offset;
      q_loaded = true;
    }
    __syncthreads();
    const bf16* tK = sK + stage * kMmaKeys * S::kStride;
    const bf16* tV = sV + stage * kMmaKeys * S::kStride;
    const int k0 = cur.k0, tile_len = cur.len;
    // A full tile whose last key every row of the CTA sees needs no mask.
    const bool unmasked = tile_len == kMmaKeys && k0 + kMmaKeys - 1 <= seq.causal_start + t_min;

    // A warp without rows only loads and waits.
    if (frags == WM) {
      AttendTile<D, WM, WM>(sQ, tK, tV, wrow, lane, unmasked, row0, group, seq.causal_start, k0,
                            tile_len, scale_log2, oacc, m_run, l_run);
    } else if (frags > 0) {  // WM == 2, one fragment
      AttendTile<D, WM, 1>(sQ, tK, tV, wrow, lane, unmasked, row0, group, seq.causal_start, k0,
                           tile_len, scale_log2, oacc, m_run, l_run);
    }
    __syncthreads();  // this stage and sQ may be rewritten by the next iteration
    cur = nxt;
    have = more;
    stage ^= 1;
  }
  CpAsyncWait<0>();

  // Finish: full row sums, then write.
#pragma unroll
  for (int mf = 0; mf < WM; ++mf) {
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float l = l_run[mf][hi];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int r = row0 + wrow + mf * 16 + g + hi * 8;
      if (r >= row0 + rows) continue;  // the next CTA's row, or none
      const int t = r / group, h = kvh * group + r % group;
      const float inv = l > 0.f ? 1.f / l : 0.f;
      if (splits == 1) {
        bf16* o = static_cast<bf16*>(seq.o) + t * p.o_stride + h * D;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          *reinterpret_cast<uint32_t*>(o + n * 8 + tq * 2) =
              PackBf16(oacc[mf][n][hi * 2] * inv, oacc[mf][n][hi * 2 + 1] * inv);
        }
      } else {
        const int64_t idx =
            ((static_cast<int64_t>(blockIdx.z) * splits + split) * p.max_q_len + t) * p.num_heads +
            h;
        float* o = ws.o + idx * D;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          *reinterpret_cast<float2*>(o + n * 8 + tq * 2) =
              make_float2(oacc[mf][n][hi * 2] * inv, oacc[mf][n][hi * 2 + 1] * inv);
        }
        if (tq == 0) {
          ws.ml[idx * 2] = l > 0.f ? m_run[mf][hi] : -INFINITY;
          ws.ml[idx * 2 + 1] = l;
        }
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
  const KeyRange range = SplitRange(seq, split, splits, t, kMmaKeys);
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
  int seg, seg_start, table_offset = 0;
  LocateKey(p, seq, range.begin, lane, seg, seg_start);
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
          kd = d < half ? kd * cs[i] - ToF(k[d + half]) * sn[i]
                        : kd * cs[i] + ToF(k[d - half]) * sn[i];
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

// Shared-memory floats for the combine kernel's split weights: whole 8-float groups (the
// padding is zero), so its unrolled loops may read a group as one vector.
__host__ __device__ constexpr int CombineWeightSlots(int splits) { return (splits + 7) / 8 * 8; }

// Merges the splits' partials of one (sequence, token, head). The splits' weights
// l_s * 2^(m_s - max m) go to shared memory first (dynamic, one float per split), so each
// thread's sum over the splits is independent loads, unrolled, instead of a chain of dependent
// ones.
template <typename T>
__global__ void CombineKernel(AttentionParams p, int splits, PartialOut ws) {
  extern __shared__ float sW[];  // [CombineWeightSlots(splits)], zero past `splits`
  const AttnSequence seq = p.seqs[blockIdx.z];
  const int t = blockIdx.y, h = blockIdx.x;
  if (t >= seq.q_len) return;
  const int D = p.head_dim;
  const int64_t first =
      (static_cast<int64_t>(blockIdx.z) * splits * p.max_q_len + t) * p.num_heads + h;
  const int64_t step = static_cast<int64_t>(p.max_q_len) * p.num_heads;  // from split s to s + 1
  if (threadIdx.x < 32) {
    float m = -INFINITY;
    for (int s = threadIdx.x; s < splits; s += 32) m = fmaxf(m, ws.ml[(first + s * step) * 2]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    for (int s = threadIdx.x; s < splits; s += 32) {
      const float ms = ws.ml[(first + s * step) * 2], ls = ws.ml[(first + s * step) * 2 + 1];
      sW[s] = ls > 0.f ? ls * exp2f(ms - m) : 0.f;
    }
    for (int s = splits + threadIdx.x; s < CombineWeightSlots(splits); s += 32) sW[s] = 0.f;
  }
  __syncthreads();
  float den = 0.f;
  for (int s = 0; s < splits; ++s) den += sW[s];
  const float inv = den > 0.f ? 1.f / den : 0.f;
  T* o = static_cast<T*>(seq.o) + t * p.o_stride + h * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0.f;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) {
      const float v = ws.o[(first + s * step) * D + d];
      num += sW[s] == 0.f ? 0.f : sW[s] * v;  // a split that saw no key contributes nothing
    }
    o[d] = FromF<T>(num * inv);
  }
}

// 16-row MMA fragments per warp: two once a kv head has more query rows than a one-fragment CTA
// holds (prefill, final blocks), so each K/V fragment read from shared memory feeds twice the
// MMAs; one for short queries (decode), where a larger tile would be mostly padding.
int MmaFragments(const AttentionParams& p) {
  const int group = p.num_heads / p.num_kv_heads;
  return p.max_q_len * group > MmaShape<128, 1>::kRows ? 2 : 1;
}

int MmaRowsPerCta(const AttentionParams& p) { return MmaFragments(p) * kMmaWarps * 16; }

template <int D, int WM>
cudaError_t LaunchMma(const AttentionParams& p, int splits, PartialOut ws, cudaStream_t stream) {
  using S = MmaShape<D, WM>;
  // Idempotent and host-only; set on every launch so no static state is shared across threads.
  cudaError_t e = cudaFuncSetAttribute(MmaAttentionKernel<D, WM>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
  if (e != cudaSuccess) return e;
  const int group = p.num_heads / p.num_kv_heads;
  dim3 grid((p.max_q_len * group + S::kRows - 1) / S::kRows, p.num_kv_heads * splits, p.num_seqs);
  MmaAttentionKernel<D, WM><<<grid, kMmaThreads, S::kSmemBytes, stream>>>(p, splits, ws);
  return cudaGetLastError();
}

template <int D>
cudaError_t LaunchMmaFor(const AttentionParams& p, int splits, PartialOut ws, cudaStream_t stream) {
  return MmaFragments(p) == 2 ? LaunchMma<D, 2>(p, splits, ws, stream)
                              : LaunchMma<D, 1>(p, splits, ws, stream);
}

// CTAs of one tensor-core kernel instance that fit on one multiprocessor at once (registers and
// shared memory decide); 2 if the occupancy query fails.
template <int D, int WM>
int MmaBlocksPerSm() {
  static const int n = [] {
    int blocks = 0;
    const int smem = MmaShape<D, WM>::kSmemBytes;
    if (cudaFuncSetAttribute(MmaAttentionKernel<D, WM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             smem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, MmaAttentionKernel<D, WM>,
                                                      kMmaThreads, smem) != cudaSuccess ||
        blocks < 1) {
      cudaGetLastError();  // clear a sticky-free error from the query
      return 2;
    }
    return blocks;
  }();
  return n;
}

int MmaBlocksPerSm(const AttentionParams& p) {
  const bool two = MmaFragments(p) == 2;
  if (p.head_dim == 64) return two ? MmaBlocksPerSm<64, 2>() : MmaBlocksPerSm<64, 1>();
  return two ? MmaBlocksPerSm<128, 2>() : MmaBlocksPerSm<128, 1>();
}

}  // namespace

int32_t AttentionSplits(const AttentionParams& p, int num_sms) {
  if (p.num_splits > 0) return p.num_splits;
  const int group = p.num_heads / p.num_kv_heads;
  const bool wgmma = WgmmaAttentionApplies(p);  // one 128-row CTA per multiprocessor
  const int rows = wgmma ? kWgmmaRowsPerCta : MmaRowsPerCta(p);
  const int64_t ctas =
      static_cast<int64_t>((p.max_q_len * group + rows - 1) / rows) * p.num_kv_heads * p.num_seqs;
  // Fill exactly one wave of resident CTAs: a second, partial wave would double the time of the
  // slowest split.
  const int64_t slots = static_cast<int64_t>(wgmma ? 1 : MmaBlocksPerSm(p)) * num_sms;
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
  if (!force_generic && WgmmaAttentionApplies(p)) {
    err = LaunchWgmmaAttention(p, splits, ws, stream);
  } else if (mma_ok && !force_generic) {
    err = p.head_dim == 64 ? LaunchMmaFor<64>(p, splits, ws, stream)
                           : LaunchMmaFor<128>(p, splits, ws, stream);
  } else {
    const int group = p.num_heads / p.num_kv_heads;
    dim3 grid((p.max_q_len * group + kGenericWarps - 1) / kGenericWarps, p.num_kv_heads * splits,
              p.num_seqs);
    KVBLOCK_DISPATCH_DTYPE(p.dtype, T,
                           GenericAttentionKernel<T>
                           <<<grid, kGenericWarps * 32, 0, stream>>>(p, splits, ws));
    err = cudaGetLastError();
  }
  if (err != cudaSuccess || splits <= 1) return err;
  dim3 grid(p.num_heads, p.max_q_len, p.num_seqs);
  const int threads = p.head_dim >= 128 ? 128 : (p.head_dim >= 64 ? 64 : 32);
  const size_t smem = static_cast<size_t>(CombineWeightSlots(splits)) * sizeof(float);
  KVBLOCK_DISPATCH_DTYPE(p.dtype, T,
                         CombineKernel<T><<<grid, threads, smem, stream>>>(p, splits, ws));
  return cudaGetLastError();
}

}  // namespace kvblock::cuda::internal
