// Weight-streaming bf16 GEMM for few rows (design in kernels/cuda/internal/skinny_gemm.h).
//
// The product is computed transposed, y^T = W * x^T, so W's rows are the 64-row A operand of
// Hopper's warpgroup MMA (wgmma.m64nNk16, operands read from shared memory) and x's rows, padded
// to N = 8/16/32/64, the B operand. Work unit = one W tile of kBN rows x kBK columns (16 KB); the
// units are ordered n-tile-major (all k-tiles of n-tile 0, then n-tile 1, ...) and CTA g of G
// takes units [g*U/G, (g+1)*U/G). A CTA therefore holds at most two partial n-tiles (its first
// and last); the tiles in between are complete and written directly. Loads for the next units
// (a cp.async pipeline as deep as shared memory allows) are always in flight, across n-tile
// boundaries; the loop keeps (n-tile, k-tile) cursors (no 64-bit divisions per unit).
//
// Two warpgroups, each 64 of the tile's 128 W rows over the whole stage. Shared-memory tiles are
// 128-byte rows in 1024-byte groups of 8 whose 16-byte chunks are XOR-swizzled by row: the
// 128-byte-swizzle K-major layout wgmma descriptors name (and conflict-free for cp.async).
// Built for sm_90a only (kernels/cuda/CMakeLists.txt); elsewhere SetUpSkinnyGemm finds no
// runnable instantiation and Blas::Linear refuses LinearImpl::kSkinny.
#include "kernels/cuda/internal/common.cuh"
#include "kernels/cuda/internal/skinny_gemm.h"

namespace kvblock::cuda::internal {
namespace {

constexpr int kBN = 128;  // W rows (outputs) per tile
constexpr int kBK = 64;   // k per pipeline stage: one 128-byte row per W row
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
  static constexpr int kStageBytes = kWBytes + MT * 8 * kBK * 2;  // a multiple of 1024
  static constexpr int kRedBytes = MT * 8 * kRedStride * 4;
  static constexpr int kAlign = 1024;  // swizzle atoms start 1024-byte aligned
  static constexpr int kStages = (kSmemLimit - 256 - kAlign - kRedBytes) / kStageBytes;
  static constexpr int kSmem = kAlign + kStages * kStageBytes + kRedBytes;
  static constexpr int kPerThread = MT * 8 * kBN / kThreads;  // tile elements per thread
  static_assert(kStages >= 3 && kPerThread * kThreads == MT * 8 * kBN);
  static_assert(kStageBytes % kAlign == 0 && kWBytes % kAlign == 0);
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

// Shared-memory matrix descriptor of a K-major, 128-byte-swizzled tile starting at `addr`
// (1024-byte aligned): 8-row groups 1024 bytes apart (stride byte offset), leading byte offset
// unused by this layout (1), swizzle mode 1 = 128 bytes. Adding 2 advances 32 bytes = 16 k.
__device__ __forceinline__ uint64_t Descriptor(uint32_t addr) {
  return uint64_t{(addr & 0x3FFFF) >> 4} | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// d += A (64 x 16 at descriptor a) * B (16 x N at descriptor b), N = 8 * (number of d / 4).
__device__ __forceinline__ void Wgmma(float (&d)[4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3"
      "}, %4, %5, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "l"(a), "l"(b), "r"(1));
}
__device__ __forceinline__ void Wgmma(float (&d)[8], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7"
      "}, %8, %9, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7])
      : "l"(a), "l"(b), "r"(1));
}
__device__ __forceinline__ void Wgmma(float (&d)[16], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
      "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(1));
}
__device__ __forceinline__ void Wgmma(float (&d)[32], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}

__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaWaitAll() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Makes this thread's completed cp.async writes visible to the async proxy (wgmma's reads).
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
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

// acc += this warpgroup's 64 W rows x the x rows over the stage's kBK columns (4 k-steps).
template <int MT>
__device__ __forceinline__ void ComputeStage(uint32_t w_s, uint32_t x_s, int wg,
                                             float (&acc)[MT * 4]) {
  const uint64_t a = Descriptor(w_s + wg * 64 * kBK * 2), b = Descriptor(x_s);
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk) Wgmma(acc, a + 2 * kk, b + 2 * kk);
  WgmmaCommit();
  WgmmaWaitAll();  // the stage is refilled after the next barrier; acc is read at segment ends
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

// Ends this CTA's segment of n-tile `tile` (the k-tiles since the last segment ended): moves
// the accumulators to shared memory (and zeroes them), then writes the tile, or stores it as a
// partial and, if this CTA is the tile's last to arrive, sums all the tile's partials in CTA
// order and writes it.
template <int MT, typename OutT>
__device__ __forceinline__ void FinishSegment(const Params& p, int tile, int warp, int lane,
                                              float (&acc)[MT * 4], float* red) {
  constexpr int kPer = Plan<MT>::kPerThread;
  // wgmma's accumulator layout: warp w of warpgroup g holds rows g*64 + (w%4)*16 + lane/4 (+8),
  // columns 8j + 2*(lane%4) (+1) of each 8-column block j; rows are W rows (n), columns x rows.
#pragma unroll
  for (int j = 0; j < MT; ++j) {
    const int n = (warp >> 2) * 64 + (warp & 3) * 16 + (lane >> 2), m = j * 8 + 2 * (lane & 3);
    float* r0 = red + m * kRedStride + n;
    float* r1 = r0 + kRedStride;
    r0[0] = acc[j * 4], r1[0] = acc[j * 4 + 1], r0[8] = acc[j * 4 + 2], r1[8] = acc[j * 4 + 3];
  }
#pragma unroll
  for (int e = 0; e < MT * 4; ++e) acc[e] = 0.f;
  __syncthreads();
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
  extern __shared__ unsigned char smem[];
  const uint32_t raw = SmemAddr(smem);
  const uint32_t pad = (P::kAlign - raw % P::kAlign) % P::kAlign;
  const uint32_t base = raw + pad;
  float* red = reinterpret_cast<float*>(smem + pad + P::kStages * P::kStageBytes);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t begin = UnitBegin(p, blockIdx.x);
  const int count = static_cast<int>(UnitBegin(p, blockIdx.x + 1) - begin);
  // Cursors (n-tile, k-tile) of the next unit to load and of the next to compute.
  int load_tile = static_cast<int>(begin / p.k_tiles),
      load_kt = static_cast<int>(begin % p.k_tiles);
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
  float acc[MT * 4];
#pragma unroll
  for (int e = 0; e < MT * 4; ++e) acc[e] = 0.f;
  int stage = 0;  // of unit i; unit i + kStages - 1 goes to the stage unit i - 1 used
  for (int i = 0; i < count; ++i) {
    CpAsyncWait<P::kStages - 2>();  // unit i has landed (for this thread)
    FenceProxyAsync();
    __syncthreads();  // ... for all threads; and unit i - 1's stage is free
    if (i + P::kStages - 1 < count) load(stage == 0 ? P::kStages - 1 : stage - 1);
    CpAsyncCommit();
    const uint32_t w_s = base + stage * P::kStageBytes;
    ComputeStage<MT>(w_s, w_s + P::kWBytes, warp >> 2, acc);
    if (++stage == P::kStages) stage = 0;
    if (++kt == p.k_tiles || i + 1 == count) {
      FinishSegment<MT, OutT>(p, tile, warp, lane, acc, red);
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
const Kernel kKernels[kSkinnyVariants] = {
    KernelPair<1>(false), KernelPair<1>(true), KernelPair<2>(false), KernelPair<2>(true),
    KernelPair<4>(false), KernelPair<4>(true), KernelPair<8>(false), KernelPair<8>(true)};

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
  if (cudaError_t e =
          cudaDeviceGetAttribute(&setup->num_sms, cudaDevAttrMultiProcessorCount, device);
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
    const cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(k.fn),
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, k.smem);
    if (e == cudaErrorInvalidDeviceFunction || e == cudaErrorNoKernelImageForDevice) {
      cudaGetLastError();  // not built for this device (sm_90a only): cuBLAS takes its calls
      continue;
    }
    if (e != cudaSuccess) return e;
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
         (int64_t{n} + kBN - 1) / kBN <= kMaxTiles && setup.ctas_per_sm[Variant(m, out)] > 0;
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
  p.counters =
      reinterpret_cast<unsigned*>(static_cast<char*>(workspace) + SkinnyGemmCounterOffset(setup));
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
