// Scaled dot-product attention with grouped-query heads (q_heads a multiple of kv_heads; query
// head h reads KV head h / (q_heads / kv_heads)), over KV laid out as the block cache stores it:
// [kv_heads][tokens][head_dim]. Three entry points, one per place the engine attends:
//  - BlockAttention: the final block over [cached blocks ++ final block]: every cached token is
//    visible, causal only inside the final block (what Block-Attention prefills per request).
//  - CausalPrefillAttention: ordinary causal attention over one sequence (full mode, and a block
//    encoded alone).
//  - DecodeAttention: one new token over the whole KV cache.
// Softmax in f32 with the running maximum subtracted. CPU reference twins; no allocation: the
// caller passes `workspace` of at least AttentionWorkspaceFloats(kv tokens) floats.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cpu/layout.h"

namespace kvblock::kernels {

inline int64_t AttentionWorkspaceFloats(int64_t kv_tokens) { return kv_tokens; }

// q: [n][q_heads][head_dim] for the final block's n tokens; k, v: [kv_heads][num_cached + n]
// [head_dim], the cached tokens first; out: [n][q_heads][head_dim]. Query t sees KV tokens
// 0 .. num_cached + t. INVALID_ARGUMENT for inconsistent shapes, a head count that is not a
// multiple of kv_heads, or a short workspace.
absl::Status BlockAttention(View3<const float> q, View3<const float> k, View3<const float> v,
                            int64_t num_cached, float scale, View3<float> out,
                            absl::Span<float> workspace);

// BlockAttention with nothing cached: k and v hold exactly the n tokens of q.
absl::Status CausalPrefillAttention(View3<const float> q, View3<const float> k,
                                    View3<const float> v, float scale, View3<float> out,
                                    absl::Span<float> workspace);

// q: [1][q_heads][head_dim], the newest token, whose K/V are already the last entries of k, v
// ([kv_heads][context][head_dim]); it sees the whole context.
absl::Status DecodeAttention(View3<const float> q, View3<const float> k, View3<const float> v,
                             float scale, View3<float> out, absl::Span<float> workspace);

}  // namespace kvblock::kernels
