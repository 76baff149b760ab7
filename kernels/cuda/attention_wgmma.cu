// Attention on Hopper's warpgroup MMA (wgmma, sm_90a only): bf16, head_dim 128, sequences over
// any segment table (cached blocks re-encoded, then their own keys, causal from causal_start),
// optionally split over the key axis. Design and entry points in
// kernels/cuda/internal/attention_wgmma.h.
//
// A CTA takes 128 query rows of one KV head (token-major (token, head in group) rows, as
// MmaAttentionKernel, so GQA heads share every K/V tile) and one split's key range, with three
// warpgroups, warp-specialised as in FlashAttention-3:
// - the producer warpgroup streams K and V tiles of up to 128 keys through two three-stage rings
//   in shared memory with cp.async; a tile never straddles a segment (a segment's last tile may
//   be partial). Per stage a "full" mbarrier (completed by the copies themselves,
//   cp.async.mbarrier.arrive.noinc, and by one plain arrival that publishes the tile's key range
//   and rope_offset in a small ring beside the tiles) and an "empty" one (the consumers' warps
//   arrive when their wgmma has read the stage). It gives most of its registers back
//   (setmaxnreg).
// - each consumer warpgroup writes its 64 query rows into the swizzled Q buffer that wgmma reads,
//   rotated by -rope_offset (q . R(o)k = R(-o)q . k): once at the start and again whenever a
//   tile's segment has another offset than the one in the buffer (then generic-proxy writes,
//   fence.proxy.async, a warpgroup barrier). Re-encoded K is never materialised.
// - two consumer warpgroups own 64 rows each: S = Q K^T by eight wgmma.m64n128k16 with Q and K
//   in shared memory (both K-major), the causal mask on tiles that cross the diagonal only, online
//   softmax on the accumulator registers (log2 domain), then O += P V by eight wgmma.m64n128k16
//   with P from registers (the S accumulator converted to bf16 pairs is the A-fragment layout)
//   and V from shared memory as an MN-major (transposed) B operand.
// Per iteration i a consumer issues S_i and O += P_{i-1} V_{i-1} together, then runs the softmax
// of S_i while the latter is still on the tensor cores; the two consumers take turns issuing
// (ping-pong through named barriers), so one's softmax runs under the other's MMAs. CTAs run
// longest-first. With key splits each row's normalized partial and (m, l) go to the PartialOut
// workspace that CombineKernel (attention.cu) merges, as MmaAttentionKernel's do.
//
// Shared-memory tiles are 128-byte rows (64 bf16 of the head dim; a 128-dim row is split into
// two halves stored one after the other) in 1024-byte groups of 8 whose 16-byte chunks are
// XOR-swizzled by row: the 128-byte-swizzle layout wgmma descriptors name, for Q and K as
// K-major operands and for V (rows = keys, 64 dims contiguous) as an MN-major one.
#include <cfloat>

#include "kernels/cuda/internal/attention_common.cuh"
#include "kernels/cuda/internal/attention_wgmma.h"
#include "kernels/cuda/internal/common.cuh"
#include "kernels/cuda/internal/tensor_core.cuh"

namespace kvblock::cuda::internal {
namespace {

constexpr int kD = 128;          // head_dim
constexpr int kRows = kWgmmaRowsPerCta;  // query rows per CTA: two consumer warpgroups of 64
constexpr int kKeys = 128;       // keys per K/V tile
constexpr int kWarpgroup = 128;  // threads
constexpr int kConsumers = 2;    // consumer warpgroups
constexpr int kThreads = (1 + kConsumers) * kWarpgroup;  // producer first
constexpr int kConsumerWarps = kConsumers * 4;           // arrivals that free a stage
constexpr int kProducerRegs = 56;  // setmaxnreg budgets: 128 x 56 + 256 x 224 <= 64K registers
constexpr int kConsumerRegs = 224;
constexpr int kStages = 3;          // depth of the K ring and of the V ring
constexpr int kHalfRowBytes = 128;  // 64 bf16: one swizzled row
constexpr int kQBytes = kRows * kD * 2;
constexpr int kTileBytes = kKeys * kD * 2;      // K or V of one tile
constexpr int kAlign = 1024;                    // swizzle atoms start 1024-byte aligned
constexpr int kBarrierBytes = 4 * kStages * 8;  // full/empty mbarriers of both rings

// What the producer tells the consumers about the tile in a K stage (written before the stage's
// full barrier completes, read before its empty barrier is arrived on).
struct TileInfo {
  int k0;           // global key index (within the sequence) of the tile's first key
  int len;          // keys in the tile, 0..kKeys (0: an empty key range, every score masked)
  int rope_offset;  // the segment's re-encoding offset
  int last;         // nonzero for the CTA's last tile
};
constexpr int kInfoBytes = kStages * sizeof(TileInfo);
constexpr int kSmemBytes = kAlign + kQBytes + 2 * kStages * kTileBytes + kBarrierBytes + kInfoBytes;
static_assert(kSmemBytes <= 227 * 1024, "exceeds sm_90's opt-in shared memory");
static_assert(kProducerRegs * kWarpgroup + kConsumerRegs * kConsumers * kWarpgroup <= 65536,
              "register budgets exceed the register file");
// Named barriers (0 is __syncthreads): consumer c's turn to issue MMAs is kTurnBarrier + c
// (bar.sync by c, bar.arrive by the other); its Q tile is ready at kQBarrier + c.
constexpr int kTurnBarrier = 1;
constexpr int kQBarrier = kTurnBarrier + kConsumers;

// Byte offset of 16-byte chunk `chunk` (0..7) of `row` in a swizzled [rows][64] bf16 region.
__device__ __forceinline__ uint32_t Swizzle(int row, int chunk) {
  return row * kHalfRowBytes + ((chunk ^ (row & 7)) << 4);
}

// Shared-memory matrix descriptor of a 128-byte-swizzled tile at `addr`: leading and stride
// byte offsets as the PTX ISA defines them (K-major: stride = 1024 between 8-row groups, the
// leading offset unused; MN-major: leading = between 64-element blocks of M/N, stride = between
// 8-row groups of K), swizzle mode 1 = 128 bytes.
__device__ __forceinline__ uint64_t Descriptor(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t{(addr & 0x3FFFF) >> 4} | (uint64_t{lbo >> 4} << 16) | (uint64_t{sbo >> 4} << 32) |
         (uint64_t{1} << 62);
}

// The 64 f32 accumulator registers of an m64n128 wgmma: their PTX operand list (%0..%63) and
// the matching read-write constraints.
#define KV_WGMMA_ACC_REGS                                                                      \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, " \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, " \
  "%56, %57, %58, %59, %60, %61, %62, %63"
#define KV_WGMMA_ACC_OPERANDS(d)                                                                  \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
      "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),  \
      "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),  \
      "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),  \
      "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (+)= A (64 x 16, descriptor a, K-major) * B (16 x 128, descriptor b, K-major); scale_d 0
// overwrites d.
__device__ __forceinline__ void WgmmaSS(float (&d)[64], uint64_t a, uint64_t b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" KV_WGMMA_ACC_REGS
      "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : KV_WGMMA_ACC_OPERANDS(d)
      : "l"(a), "l"(b), "r"(scale_d));
}
// d += A (64 x 16 bf16 from registers: the m16n8k16 A-fragment layout per warp) * B (16 x 128,
// descriptor b, MN-major).
__device__ __forceinline__ void WgmmaRS(float (&d)[64], const uint32_t* a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" KV_WGMMA_ACC_REGS
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : KV_WGMMA_ACC_OPERANDS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

#undef KV_WGMMA_ACC_OPERANDS
#undef KV_WGMMA_ACC_REGS

__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N of this warpgroup's committed wgmma groups are still pending.
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins registers that wgmma reads or writes asynchronously: the compiler sees the asm as a
// synchronous use, and must not move other accesses to them across the fence/wait points.
template <int N>
__device__ __forceinline__ void FenceRegs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void FenceRegs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
// Makes this thread's completed cp.async writes visible to the async proxy (wgmma's reads).
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// mbarriers (shared-memory addresses). A barrier's phase completes when its expected arrivals
// have arrived; waiters name the parity of the phase they wait for.
__device__ __forceinline__ void MbarInit(uint32_t bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives on `bar` once all of this thread's earlier cp.async copies have landed (counted in the
// barrier's expected arrivals: .noinc).
__device__ __forceinline__ void MbarArriveOnCopies(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void NamedBarrierSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void NamedBarrierArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Copies rows [k0, k0 + kKeys) of one KV head's K or V (zeros past `end`) into a stage
// ([half][key][64], swizzled) with the producer warpgroup's threads (`t` in 0..127). Thread t
// copies 16-byte chunk t % 16 of keys t / 16 + 8j: as keys 8 apart share their swizzle phase,
// its j-th copy is at fixed strides from the first (8 rows in shared memory, 8 keys in global),
// so each copy costs a compare and the cp.async.
__device__ __forceinline__ void IssueTileLoad(const bf16* src, int k0, int end, uint32_t dst,
                                              int t) {
  constexpr int kKeyStep = kWarpgroup / (kD / 8);  // 8 keys between a thread's copies
  const int key0 = t / (kD / 8), c = t % (kD / 8);
  const uint32_t dst0 = dst + (c >> 3) * (kKeys * kHalfRowBytes) + Swizzle(key0, c & 7);
  const bf16* src0 = src + int64_t{k0 + key0} * kD + c * 8;
#pragma unroll
  for (int j = 0; j < kKeys / kKeyStep; ++j) {
    const bool valid = k0 + key0 + j * kKeyStep < end;
    CpAsync16(dst0 + j * kKeyStep * kHalfRowBytes, valid ? src0 + j * kKeyStep * kD : src, valid);
  }
}
static_assert(kWarpgroup % (kD / 8) == 0 && (kWarpgroup / (kD / 8)) % 8 == 0 &&
                  kKeys % (kWarpgroup / (kD / 8)) == 0,
              "IssueTileLoad: a thread's keys must share the swizzle phase and tile the keys");

// A consumer thread's share of its warpgroup's 64 query rows (CTA rows wg*64.., zeros past
// `rows`), unrotated, kept in registers for the CTA's life: dims 8c..8c+7 (lo) and 64+8c..
// (hi, its RoPE rotate-half partners) of rows t / 8 + 16j, c = t % 8, t in 0..127. 32 registers:
// ptxas spills 36 bytes beside them, and block mode at 32K runs 0.093 ms instead of 0.107 ms
// with the rows re-read from L2 at every segment change (docs/benchmarks.md).
struct QRows {
  static constexpr int kPer = 64 / (kWarpgroup / 8);  // rows per thread
  uint4 lo[kPer], hi[kPer];

  __device__ __forceinline__ void Load(const AttentionParams& p, const bf16* q, int row0, int rows,
                                       int group, int kvh, int wg, int t) {
    const int c = t % 8;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int r = wg * 64 + t / 8 + 16 * j;
      lo[j] = hi[j] = make_uint4(0, 0, 0, 0);
      if (r < rows) {
        const int gr = row0 + r;
        const bf16* src = q + int64_t{gr / group} * p.q_stride + (kvh * group + gr % group) * kD;
        lo[j] = *reinterpret_cast<const uint4*>(src + c * 8);
        hi[j] = *reinterpret_cast<const uint4*>(src + kD / 2 + c * 8);
      }
    }
  }

  // Writes the rows rotated by -offset into the warpgroup's part of sQ ([half][64 rows][64],
  // swizzled) with generic-proxy stores: the caller fences and synchronises before wgmma reads.
  __device__ __forceinline__ void Store(const float* inv_freq, int t, uint32_t sQ,
                                        int offset) const {
    const int c = t % 8;
    float cs[8], sn[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      cs[e] = 1.f, sn[e] = 0.f;
      if (offset != 0) RopeCosSin(offset, inv_freq[c * 8 + e], &cs[e], &sn[e]);
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      uint4 l = lo[j], h = hi[j];
      if (offset != 0) {
        bf16* l8 = reinterpret_cast<bf16*>(&l);
        bf16* h8 = reinterpret_cast<bf16*>(&h);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float x0 = __bfloat162float(l8[e]), x1 = __bfloat162float(h8[e]);
          l8[e] = __float2bfloat16_rn(x0 * cs[e] + x1 * sn[e]);
          h8[e] = __float2bfloat16_rn(x1 * cs[e] - x0 * sn[e]);
        }
      }
      const uint32_t dst = sQ + Swizzle(t / 8 + 16 * j, c);
      asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(l.x), "r"(l.y),
                   "r"(l.z), "r"(l.w)
                   : "memory");
      asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst + 64 * kHalfRowBytes),
                   "r"(h.x), "r"(h.y), "r"(h.z), "r"(h.w)
                   : "memory");
    }
  }
};

// A descriptor of the tile at addr + offset is the one at addr plus offset / 16: both are 16-byte
// multiples and every shared address is below 2^18, so the 14-bit address field never carries.
// The MMA issue loops below add constants to one descriptor instead of building each anew.

// S = Q K^T for a warpgroup's 64 rows (Q at qa) and the K tile at sK: k-step kk covers dims
// 16kk..16kk+15, in half kk/4 at byte 32 (kk%4) of each swizzled row. Issues one commit group.
__device__ __forceinline__ void IssueQK(float (&s)[64], uint32_t qa, uint32_t sK) {
  const uint64_t dq = Descriptor(qa, 16, 1024), dk = Descriptor(sK, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    const uint32_t in_half = (kk & 3) * 32;
    WgmmaSS(s, dq + (((kk >> 2) * (64 * kHalfRowBytes) + in_half) >> 4),
            dk + (((kk >> 2) * (kKeys * kHalfRowBytes) + in_half) >> 4), kk > 0);
  }
  WgmmaCommit();
}
// O += P V for the V tile at sV: k-step kk covers keys 16kk.. (two 8-row groups, 1024 bytes
// apart); N = 128 dims as two 64-dim halves kKeys rows apart. Issues one commit group.
__device__ __forceinline__ void IssuePV(float (&o)[64], const uint32_t (&pa)[kKeys / 16][4],
                                        uint32_t sV) {
  const uint64_t dv = Descriptor(sV, kKeys * kHalfRowBytes, 1024);
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) WgmmaRS(o, pa[kk], dv + ((kk * 16 * kHalfRowBytes) >> 4));
  WgmmaCommit();
}
__device__ __forceinline__ void FenceP(uint32_t (&pa)[kKeys / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) FenceRegs(pa[kk]);
}

// The online softmax of one thread's two accumulator rows (r_lo and r_lo + 8 of the CTA) over
// 128-key score tiles, in the log2 domain; each row's 128 columns are spread over 4 lanes.
struct OnlineSoftmax {
  const AttnSequence& seq;
  float scale_log2;
  int t_min;    // first token of the CTA
  int last[2];  // the last key each of the two rows sees
  int tq;       // lane % 4: the row's column pairs this thread holds
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  __device__ OnlineSoftmax(const AttnSequence& s, float scale, int tmin, int r_lo, int row0,
                           int group, int lane)
      : seq(s), scale_log2(scale), t_min(tmin), tq(lane & 3) {
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      last[hi] = min(seq.num_keys - 1, seq.causal_start + (row0 + r_lo + hi * 8) / group);
    }
  }

  // Turns the raw scores of the tile's keys [k0, k0 + len) (columns past len masked) into
  // unnormalised probabilities (masked keys 0), updates the running maxima and sums, and returns
  // in alpha the factor O's rows must be scaled by before this tile's P V is added.
  __device__ __forceinline__ void Tile(float (&s)[64], int k0, int len, float (&alpha)[2]) {
    // A full tile that every row of the CTA sees entirely needs no mask.
    const bool masked = len < kKeys || k0 + kKeys - 1 > seq.causal_start + t_min;
    if (masked) {
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const int limit = min(len, last[hi] - k0 + 1);  // columns this row sees
#pragma unroll
        for (int b = 0; b < kKeys / 8; ++b) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (b * 8 + tq * 2 + e >= limit) s[b * 4 + hi * 2 + e] = -INFINITY;
          }
        }
      }
    }
    // Maxima and sums over kParts interleaved partial results: short dependency chains.
    constexpr int kParts = 4;
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float mx[kParts];
#pragma unroll
      for (int j = 0; j < kParts; ++j) mx[j] = -INFINITY;
#pragma unroll
      for (int b = 0; b < kKeys / 8; ++b) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& m = mx[(b * 2 + e) % kParts];
          m = fmaxf(m, s[b * 4 + hi * 2 + e]);
        }
      }
      float row_max = fmaxf(fmaxf(mx[0], mx[1]), fmaxf(mx[2], mx[3]));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
      // scale_log2 > 0, so the scaled maximum is the maximum of the scaled scores.
      const float m_new = fmaxf(m_run[hi], row_max * scale_log2);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      alpha[hi] = FastExp2(m_run[hi] - m_use);
      float sum[kParts] = {};
#pragma unroll
      for (int b = 0; b < kKeys / 8; ++b) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[b * 4 + hi * 2 + e];
          x = FastExp2(fmaf(x, scale_log2, -m_use));  // masked: 2^-inf = 0
          sum[(b * 2 + e) % kParts] += x;
        }
      }
      l_run[hi] = l_run[hi] * alpha[hi] + ((sum[0] + sum[1]) + (sum[2] + sum[3]));
      m_run[hi] = m_new;
    }
  }
};

// P as bf16 A fragments: k-step kk (keys 16kk..) is S's 8-column blocks 2kk and 2kk + 1.
__device__ __forceinline__ void ToBf16Fragments(const float (&s)[64],
                                                uint32_t (&pa)[kKeys / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    pa[kk][0] = PackBf16(s[8 * kk], s[8 * kk + 1]);
    pa[kk][1] = PackBf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = PackBf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = PackBf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// Rescales the O rows whose running maximum moved (warp-uniform branch).
__device__ __forceinline__ void RescaleO(float (&o)[64], const float (&alpha)[2]) {
  if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
    for (int b = 0; b < kD / 8; ++b) {
      o[b * 4] *= alpha[0];
      o[b * 4 + 1] *= alpha[0];
      o[b * 4 + 2] *= alpha[1];
      o[b * 4 + 3] *= alpha[1];
    }
  }
}

// The K and V rings: stage s of K at sK0 + s tiles, of V at sV0 + s tiles; mbarriers full_k,
// empty_k, full_v, empty_v of stage s at bars + (ring * kStages + s) * 8; the K stage's TileInfo
// at info[s]. Tile j uses stage j % kStages in phase (j / kStages) & 1.
struct Rings {
  uint32_t sK0, sV0, bars;
  TileInfo* info;
  __device__ TileInfo& Info(int j) const { return info[j % kStages]; }
  __device__ uint32_t K(int j) const { return sK0 + (j % kStages) * kTileBytes; }
  __device__ uint32_t V(int j) const { return sV0 + (j % kStages) * kTileBytes; }
  __device__ uint32_t Bar(int ring, int j) const {
    return bars + (ring * kStages + j % kStages) * 8;
  }
  __device__ uint32_t FullK(int j) const { return Bar(0, j); }
  __device__ uint32_t EmptyK(int j) const { return Bar(1, j); }
  __device__ uint32_t FullV(int j) const { return Bar(2, j); }
  __device__ uint32_t EmptyV(int j) const { return Bar(3, j); }
  __device__ static uint32_t Parity(int j) { return (j / kStages) & 1; }
};

// The producer warpgroup: the tiles of keys [range.begin, range.end) of KV head kvh (at least
// one: an empty range gives one tile of no keys), each tile's K then V into their stages once the
// consumers freed them (a fresh barrier counts as freed: the wait for parity 1 passes at once);
// thread 0 publishes each tile's TileInfo with its extra arrival on the full K barrier.
__device__ __forceinline__ void ProduceTiles(const AttentionParams& p, const AttnSequence& seq,
                                             const Rings& rings, KeyRange range, int kvh, int t) {
  int seg = seq.seg_begin, seg_start = 0;
  if (range.begin > 0) LocateKey(p, seq, range.begin, t & 31, seg, seg_start);
  const bf16* none = static_cast<const bf16*>(seq.q);  // source of copies that read nothing
  AttnSegment sg;  // p.segs[loaded]
  int loaded = -1;
  int k0 = range.begin;
  for (int j = 0;; ++j) {
    for (; seg < seq.seg_end; ++seg) {  // the segment holding k0
      if (seg != loaded) sg = p.segs[seg], loaded = seg;
      if (k0 - seg_start < sg.num_tokens) break;
      seg_start += sg.num_tokens;
    }
    const bool any = k0 < range.end && seg < seq.seg_end;  // past the end: a malformed table
    TileInfo info{k0, 0, 0, 1};
    const bf16 *k = none, *v = none;
    int in_seg = 0;
    if (any) {
      in_seg = k0 - seg_start;
      info.len = min(kKeys, min(range.end - k0, sg.num_tokens - in_seg));
      info.rope_offset = sg.rope_offset;
      info.last = k0 + info.len >= range.end;
      k = static_cast<const bf16*>(sg.k) + kvh * sg.head_stride;
      v = static_cast<const bf16*>(sg.v) + kvh * sg.head_stride;
    }
    const uint32_t free_parity = Rings::Parity(j) ^ 1;
    MbarWait(rings.EmptyK(j), free_parity);
    IssueTileLoad(k, in_seg, in_seg + info.len, rings.K(j), t);
    if (t == 0) {
      rings.Info(j) = info;
      MbarArrive(rings.FullK(j));  // release: the consumers' wait acquires the info
    }
    MbarArriveOnCopies(rings.FullK(j));
    MbarWait(rings.EmptyV(j), free_parity);
    IssueTileLoad(v, in_seg, in_seg + info.len, rings.V(j), t);
    MbarArriveOnCopies(rings.FullV(j));
    if (info.last) break;
    k0 += info.len;
  }
  CpAsyncWait<0>();  // no copy outlives its thread
}

// Waits until tile j of a ring (full barrier `bar`) has landed and makes the copies (generic
// proxy writes) visible to this thread's wgmma reads (async proxy).
__device__ __forceinline__ void WaitTile(uint32_t bar, int j) {
  MbarWait(bar, Rings::Parity(j));
  FenceProxyAsync();
}
// One arrival per consumer warp frees a stage once the warp's wgmma reads of it completed.
__device__ __forceinline__ void ReleaseTile(uint32_t bar, int lane) {
  if (lane == 0) MbarArrive(bar);
}

// Makes consumer warpgroup wg's Q rows rotated by -offset the ones its wgmma reads at qa (none
// of its wgmma may be pending).
__device__ __forceinline__ void PrepareQ(const QRows& qr, const float* inv_freq, int wg, int t,
                                         uint32_t qa, int offset) {
  qr.Store(inv_freq, t, qa, offset);
  FenceProxyAsync();
  NamedBarrierSync(kQBarrier + wg, kWarpgroup);
}

__global__ void __launch_bounds__(kThreads, 1)
    WgmmaAttentionKernel(AttentionParams p, int splits, PartialOut ws) {
  extern __shared__ unsigned char smem[];
  const uint32_t raw = SmemAddr(smem);
  const uint32_t pad = (kAlign - raw % kAlign) % kAlign;
  const uint32_t sQ = raw + pad;
  Rings rings;
  rings.sK0 = sQ + kQBytes;
  rings.sV0 = rings.sK0 + kStages * kTileBytes;
  rings.bars = rings.sV0 + kStages * kTileBytes;
  rings.info = reinterpret_cast<TileInfo*>(smem + pad + kQBytes + 2 * kStages * kTileBytes +
                                           kBarrierBytes);

  const AttnSequence seq = p.seqs[blockIdx.z];
  const int group = p.num_heads / p.num_kv_heads;
  const int rows_total = seq.q_len * group;
  // Last row blocks first: under the causal mask they see the most keys.
  const int cta = gridDim.x - 1 - blockIdx.x;
  const int row0 = cta * kRows;
  if (row0 >= rows_total) return;
  const int rows = min(kRows, rows_total - row0);
  const int kvh = blockIdx.y / splits, split = blockIdx.y % splits;
  const int t_min = row0 / group, t_max = (row0 + rows - 1) / group;

  if (threadIdx.x < kStages) {
    MbarInit(rings.FullK(threadIdx.x), kWarpgroup + 1);  // the copies and the TileInfo
    MbarInit(rings.FullV(threadIdx.x), kWarpgroup);
    MbarInit(rings.EmptyK(threadIdx.x), kConsumerWarps);
    MbarInit(rings.EmptyV(threadIdx.x), kConsumerWarps);
  }
  __syncthreads();

  const int t = threadIdx.x % kWarpgroup, lane = threadIdx.x & 31;
  if (threadIdx.x < kWarpgroup) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    ProduceTiles(p, seq, rings, SplitRange(seq, split, splits, t_max, kKeys), kvh, t);
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
  const int wg = threadIdx.x / kWarpgroup - 1;  // consumer 0 or 1
  const int other = wg ^ 1;
  const uint32_t qa = sQ + wg * (64 * kD * 2);
  QRows qr;  // loads in flight while tile 0 arrives
  qr.Load(p, static_cast<const bf16*>(seq.q), row0, rows, group, kvh, wg, t);

  // This thread's two accumulator rows (CTA-local): r_lo and r_lo + 8.
  const int r_lo = wg * 64 + ((t >> 5) & 3) * 16 + (lane >> 2);
  const int tq = lane & 3;

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  OnlineSoftmax softmax(seq, p.scale * kLog2e, t_min, r_lo, row0, group, lane);
  float alpha[2];              // O's pending rescale, applied before the next O += P V
  uint32_t pa[kKeys / 16][4];  // P of the previous tile

  float s[64];
  // Tile 0: the queries at its offset, then S alone.
  WaitTile(rings.FullK(0), 0);
  TileInfo tile = rings.Info(0);
  int q_offset = tile.rope_offset;  // the rotation of this consumer's rows in sQ
  PrepareQ(qr, p.inv_freq, wg, t, qa, q_offset);
  // Consumer 0 issues first.
  if (wg == 1) NamedBarrierArrive(kTurnBarrier + 0, 2 * kWarpgroup);
  NamedBarrierSync(kTurnBarrier + wg, 2 * kWarpgroup);  // this consumer's turn
  FenceRegs(s);
  WgmmaFence();
  IssueQK(s, qa, rings.K(0));
  NamedBarrierArrive(kTurnBarrier + other, 2 * kWarpgroup);  // the other's turn
  WgmmaWait<0>();
  FenceRegs(s);
  ReleaseTile(rings.EmptyK(0), lane);
  softmax.Tile(s, tile.k0, tile.len, alpha);
  ToBf16Fragments(s, pa);
  // Tile i: S_i and O += P_{i-1} V_{i-1}, the softmax of S_i under the latter. Each iteration
  // ends with none of this consumer's wgmma pending, so sQ may be rewritten at its start.
  int i = 1;
  for (; !tile.last; ++i) {
    WaitTile(rings.FullK(i), i);
    tile = rings.Info(i);
    if (tile.rope_offset != q_offset) {  // a segment at another offset: rotate the queries anew
      q_offset = tile.rope_offset;
      PrepareQ(qr, p.inv_freq, wg, t, qa, q_offset);
    }
    WaitTile(rings.FullV(i - 1), i - 1);
    RescaleO(o, alpha);  // before taking the turn: the other consumer's MMAs wait less
    FenceRegs(o);
    FenceP(pa);
    NamedBarrierSync(kTurnBarrier + wg, 2 * kWarpgroup);
    FenceRegs(s);
    WgmmaFence();
    IssueQK(s, qa, rings.K(i));
    IssuePV(o, pa, rings.V(i - 1));
    NamedBarrierArrive(kTurnBarrier + other, 2 * kWarpgroup);
    WgmmaWait<1>();  // S_i done; O += P_{i-1} V_{i-1} may still run
    FenceRegs(s);
    ReleaseTile(rings.EmptyK(i), lane);
    softmax.Tile(s, tile.k0, tile.len, alpha);
    WgmmaWait<0>();  // O += P_{i-1} V_{i-1} done: O and pa are free, and so is V_{i-1}
    FenceRegs(o);
    FenceP(pa);
    ReleaseTile(rings.EmptyV(i - 1), lane);
    ToBf16Fragments(s, pa);
  }
  const int num_tiles = i;
  // O += P V of the last tile, in turn (consumer 1 goes last and hands no turn back, so every
  // bar.sync meets exactly its arrivals).
  WaitTile(rings.FullV(num_tiles - 1), num_tiles - 1);
  RescaleO(o, alpha);
  FenceRegs(o);
  FenceP(pa);
  NamedBarrierSync(kTurnBarrier + wg, 2 * kWarpgroup);
  WgmmaFence();
  IssuePV(o, pa, rings.V(num_tiles - 1));
  if (wg == 0) NamedBarrierArrive(kTurnBarrier + other, 2 * kWarpgroup);
  WgmmaWait<0>();
  FenceRegs(o);

  // Full row sums, then the normalized rows this CTA owns: the output, or with key splits the
  // split's partial and (m, l) for CombineKernel.
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    float l = softmax.l_run[hi];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int r = r_lo + hi * 8;
    if (r >= rows) continue;
    const int gr = row0 + r, token = gr / group, h = kvh * group + gr % group;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (splits == 1) {
      bf16* out = static_cast<bf16*>(seq.o) + int64_t{token} * p.o_stride + h * kD;
#pragma unroll
      for (int b = 0; b < kD / 8; ++b) {
        *reinterpret_cast<uint32_t*>(out + b * 8 + tq * 2) =
            PackBf16(o[b * 4 + hi * 2] * inv, o[b * 4 + hi * 2 + 1] * inv);
      }
    } else {
      const int64_t idx =
          ((int64_t{blockIdx.z} * splits + split) * p.max_q_len + token) * p.num_heads + h;
      float* out = ws.o + idx * kD;
#pragma unroll
      for (int b = 0; b < kD / 8; ++b) {
        *reinterpret_cast<float2*>(out + b * 8 + tq * 2) =
            make_float2(o[b * 4 + hi * 2] * inv, o[b * 4 + hi * 2 + 1] * inv);
      }
      if (tq == 0) {
        ws.ml[idx * 2] = l > 0.f ? softmax.m_run[hi] : -INFINITY;
        ws.ml[idx * 2 + 1] = l;
      }
    }
  }
}

}  // namespace

bool WgmmaAttentionRunnable() {
  static const bool ok = [] {
    int device = 0, max_smem = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
            cudaSuccess ||
        max_smem < kSmemBytes ||
        cudaFuncSetAttribute(WgmmaAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kSmemBytes) != cudaSuccess) {
      cudaGetLastError();  // not built for this device (sm_90a only), or too little memory
      return false;
    }
    return true;
  }();
  return ok;
}

bool WgmmaAttentionApplies(const AttentionParams& p) {
  // Decode-like launches (fewer rows than one CTA holds) stay on the mma.sync kernel, whose
  // 16-row fragments waste less.
  const int64_t rows = int64_t{p.max_q_len} * (p.num_heads / p.num_kv_heads);
  return rows >= kRows && p.scale > 0.f && p.dtype == DType::kBF16 && p.head_dim == kD &&
         p.q_stride % 8 == 0 && p.o_stride % 8 == 0 && WgmmaAttentionRunnable();
}

cudaError_t LaunchWgmmaAttention(const AttentionParams& p, int32_t splits, PartialOut ws,
                                 cudaStream_t stream) {
  // Idempotent and host-only; set on every launch so no static state is shared across threads.
  cudaError_t e = cudaFuncSetAttribute(WgmmaAttentionKernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (e != cudaSuccess) return e;
  const int group = p.num_heads / p.num_kv_heads;
  const dim3 grid((p.max_q_len * group + kRows - 1) / kRows, p.num_kv_heads * splits, p.num_seqs);
  WgmmaAttentionKernel<<<grid, kThreads, kSmemBytes, stream>>>(p, splits, ws);
  return cudaGetLastError();
}

}  // namespace kvblock::cuda::internal
