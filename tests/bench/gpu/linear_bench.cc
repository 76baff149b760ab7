// Blas::Linear (kernels/cuda/kernels.h) at the Llama-3-8B projection shapes and few rows: the
// skinny weight-streaming kernel against cuBLAS in the same run, each as ms per launch (median)
// and the rate at which it reads W (GB/s, W bytes only: x and y are < 1% of them), as a share
// of the HBM rate of a device-to-device copy measured in the same run (read + write bytes).
// Enough weight copies are cycled that every launch reads W from HBM, not from the 50 MB L2.
// Exit 77 without a Hopper GPU (ctest skip).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "kernels/cuda/kernels.h"

namespace kvblock::cuda {
namespace {

#define BENCH_CUDA(expr)                                                                         \
  do {                                                                                           \
    const cudaError_t e_ = (expr);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)
#define BENCH_OK(expr)                                                                          \
  do {                                                                                          \
    const absl::Status s_ = (expr);                                                             \
    if (!s_.ok()) {                                                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, s_.ToString().c_str()); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

struct Options {
  std::vector<int> rows = {1, 16, 50, 64};  // m of every shape
  std::vector<std::string> shapes = {"qkv", "o", "gate_up", "down", "lm_head"};
  int runs = 20;                           // timed launches per case (median reported)
  int warmup = 3;                          // untimed launches first
  int64_t min_bytes = int64_t{256} << 20;  // weight copies cycled until they exceed this (> L2)
};

struct Shape {
  const char* name;
  int n, k;
  DType out;
};
// Llama-3-8B: fused QKV (32 + 2 x 8 heads of 128), O, fused gate+up, down, LM head (f32 logits).
constexpr Shape kShapes[] = {{"qkv", 6144, 4096, DType::kBF16},
                             {"o", 4096, 4096, DType::kBF16},
                             {"gate_up", 28672, 4096, DType::kBF16},
                             {"down", 4096, 14336, DType::kBF16},
                             {"lm_head", 128256, 4096, DType::kF32}};

void* Alloc(size_t bytes) {
  void* p = nullptr;
  BENCH_CUDA(cudaMalloc(&p, bytes));
  return p;
}

// Median ms of `launch(i)` over o.runs launches after o.warmup, each timed with events.
double MedianMs(const Options& o, cudaStream_t stream, const std::function<void(int)>& launch) {
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int i = 0; i < o.warmup + o.runs; ++i) {
    BENCH_CUDA(cudaEventRecord(start, stream));
    launch(i);
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float t = 0;
    BENCH_CUDA(cudaEventElapsedTime(&t, start, stop));
    if (i >= o.warmup) ms.push_back(t);
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int Run(const Options& o) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9) {
    std::printf("SKIP: the skinny kernel is built for Hopper (sm_90a) only\n");
    return 77;
  }
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreate(&stream));
  absl::StatusOr<std::unique_ptr<Blas>> blas = Blas::Create(stream);
  BENCH_OK(blas.status());

  // Baseline: HBM rate of a 1 GiB device-to-device copy (bytes read + written per second).
  const size_t copy_bytes = size_t{1} << 30;
  void* src = Alloc(copy_bytes);
  void* dst = Alloc(copy_bytes);
  BENCH_CUDA(cudaMemsetAsync(src, 1, copy_bytes, stream));
  const double copy_ms = MedianMs(o, stream, [&](int) {
    BENCH_CUDA(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, stream));
  });
  BENCH_CUDA(cudaFree(src));
  BENCH_CUDA(cudaFree(dst));
  const double hbm_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  std::printf("linear_bench: %s, %d SMs; bf16 weights, f32 accumulation; median of %d\n", prop.name,
              prop.multiProcessorCount, o.runs);
  std::printf("HBM device copy (read + write): %.0f GB/s\n", hbm_gbs);
  std::printf(
      "| shape | n | k | m | cuBLAS ms | skinny ms | cuBLAS GB/s | skinny GB/s | cuBLAS / HBM | "
      "skinny / HBM | speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|\n");

  const int max_m = *std::max_element(o.rows.begin(), o.rows.end());
  for (const Shape& s : kShapes) {
    if (std::find(o.shapes.begin(), o.shapes.end(), s.name) == o.shapes.end()) continue;
    const int64_t w_elems = int64_t{s.n} * s.k;
    const int64_t w_bytes = w_elems * 2;
    const int copies =
        static_cast<int>(std::clamp<int64_t>((o.min_bytes + w_bytes - 1) / w_bytes, 1, 16));
    std::vector<void*> w(copies);
    for (int c = 0; c < copies; ++c) {
      w[c] = Alloc(w_bytes);
      BENCH_OK(FillRandom(DType::kBF16, w[c], w_elems, 100 + c, 0.05f, stream));
    }
    void* x = Alloc(size_t(max_m) * s.k * 2);
    void* y = Alloc(size_t(max_m) * s.n * DTypeBytes(s.out));
    BENCH_OK(FillRandom(DType::kBF16, x, int64_t{max_m} * s.k, 1, 1.f, stream));
    for (int m : o.rows) {
      double ms[2];
      for (LinearImpl impl : {LinearImpl::kCublas, LinearImpl::kSkinny}) {
        ms[impl == LinearImpl::kSkinny] = MedianMs(o, stream, [&](int i) {
          BENCH_OK((*blas)->Linear(DType::kBF16, x, 0, w[i % copies], m, s.n, s.k, s.out, y, 0, 0.f,
                                   impl));
        });
      }
      const double gbs[2] = {w_bytes / (ms[0] * 1e-3) / 1e9, w_bytes / (ms[1] * 1e-3) / 1e9};
      std::printf("| %s | %d | %d | %d | %.4f | %.4f | %.0f | %.0f | %.3f | %.3f | %.2f |\n",
                  s.name, s.n, s.k, m, ms[0], ms[1], gbs[0], gbs[1], gbs[0] / hbm_gbs,
                  gbs[1] / hbm_gbs, ms[0] / ms[1]);
    }
    for (void* p : w) BENCH_CUDA(cudaFree(p));
    BENCH_CUDA(cudaFree(x));
    BENCH_CUDA(cudaFree(y));
  }
  blas->reset();
  BENCH_CUDA(cudaStreamDestroy(stream));
  return 0;
}

}  // namespace
}  // namespace kvblock::cuda

int main(int argc, char** argv) {
  kvblock::cuda::Options o;
  CLI::App app{"Blas::Linear benchmark: skinny kernel vs cuBLAS at the Llama-3-8B shapes"};
  app.add_option("--rows", o.rows, "m values (rows of x), each <= 64")
      ->delimiter(',')
      ->check(CLI::Range(1, 64));
  app.add_option("--shapes", o.shapes, "of qkv, o, gate_up, down, lm_head")->delimiter(',');
  app.add_option("--runs", o.runs, "timed launches per case")->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "untimed launches per case")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  return kvblock::cuda::Run(o);
}
