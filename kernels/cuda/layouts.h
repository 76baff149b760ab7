// Plain layout structs shared by the CUDA kernels (compiled as C++17 by nvcc) and their callers
// (C++20). They describe where tensors live and how they are laid out; they own nothing.
// Element pointers are untyped: `DType` says whether they hold f32 or bf16.
#pragma once

#include <cstdint>

namespace kvblock::cuda {

// Storage type of activations, weights and KV. Accumulation is always f32.
enum class DType : uint8_t { kF32 = 0, kBF16 = 1 };

inline int DTypeBytes(DType d) { return d == DType::kF32 ? 4 : 2; }

// One contiguous run of keys of one layer, e.g. one cached block or the request's own tokens.
// K and V are [kv_heads][num_tokens][head_dim] with `head_stride` elements between heads
// (the block payload's per-layer layout). Lives in device memory when passed to a kernel.
struct AttnSegment {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t head_stride = 0;  // elements between consecutive kv heads
  int32_t num_tokens = 0;
  // RoPE rotation applied to K as it is loaded (block re-encoding): K was encoded at block-local
  // positions, the block sits at `rope_offset` in the prompt. 0 = use K as stored.
  int32_t rope_offset = 0;
};

// One query sequence of an attention launch (a request's final block, a whole prompt, one
// decode token of a batched request, one passage being encoded). Lives in device memory.
struct AttnSequence {
  const void* q = nullptr;  // [q_len][num_heads][head_dim], `q_stride` elements between tokens
  void* o = nullptr;        // [q_len][num_heads][head_dim], `o_stride` elements between tokens
  int32_t q_len = 0;
  int32_t seg_begin = 0;  // segments [seg_begin, seg_end) of the launch's segment table
  int32_t seg_end = 0;
  int32_t num_keys = 0;  // sum of the segments' num_tokens
  // Global key index of query 0: key j is visible to query t iff j <= causal_start + t.
  // Block mode: the number of cached-block keys (causal only inside the final block);
  // full prefill: 0; decode: num_keys - 1.
  int32_t causal_start = 0;
};

// Attention of many sequences over their segments (GQA, flash-style online softmax, optional
// split over the key axis merged by a combine pass).
struct AttentionParams {
  DType dtype = DType::kBF16;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  float scale = 0.f;  // softmax scale, usually 1/sqrt(head_dim)
  int64_t q_stride = 0;
  int64_t o_stride = 0;
  const AttnSequence* seqs = nullptr;  // device, num_seqs entries
  int32_t num_seqs = 0;
  const AttnSegment* segs = nullptr;  // device
  const float* inv_freq = nullptr;    // device, head_dim/2 RoPE frequencies (for rope_offset)
  // Host-known bounds that size the grid (exceeding them in the tables is undefined).
  int32_t max_q_len = 0;
  int32_t max_keys = 0;
  // Key-axis splits; 0 = choose from the shape (see AttentionNumSplits).
  int32_t num_splits = 0;
};

// RoPE on the fused QKV projection output, in place for Q, then K (rotated) and V are written to
// their KV caches. qkv is [tokens][(num_heads + 2 num_kv_heads) head_dim] with `qkv_stride`
// elements between tokens (Q first, then K, then V). Token t lands at element
// `cache_offsets[t] + h * cache_head_stride + d` of k_cache / v_cache.
struct RopeStoreParams {
  DType dtype = DType::kBF16;
  void* qkv = nullptr;
  int64_t qkv_stride = 0;
  int32_t num_tokens = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  const int32_t* positions = nullptr;      // device, num_tokens
  const int64_t* cache_offsets = nullptr;  // device, num_tokens
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t cache_head_stride = 0;
  const float* inv_freq = nullptr;  // device, head_dim/2
};

// Sampling controls of one row of logits.
struct SamplingParams {
  float temperature = 0.f;  // <= 0: greedy
  int32_t top_k = 0;        // 0: all
  float top_p = 1.f;        // 1: all
  uint64_t seed = 0;        // with `step`, picks the uniform draw
  uint64_t step = 0;
};

}  // namespace kvblock::cuda
