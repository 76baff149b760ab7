// Weight-streaming bf16 GEMM for few rows (design in kernels/cuda/internal/skinny_gemm.h).
//
// The product is computed transposed, y^T = W * x^T, so W's rows fill the 16-row A operand of
// mma.sync.m16n8k16 and x's (up to 64) rows are the 8-column B tiles. Work unit = one W tile of
// kBN rows x kBK columns (16 KB); the units are ordered n-tile-major (all k-tiles of n-tile 0,
// then n-tile 1, ...) and CTA g of G takes units [g*U/G, (g+1)*U/G). A CTA therefore holds at
// most two partial n-tiles (its first and last); the tiles in between are complete and written
// directly. Loads for the next units (a pipeline as deep as shared memory allows) are always in
// flight, across n-tile boundaries; the loop keeps (n-tile, k-tile) cursors (no 64-bit divisions
// per unit).
//
// 8 warps: 4 along n (32 W rows each) x 2 along k (32 columns of each 64-column stage each); the
// two k halves are added in shared memory when an n-tile's segment ends. Shared-memory tiles are
// 128-byte rows whose 16-byte chunks are XOR-swizzled by row, so ldmatrix is conflict-free.
#include "kernels/cuda/internal/common.cuh"
#include "kernels/cuda/internal/skinny_gemm.h"

namespace kvblock::cuda::internal {
namespace {

constexpr int kBN = 128;            // W rows (outputs) per tile
constexpr int kBK = 64;             // k per pipeline stage: one 128-byte row per W row
constexpr int kThreads = 256;
constexpr int kRedStride = kBN + 4;  // f32 row stride of the reduction tile (no bank conflicts)
constexpr int kSlotFloats = kSkinnyMaxM * kBN;  // one split-tile partial in the workspace
constexpr int kMaxTiles = 8192;                 // n-tiles with counters: n <= 1,048,576
constexpr int kSmemLimit = 227 * 1024;          // opt-in shared memory per CTA (sm_90)

// Shared-memory plan of the instantiation for rows padded to MT * 8: one CTA per SM, with as
// many pipeline stages as fit beside the reduction tile. Only bytes in flight keep HBM busy, so
// the pipeline takes all the space (8 stages = 128 KB of W at MT = 8, 13 stages at MT = 1).
template <int MT>
struct Plan {
  static constexpr int kWBytes = kBN * kBK * 2;
  static constexpr int kStageBytes = kWBytes + MT * 8 * kBK * 2;
  static constexpr int kRedBytes = MT * 8 * kRedStride * 4;
  static constexpr int kStages = (kSmemLimit - 256 - kRedBytes) / kStageBytes;
  static constexpr int kSmem = kStages * kStageBytes + kRedBytes;
  static constexpr int kPerThread = MT * 8 * kBN / kThreads;  // tile elements per thread
  static_assert(kStages >= 3 && kPerThread * kThreads == MT * 8 * kBN);
};

struct Params {
  const bf16* x;
  const bf16* w;
  void* y;
  float* partials;     // [grid][2][kSkinnyMaxM][kBN]
  unsigned* counters;  // [kMaxTiles], zero between launches
  int64_t ldx, ldy;
  int64_t units;  // n_tiles * k_tiles
  int m, n, k;
  int k_tiles;
  int grid;
  float beta;
};

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; `valid` false writes zeros and reads nothing.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void Ldmatrix4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void Ldmatrix2(uint32_t addr, uint32_t& r0, uint32_t& r1) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr));
}
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Byte offset of 16-byte chunk `chunk` (8 elements) of `row` in a [rows][kBK] bf16 tile.
__device__ __forceinline__ uint32_t Swizzle(int row, int chunk) {
  return row * (kBK * 2) + ((chunk ^ (row & 7)) << 4);
}

// First unit of CTA g (g = grid gives the end of the last one).
__device__ __forceinline__ int64_t UnitBegin(const Params& p, int64_t g) {
  return g * p.units / p.grid;
}
// The CTA whose range holds unit u: the largest g with UnitBegin(g) <= u.
__device__ __forceinline__ int OwnerOf(const Params& p, int64_t u) {
  return static_cast<int>(((u + 1) * p.grid - 1) / p.units);
}
// Which of CTA g's two partial slots holds its share of the tile starting at unit `tile_begin`:
// 0 if the CTA's range starts inside that tile (its first segment), 1 otherwise (its last).
__device__ __forceinline__ float* Slot(const Params& p, int g, int64_t tile_begin) {
  const int which = UnitBegin(p, g) < tile_begin ? 1 : 0;
  return p.partials + (int64_t{g} * 2 + which) * kSlotFloats;
}

// Issues the copies of unit (tile, kt): W rows tile*kBN.., x rows 0..MT*8, columns kt*kBK...
template <int MT>
__device__ __forceinline__ void LoadUnit(const Params& p, int tile, int kt, uint32_t w_s,
                                         uint32_t x_s) {
  const int k0 = kt * kBK;
  const int n0 = tile * kBN;
#pragma unroll
  for (int it = 0; it < kBN * 8 / kThreads; ++it) {
    const int i = threadIdx.x + it * kThreads, r = i >> 3, c = i & 7;
    const int n = n0 + r, k = k0 + c * 8;
    const bool ok = n < p.n && k < p.k;
    CpAsync16(w_s + Swizzle(r, c), ok ? p.w + int64_t{n} * p.k + k : p.w, ok);
  }
  for (int i = threadIdx.x; i < MT * 8 * 8; i += kThreads) {
    const int r = i >> 3, c = i & 7;
    const int k = k0 + c * 8;
    const bool ok = r < p.m && k < p.k;
    CpAsync16(x_s + Swizzle(r, c), ok ? p.x + r * p.ldx + k : p.x, ok);
  }
}

// acc[i][j] += W rows (warp's 32, as two 16-row A tiles i) x x rows (8-row B tiles j) over this
// warp's 32 columns of the stage.
template <int MT>
__device__ __forceinline__ void ComputeStage(uint32_t w_s, uint32_t x_s, int wn, int wk, int lane,
                                             float (&acc)[2][MT][4]) {
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    const int chunk = (wk * 2 + kk) * 2;  // first 8-column chunk of this 16-column slice
    uint32_t a[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      Ldmatrix4(w_s + Swizzle(wn * 32 + i * 16 + (lane & 15), chunk + (lane >> 4)), a[i]);
    }
    if constexpr (MT == 1) {
      uint32_t b0, b1;
      Ldmatrix2(x_s + Swizzle(lane & 7, chunk + ((lane >> 3) & 1)), b0, b1);
#pragma unroll
      for (int i = 0; i < 2; ++i) Mma(acc[i][0], a[i], b0, b1);
    } else {
#pragma unroll
      for (int j = 0; j < MT; j += 2) {
        uint32_t b[4];
        Ldmatrix4(x_s + Swizzle(j * 8 + ((lane >> 4) << 3) + (lane & 7), chunk + ((lane >> 3) & 1)),
                  b);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          Mma(acc[i][j], a[i], b[0], b[1]);
          Mma(acc[i][j + 1], a[i], b[2], b[3]);
        }
      }
    }
  }
}

// Tile element e (0 <= e < kPerThread) of this thread: row idx / kBN, column idx % kBN.
__device__ __forceinline__ int TileIndex(int e) { return threadIdx.x + e * kThreads; }

// y[r][n0 + c] = v (+ beta * y) for this thread's elements with r < m, n0 + c < n.
template <int MT, typename OutT>
__device__ __forceinline__ void StoreTile(const Params& p, int n0,
                                          const float (&v)[Plan<MT>::kPerThread]) {
  OutT* y = static_cast<OutT*>(p.y);
#pragma unroll
  for (int e = 0; e < Plan<MT>::kPerThread; ++e) {
    const int r = TileIndex(e) / kBN, c = TileIndex(e) % kBN;
    if (r >= p.m || n0 + c >= p.n) continue;
    OutT* dst = y + r * p.ldy + n0 + c;
    float out = v[e];
    if (p.beta != 0.f) out += p.beta * ToF(*dst);
    *dst = FromF<OutT>(out);
  }
}

// Ends this CTA's segment of n-tile `tile` (the k-tiles since the last segment ended): adds the
// two k-halves of the accumulators in shared memory (and zeroes them), then writes the tile, or
// stores it as a partial and, if this CTA is the tile's last to arrive, sums all the tile's
// partials in CTA order and writes it.
template <int MT, typename OutT>
__device__ __forceinline__ void FinishSegment(const Params& p, int tile, int wn, int wk, int lane,
                                              float (&acc)[2][MT][4], float* red) {
  constexpr int kPer = Plan<MT>::kPerThread;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (wk == half) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < MT; ++j) {
          const int n = wn * 32 + i * 16 + (lane >> 2), m = j * 8 + 2 * (lane & 3);
          float* r0 = red + m * kRedStride + n;
          float* r1 = r0 + kRedStride;
          if (half == 0) {
            r0[0] = acc[i][j][0], r1[0] = acc[i][j][1], r0[8] = acc[i][j][2], r1[8] = acc[i][j][3];
          } else {
            r0[0] += acc[i][j][0], r1[0] += acc[i][j][1], r0[8] += acc[i][j][2],
                r1[8] += acc[i][j][3];
          }
          acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
        }
      }
    }
    __syncthreads();
  }
  float v[kPer];
#pragma unroll
  for (int e = 0; e < kPer; ++e) v[e] = red[(TileIndex(e) / kBN) * kRedStride + TileIndex(e) % kBN];
  const int64_t tile_begin = int64_t{tile} * p.k_tiles;
  const int n0 = tile * kBN;
  const int first = OwnerOf(p, tile_begin), last = OwnerOf(p, tile_begin + p.k_tiles - 1);
  if (first == last) {
    StoreTile<MT, OutT>(p, n0, v);
  } else {
    float* slot = Slot(p, blockIdx.x, tile_begin);
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      if (TileIndex(e) / kBN < p.m) slot[TileIndex(e)] = v[e];
    }
    __threadfence();  // partials visible device-wide before the arrival is counted
    __syncthreads();
    __shared__ bool is_last;
    if (threadIdx.x == 0) {
      const unsigned arrived = atomicAdd(p.counters + tile, 1u);
      is_last = arrived == static_cast<unsigned>(last - first);
      if (is_last) p.counters[tile] = 0;  // every other CTA of this tile has arrived
    }
    __syncthreads();
    if (is_last) {
      __threadfence();
#pragma unroll
      for (int e = 0; e < kPer; ++e) v[e] = 0.f;
      for (int g = first; g <= last; ++g) {  // CTA order: the same sum whoever arrives last
        const float* part = Slot(p, g, tile_begin);
#pragma unroll
        for (int e = 0; e < kPer; ++e) {
          if (TileIndex(e) / kBN < p.m) v[e] += __ldcg(part + TileIndex(e));
        }
      }
      StoreTile<MT, OutT>(p, n0, v);
    }
  }
  __syncthreads();  // `red` and `is_last` are reused by the next segment
}

template <int MT, typename OutT>
__global__ void __launch_bounds__(kThreads, 1) SkinnyGemmKernel(Params p) {
  using P = Plan<MT>;
  extern __shared__ __align__(128) unsigned char smem[];
  float* red = reinterpret_cast<float*>(smem + P::kStages * P::kStageBytes);
  const uint32_t base = SmemAddr(smem);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wn = warp & 3, wk = warp >> 2;
  const int64_t begin = UnitBegin(p, blockIdx.x);
  const int count = static_cast<int>(UnitBegin(p, blockIdx.x + 1) - begin);
  // Cursors (n-tile, k-tile) of the next unit to load and of the next to compute.
  int load_tile = static_cast<int>(begin / p.k_tiles), load_kt = static_cast<int>(begin % p.k_tiles);
  int tile = load_tile, kt = load_kt;
  auto load = [&](int stage) {
    const uint32_t w_s = base + stage * P::kStageBytes;
    LoadUnit<MT>(p, load_tile, load_kt, w_s, w_s + P::kWBytes);
    if (++load_kt == p.k_tiles) load_kt = 0, ++load_tile;
  };

#pragma unroll
  for (int s = 0; s < P::kStages - 1; ++s) {
    if (s < count) load(s);
    CpAsyncCommit();
  }
  float acc[2][MT][4];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < MT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
  }
  int stage = 0;  // of unit i; unit i + kStages - 1 goes to the stage unit i - 1 used
  for (int i = 0; i < count; ++i) {
    CpAsyncWait<P::kStages - 2>();  // unit i has landed (for this thread)
    __syncthreads();                // ... for all threads; and unit i - 1's stage is free
    if (i + P::kStages - 1 < count) load(stage == 0 ? P::kStages - 1 : stage - 1);
    CpAsyncCommit();
    const uint32_t w_s = base + stage * P::kStageBytes;
    ComputeStage<MT>(w_s, w_s + P::kWBytes, wn, wk, lane, acc);
    if (++stage == P::kStages) stage = 0;
    if (++kt == p.k_tiles || i + 1 == count) {
      FinishSegment<MT, OutT>(p, tile, wn, wk, lane, acc, red);
      if (kt == p.k_tiles) kt = 0, ++tile;
    }
  }
}

// The instantiations, indexed by Variant().
struct Kernel {
  void (*fn)(Params);
  int smem;
};
template <int MT>
Kernel KernelPair(bool f32_out) {
  return f32_out ? Kernel{SkinnyGemmKernel<MT, float>, Plan<MT>::kSmem}
                 : Kernel{SkinnyGemmKernel<MT, bf16>, Plan<MT>::kSmem};
}
const Kernel kKernels[kSkinnyVariants] = {KernelPair<1>(false), KernelPair<1>(true),
                                          KernelPair<2>(false), KernelPair<2>(true),
                                          KernelPair<4>(false), KernelPair<4>(true),
                                          KernelPair<8>(false), KernelPair<8>(true)};

// Rows padded to 8 / 16 / 32 / 64 (MT = 1, 2, 4, 8 tiles of 8), times the output type.
int Variant(int32_t m, DType out) {
  const int rows = m <= 8 ? 0 : m <= 16 ? 1 : m <= 32 ? 2 : 3;
  return rows * 2 + (out == DType::kF32 ? 1 : 0);
}

int MaxCtas(const SkinnyGemmSetup& setup) {
  int per_sm = 0;
  for (int c : setup.ctas_per_sm) per_sm = c > per_sm ? c : per_sm;
  return setup.num_sms * per_sm;
}

}  // namespace

cudaError_t SetUpSkinnyGemm(SkinnyGemmSetup* setup) {
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&setup->num_sms, cudaDevAttrMultiProcessorCount, device);
      e != cudaSuccess) {
    return e;
  }
  int max_smem = 0;
  if (cudaError_t e =
          cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
      e != cudaSuccess) {
    return e;
  }
  for (int v = 0; v < kSkinnyVariants; ++v) {
    setup->ctas_per_sm[v] = 0;
    const Kernel& k = kKernels[v];
    if (k.smem > max_smem) continue;  // this device cannot run it: cuBLAS takes those shapes
    if (cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(k.fn),
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, k.smem);
        e != cudaSuccess) {
      return e;
    }
    if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &setup->ctas_per_sm[v], reinterpret_cast<const void*>(k.fn), kThreads, k.smem);
        e != cudaSuccess) {
      return e;
    }
  }
  return cudaSuccess;
}

size_t SkinnyGemmCounterOffset(const SkinnyGemmSetup& setup) {
  return size_t(MaxCtas(setup)) * 2 * kSlotFloats * sizeof(float);
}

size_t SkinnyGemmWorkspaceBytes(const SkinnyGemmSetup& setup) {
  return SkinnyGemmCounterOffset(setup) + kMaxTiles * sizeof(unsigned);
}

bool SkinnyGemmSupports(const SkinnyGemmSetup& setup, const void* x, int64_t ldx, const void* w,
                        int32_t m, int32_t n, int32_t k, DType out) {
  return m >= 1 && m <= kSkinnyMaxM && n >= 1 && k >= 8 && k % 8 == 0 && ldx % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
         (int64_t{n} + kBN - 1) / kBN <= kMaxTiles &&
         setup.ctas_per_sm[Variant(m, out)] > 0;
}

cudaError_t LaunchSkinnyGemm(const SkinnyGemmSetup& setup, void* workspace, const void* x,
                             int64_t ldx, const void* w, int32_t m, int32_t n, int32_t k, DType out,
                             void* y, int64_t ldy, float beta, cudaStream_t stream) {
  const int v = Variant(m, out);
  Params p;
  p.x = static_cast<const bf16*>(x);
  p.w = static_cast<const bf16*>(w);
  p.y = y;
  p.partials = static_cast<float*>(workspace);
  p.counters = reinterpret_cast<unsigned*>(static_cast<char*>(workspace) +
                                           SkinnyGemmCounterOffset(setup));
  p.ldx = ldx;
  p.ldy = ldy;
  p.m = m;
  p.n = n;
  p.k = k;
  p.k_tiles = (k + kBK - 1) / kBK;
  p.units = int64_t{(n + kBN - 1) / kBN} * p.k_tiles;
  const int64_t ctas = int64_t{setup.num_sms} * setup.ctas_per_sm[v];
  p.grid = static_cast<int>(ctas < p.units ? ctas : p.units);
  p.beta = beta;
  void* args[] = {&p};
  if (cudaError_t e = cudaLaunchKernel(reinterpret_cast<const void*>(kKernels[v].fn), dim3(p.grid),
                                       dim3(kThreads), args, kKernels[v].smem, stream);
      e != cudaSuccess) {
    return e;
  }
  return cudaGetLastError();
}

}  // namespace kvblock::cuda::internal
