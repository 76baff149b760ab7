// CudaModel: a Llama-family decoder (Llama 2/3, Qwen2, Mistral) on one GPU, in bf16 or f32:
// weights resident in HBM, cuBLAS projections, the kernels of kernels/cuda for everything else.
//
// KV lives in one pool of token slots, [layers][K|V][kv_heads][pool_slots][head_dim]; a sequence
// owns a contiguous slot range. A Forward runs the new tokens of several sequences at once; each
// sequence attends to
//   [its context runs (GPU-tier blocks, re-encoded inside the attention kernel as K is loaded)
//    ++ its own slots (earlier tokens, then the new ones, causally)].
// That single entry point serves block-mode prefill (context = cached blocks, new = final block),
// full prefill (no context), batched passage encoding (one sequence per passage) and batched
// decode (one new token per sequence).
//
// Thread safety: none. A CudaModel owns one stream and its buffers; callers serialize use.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/layouts.h"
#include "worker/engine/cuda/device_memory.h"

namespace kvblock::cuda {

// The architecture numbers the GPU path needs (independent of config.json parsing).
struct CudaModelSpec {
  int32_t vocab = 0;
  int32_t hidden = 0;
  int32_t intermediate = 0;
  int32_t layers = 0;
  int32_t heads = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  float rms_eps = 1e-5f;
  bool tied_embeddings = false;
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  std::vector<float> inv_freq;  // head_dim / 2 RoPE inverse frequencies (any scaling applied)

  // INVALID_ARGUMENT for non-positive sizes, heads not a multiple of kv_heads, or a wrong
  // inv_freq length.
  absl::Status Validate() const;
  int64_t NumParameters() const;
};

struct CudaModelOptions {
  // Storage type of weights, activations and KV (accumulation is f32). Default: bf16.
  DType dtype = DType::kBF16;
  // Most new tokens in one Forward (sizes the activation buffers), tokens. Default: 8192.
  int64_t max_batch_tokens = 8192;
  // KV slots shared by all sequences, tokens. Default: 65536.
  int64_t kv_pool_tokens = 65536;
  // Most sequences in one Forward. Default: 64.
  int32_t max_seqs = 64;
  // Most context runs over all sequences of one Forward. Default: 4096.
  int32_t max_context_runs = 4096;
  // Most logits rows over all sequences of one Forward (f32 [rows][vocab] buffer). Default: 64.
  int32_t max_logit_rows = 64;
  // Decode passes (one new token per sequence, no layer_ready events) run as CUDA graphs: one
  // per shape (sequences, tokens, longest sequence, context runs, logit rows, attention
  // splits), recorded at the shape's second pass and replayed after, instead of ~10 launches
  // per layer. Default: true.
  bool decode_graphs = true;
  // The same for every other pass without layer_ready events (prefills). It pays where request
  // shapes repeat (fixed prompt templates, benchmarks); where they do not, each shape's second
  // pass costs a capture. Default: false.
  bool prefill_graphs = false;

  // INVALID_ARGUMENT for non-positive sizes.
  absl::Status Validate() const;
};

// Host f32 weights in Hugging Face's layout ([out][in] row-major), for CudaModel::FromHost.
struct HostLinear {
  const float* weight = nullptr;
  const float* bias = nullptr;  // null when the layer has none
};
struct HostLayer {
  const float* input_norm = nullptr;
  const float* post_norm = nullptr;
  HostLinear q, k, v, o, gate, up, down;
};
struct HostModel {
  const float* embed = nullptr;       // [vocab][hidden]
  const float* final_norm = nullptr;  // [hidden]
  const float* lm_head = nullptr;     // [vocab][hidden]; ignored when tied
  std::vector<HostLayer> layers;
};

// KV of a run of tokens elsewhere in device memory, in the block payload's layout: per layer,
// K [kv_heads][num_tokens][head_dim] then V the same. The model's dtype.
struct KvRun {
  const void* data = nullptr;
  int32_t num_tokens = 0;
  int32_t rope_offset = 0;  // the run's position in the prompt (its K is at positions 0..n-1)
};

struct SlotRange {
  int64_t begin = 0;
  int64_t count = 0;
};

// One sequence of a Forward.
struct ForwardSeq {
  absl::Span<const int32_t> tokens;  // the new tokens (>= 1)
  std::vector<KvRun> context;        // keys before the sequence's own slots, in prompt order
  SlotRange slots;                   // the sequence's own KV slots
  int32_t own_len = 0;               // tokens already in its slots (before the new ones)
  int32_t position = 0;              // RoPE position of the first new token
  int32_t logit_rows = 0;            // logits of the last logit_rows new tokens (0..tokens)
};

class CudaModel {
 public:
  // Random weights (uniform, variance 1/fan_in) made on the GPU: benchmarks.
  static absl::StatusOr<std::unique_ptr<CudaModel>> CreateRandom(const CudaModelSpec& spec,
                                                                 const CudaModelOptions& options,
                                                                 uint64_t seed);
  // Uploads host f32 weights, converted to options.dtype. The host arrays may be freed after.
  static absl::StatusOr<std::unique_ptr<CudaModel>> FromHost(const CudaModelSpec& spec,
                                                             const CudaModelOptions& options,
                                                             const HostModel& weights);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  // A contiguous range of pool slots; RESOURCE_EXHAUSTED when no range that long is free.
  absl::StatusOr<SlotRange> AllocateSlots(int64_t count);
  void FreeSlots(SlotRange range);

  // Runs the new tokens of `seqs` through all layers; their K/V are written to their slots at
  // own_len... The logit rows each sequence asks for land in logits(), in order.
  // INVALID_ARGUMENT for limits exceeded (tokens, sequences, runs, slots), ids outside the
  // vocabulary; INTERNAL for CUDA/cuBLAS failures. Enqueues on stream(); returns without
  // waiting unless it had to wait for the previous Forward's staging buffers.
  // `layer_ready`, when not empty, holds one event per layer: layer l's attention (the only
  // reader of the context runs) waits for event l, so context KV still being copied layer by
  // layer (LayerPipeline) overlaps the earlier layers' compute.
  absl::Status Forward(absl::Span<const ForwardSeq> seqs, absl::Span<const cudaEvent_t> layer_ready = {});
  // Device [logit_rows()][vocab] f32 of the last Forward (valid until the next one).
  const float* logits() const { return logits_.as<float>(); }
  int32_t logit_rows() const { return logit_rows_; }
  // Samples one token per logits row (params.size() == logit_rows()) and waits for them.
  absl::Status Sample(absl::Span<const SamplingParams> params, absl::Span<int32_t> tokens);
  // Copies the logits to host and waits (out has logit_rows() * vocab floats).
  absl::Status CopyLogits(absl::Span<float> out);

  // Copies own KV [begin, begin + n) of `slots` into `dst` (device, payload layout, n tokens).
  absl::Status ExportKv(SlotRange slots, int64_t begin, int64_t n, void* dst);
  // Copies payload-layout KV of n tokens from `src` (device) into slots [at, at + n), rotating
  // K by `rope_offset` positions (re-encoding by copy, for callers that want a contiguous KV).
  absl::Status ImportKv(const void* src, int64_t n, SlotRange slots, int64_t at,
                        int32_t rope_offset);

  // Waits for everything enqueued.
  absl::Status Synchronize();
  // Turns decode and prefill graphs on or off (see CudaModelOptions; dropping the recorded ones).
  void SetGraphs(bool decode, bool prefill);
  // Forward passes that replayed a recorded graph.
  int64_t graph_replays() const { return graph_replays_; }

  const CudaModelSpec& spec() const { return spec_; }
  const CudaModelOptions& options() const { return options_; }
  cudaStream_t stream() const { return stream_; }
  Blas& blas() { return *blas_; }
  int num_sms() const { return num_sms_; }
  int64_t weight_bytes() const { return static_cast<int64_t>(weights_.bytes()); }
  // Device f32 [head_dim / 2] RoPE inverse frequencies (for ReencodeK on copies).
  const float* inv_freq() const { return inv_freq_.as<float>(); }
  // Bytes of one token's KV over all layers.
  int64_t kv_bytes_per_token() const;

 private:
  struct Layer {
    void* input_norm;
    void* post_norm;
    void* qkv;
    void* qkv_bias;
    void* o;
    void* o_bias;
    void* gate_up;
    void* gate_up_bias;
    void* down;
    void* down_bias;
  };
  struct GraphKey {
    int64_t seqs, tokens, max_q, runs, rows;
    int32_t splits;
    friend bool operator==(const GraphKey&, const GraphKey&) = default;
  };
  struct Graph {
    GraphKey key;
    cudaGraphExec_t exec;  // null until the shape's second pass records it
  };
  CudaModel(const CudaModelSpec& spec, const CudaModelOptions& options);
  void ClearGraphs();
  absl::Status Init(bool random, uint64_t seed, const HostModel* host);
  absl::Status Linear(const void* x, const void* w, const void* bias, int32_t m, int32_t n,
                      int32_t k, void* y);
  void* PoolK(int32_t layer) const;
  void* PoolV(int32_t layer) const;

  CudaModelSpec spec_;
  CudaModelOptions options_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Blas> blas_;
  int num_sms_ = 0;
  int es_ = 2;  // bytes per element

  DeviceMemory weights_;
  void* embed_ = nullptr;
  void* final_norm_ = nullptr;
  void* lm_head_ = nullptr;
  std::vector<Layer> layers_;
  DeviceMemory inv_freq_;
  DeviceMemory kv_pool_;
  std::vector<SlotRange> free_slots_;  // sorted, coalesced

  // Activations, sized for max_batch_tokens.
  DeviceMemory hidden_, normed_, qkv_, attn_, delta_, gate_up_, act_, gathered_, logits_;
  DeviceMemory attn_ws_;
  int32_t logit_rows_ = 0;
  // Per-Forward tables: staged in pinned memory, then one copy to the device.
  PinnedMemory staging_host_;
  DeviceMemory staging_dev_;
  cudaEvent_t staging_free_ = nullptr;
  DeviceMemory sampling_dev_;
  PinnedMemory sampling_host_;
  std::vector<Graph> graphs_;
  int64_t graph_replays_ = 0;
};

}  // namespace kvblock::cuda
