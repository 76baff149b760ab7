// Attention kernel alone (kernels/cuda/kernels.h Attention) at the `kvblock bench ttft` shapes:
// block mode (a 50-token final block over cached 512-token blocks re-encoded as K is loaded,
// causal inside the final block) and causal prefill, Llama-3-8B heads (32 q / 8 kv, head_dim
// 128, bf16, Q inside a fused QKV row). Prints ms per launch (median) and TFLOP/s of the useful
// work (masked scores not counted). Enough copies of the KV are cycled that each launch reads
// its KV from HBM, not from L2. Exit 77 without a GPU (ctest skip).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "kernels/cuda/kernels.h"

namespace kvblock::cuda {
namespace {

constexpr int kHeads = 32, kKvHeads = 8, kHeadDim = 128;
constexpr int64_t kQStride = int64_t{kHeads + 2 * kKvHeads} * kHeadDim;  // fused QKV row
constexpr int64_t kOStride = int64_t{kHeads} * kHeadDim;

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
  std::vector<int> lengths = {4096, 8192, 16384, 32768};  // total prompt tokens
  int final_block = 50;                                   // query tokens in block mode
  int passage = 512;                                      // tokens per cached block
  int runs = 20;                           // timed launches per case (median reported)
  int warmup = 3;                          // untimed launches first
  int64_t min_bytes = int64_t{256} << 20;  // KV copies cycled until they exceed this (> L2)
  std::string modes = "block,prefill";
};

void* Alloc(size_t bytes) {
  void* p = nullptr;
  BENCH_CUDA(cudaMalloc(&p, bytes));
  return p;
}

// One attention case: its KV copies, segment/sequence tables per copy, Q, O and workspace.
struct Case {
  std::vector<void*> owned;
  std::vector<AttentionParams> params;  // one per KV copy
  AttentionPlan plan;
  void* workspace = nullptr;
  double flop = 0;

  ~Case() {
    for (void* p : owned) cudaFree(p);
  }
};

// `lens` segments with `offsets` (rope re-encoding), q_len queries, causal from causal_start.
void Build(const Options& o, const std::vector<int>& lens, const std::vector<int>& offsets,
           int q_len, int causal_start, int num_sms, Case& c) {
  int keys = 0;
  for (int n : lens) keys += n;
  const int64_t kv_elems = int64_t{keys} * kKvHeads * kHeadDim;
  const int64_t copy_bytes = kv_elems * 2 * 2;
  const int copies =
      static_cast<int>(std::clamp<int64_t>((o.min_bytes + copy_bytes - 1) / copy_bytes, 1, 16));
  std::vector<float> inv_freq(kHeadDim / 2);
  for (int i = 0; i < kHeadDim / 2; ++i) inv_freq[i] = std::pow(500000.0f, -2.0f * i / kHeadDim);
  float* d_inv = static_cast<float*>(Alloc(inv_freq.size() * 4));
  c.owned.push_back(d_inv);
  BENCH_CUDA(cudaMemcpy(d_inv, inv_freq.data(), inv_freq.size() * 4, cudaMemcpyHostToDevice));
  void* q = Alloc(size_t(q_len) * kQStride * 2);
  void* out = Alloc(size_t(q_len) * kOStride * 2);
  c.owned.push_back(q);
  c.owned.push_back(out);
  BENCH_OK(FillRandom(DType::kBF16, q, int64_t{q_len} * kQStride, 1, 1.f, nullptr));
  for (int copy = 0; copy < copies; ++copy) {
    auto* kv = static_cast<uint16_t*>(Alloc(copy_bytes));
    c.owned.push_back(kv);
    BENCH_OK(FillRandom(DType::kBF16, kv, kv_elems * 2, 100 + copy, 1.f, nullptr));
    std::vector<AttnSegment> segs;
    int64_t at = 0;
    for (size_t i = 0; i < lens.size(); ++i) {
      AttnSegment sg;
      sg.k = kv + at;
      sg.v = kv + kv_elems + at;
      sg.head_stride = int64_t{lens[i]} * kHeadDim;
      sg.num_tokens = lens[i];
      sg.rope_offset = offsets[i];
      segs.push_back(sg);
      at += int64_t{lens[i]} * kKvHeads * kHeadDim;
    }
    AttnSequence seq;
    seq.q = q;
    seq.o = out;
    seq.q_len = q_len;
    seq.seg_begin = 0;
    seq.seg_end = static_cast<int>(segs.size());
    seq.num_keys = keys;
    seq.causal_start = causal_start;
    auto* d_segs = static_cast<AttnSegment*>(Alloc(segs.size() * sizeof(AttnSegment)));
    auto* d_seq = static_cast<AttnSequence*>(Alloc(sizeof(AttnSequence)));
    c.owned.push_back(d_segs);
    c.owned.push_back(d_seq);
    BENCH_CUDA(
        cudaMemcpy(d_segs, segs.data(), segs.size() * sizeof(AttnSegment), cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(d_seq, &seq, sizeof(seq), cudaMemcpyHostToDevice));
    AttentionParams p;
    p.dtype = DType::kBF16;
    p.num_heads = kHeads;
    p.num_kv_heads = kKvHeads;
    p.head_dim = kHeadDim;
    p.scale = 1.f / std::sqrt(float(kHeadDim));
    p.q_stride = kQStride;
    p.o_stride = kOStride;
    p.seqs = d_seq;
    p.num_seqs = 1;
    p.segs = d_segs;
    p.inv_freq = d_inv;
    p.max_q_len = q_len;
    p.max_keys = keys;
    c.params.push_back(p);
  }
  absl::StatusOr<AttentionPlan> plan = PlanAttention(c.params[0], num_sms);
  BENCH_OK(plan.status());
  c.plan = *plan;
  if (c.plan.workspace_bytes > 0) {
    c.workspace = Alloc(c.plan.workspace_bytes);
    c.owned.push_back(c.workspace);
  }
  // Useful FLOP: query t sees causal_start + t + 1 keys; QK^T and PV, 2 FLOP per multiply-add.
  double visible = 0;
  for (int t = 0; t < q_len; ++t) visible += std::min(keys, causal_start + t + 1);
  c.flop = 4.0 * kHeads * kHeadDim * visible;
}

// Median ms per launch.
double Time(const Options& o, const Case& c) {
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int i = 0; i < o.warmup + o.runs; ++i) {
    const AttentionParams& p = c.params[i % c.params.size()];
    BENCH_CUDA(cudaEventRecord(start));
    BENCH_OK(Attention(p, c.plan, c.workspace, nullptr));
    BENCH_CUDA(cudaEventRecord(stop));
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
  std::printf(
      "attention_bench: %s, %d SMs; %d q heads / %d kv heads, head_dim %d, bf16; median of %d\n",
      prop.name, prop.multiProcessorCount, kHeads, kKvHeads, kHeadDim, o.runs);
  std::printf("| mode | keys | q tokens | splits | ms | TFLOP/s |\n|---|---|---|---|---|---|\n");
  for (const char* mode : {"block", "prefill"}) {
    if (o.modes.find(mode) == std::string::npos) continue;
    for (int len : o.lengths) {
      std::vector<int> lens, offsets;
      int q_len = len, causal_start = 0;
      if (std::string(mode) == "block") {
        const int cached = len - o.final_block;
        for (int at = 0; at < cached; at += o.passage) {
          lens.push_back(std::min(o.passage, cached - at));
          offsets.push_back(at);
        }
        lens.push_back(o.final_block);
        offsets.push_back(0);
        q_len = o.final_block;
        causal_start = cached;
      } else {
        lens = {len};
        offsets = {0};
      }
      Case c;
      Build(o, lens, offsets, q_len, causal_start, prop.multiProcessorCount, c);
      const double ms = Time(o, c);
      std::printf("| %s | %d | %d | %d | %.3f | %.1f |\n", mode, len, q_len, c.plan.splits, ms,
                  c.flop / (ms * 1e-3) / 1e12);
    }
  }
  return 0;
}

}  // namespace
}  // namespace kvblock::cuda

int main(int argc, char** argv) {
  kvblock::cuda::Options o;
  CLI::App app{"attention kernel benchmark at the bench ttft shapes"};
  app.add_option("--lengths", o.lengths, "total prompt tokens per case");
  app.add_option("--final-block", o.final_block, "query tokens in block mode");
  app.add_option("--passage", o.passage, "tokens per cached block");
  app.add_option("--runs", o.runs, "timed launches per case")->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "untimed launches per case")->check(CLI::NonNegativeNumber);
  app.add_option("--modes", o.modes, "block, prefill or both (comma separated)");
  CLI11_PARSE(app, argc, argv);
  for (int l : o.lengths) {
    if (l <= o.final_block || o.passage <= 0) {
      std::fprintf(stderr, "every length must exceed --final-block; --passage must be positive\n");
      return 2;
    }
  }
  return kvblock::cuda::Run(o);
}
