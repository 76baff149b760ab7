// Backend: where the model's math runs (CPU now, CUDA later). The Engine drives every request
// through this small interface, so block resolution, re-encoding order, sampling and stopping
// are shared by all backends and only the math differs.
//
// A KvSequence is one request's KV cache on the backend's device: for each layer, K and V as
// [kv_heads][capacity][head_dim] (the block payload's per-layer layout, so a cached block is
// copied in per head without reshuffling).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/block_payload.h"
#include "worker/model/config.h"

namespace kvblock {

class KvSequence {
 public:
  virtual ~KvSequence() = default;
  // Tokens held; the next token goes to position length().
  virtual int64_t length() const = 0;
  virtual int64_t capacity() const = 0;
};

// Thread safety: every method may be called concurrently for distinct sequences; one sequence
// must not be used by two threads at once.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  virtual const ModelConfig& config() const = 0;

  // An empty sequence for up to `capacity` tokens. INVALID_ARGUMENT for capacity <= 0,
  // RESOURCE_EXHAUSTED if the memory cannot be had.
  virtual absl::StatusOr<std::unique_ptr<KvSequence>> NewSequence(int64_t capacity) = 0;

  // Runs `tokens` at positions length() .. length() + n - 1: each attends to everything already
  // in `seq` and causally to the tokens before it in this call; their K/V are appended. Writes
  // the logits of the last `logit_rows` tokens to `logits` ([logit_rows][vocab]); logit_rows may
  // be 0 (encoding a block needs no logits). INVALID_ARGUMENT for an empty call, a token id
  // outside the vocabulary, too small a `logits` span or more tokens than the capacity left.
  virtual absl::Status Forward(KvSequence& seq, absl::Span<const int32_t> tokens,
                               int64_t logit_rows, absl::Span<float> logits) = 0;

  // Appends a cached block (K encoded at block-local positions 0..n-1) at offset length(),
  // re-encoding its K by that offset; V is copied as is. INVALID_ARGUMENT if the block's
  // geometry (layers, kv heads, head_dim) is not the model's or the capacity is exceeded.
  virtual absl::Status AppendBlock(KvSequence& seq, const BlockView& block) = 0;

  // Copies positions [begin, begin + n) of `seq` as f32 [layers][kv_heads][n][head_dim] into k
  // and v (the payload's layout). INVALID_ARGUMENT for a range outside the sequence or wrong
  // span sizes.
  virtual absl::Status ReadKv(const KvSequence& seq, int64_t begin, int64_t n, absl::Span<float> k,
                              absl::Span<float> v) const = 0;
};

}  // namespace kvblock
