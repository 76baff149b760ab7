// Backend: where the model's math runs (CPU now, CUDA later). The Engine drives every request
// through this small interface, so block resolution, re-encoding order, sampling and stopping
// are shared by all backends and only the math differs.
//
// A KvSequence is one request's KV cache on the backend's device: for each layer, K and V as
// [kv_heads][capacity][head_dim] (the block payload's per-layer layout, so a cached block is
// copied in per head without reshuffling).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
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

  // Runs tokens[i] into seqs[i] for every i, several distinct sequences in one pass over the
  // weights where the backend can (encoding many blocks at once): each as Forward with no
  // logits, tokens[i] at positions seqs[i]->length() onwards, attending to everything in
  // seqs[i] and causally to each other; their K/V are appended. Overrides may split the batch
  // into several passes within their limits; this default runs Forward per sequence. Every
  // check happens before any sequence changes (CheckForwardBatch). INVALID_ARGUMENT for an
  // empty batch, sizes that disagree, a null or repeated sequence, an empty token list, a token
  // id outside the vocabulary or more tokens than a sequence's capacity left; the backend's
  // errors otherwise (the batch's sequences are then unusable).
  virtual absl::Status ForwardBatch(absl::Span<KvSequence* const> seqs,
                                    absl::Span<const absl::Span<const int32_t>> tokens) {
    if (absl::Status s = CheckForwardBatch(seqs, tokens); !s.ok()) return s;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (absl::Status s = Forward(*seqs[i], tokens[i], 0, {}); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // One decode step of a batch of distinct sequences: tokens[i] goes to seqs[i] at position
  // seqs[i]->length(), attending to everything in it, and its K/V are appended; the next-token
  // logits of seqs[i] go to logits[i * vocab, (i + 1) * vocab). Overrides read the weights once
  // per step for the whole batch; this default runs Forward per sequence. Every check happens
  // before any sequence changes (CheckDecodeStep). INVALID_ARGUMENT for an empty batch, sizes
  // that disagree, a null or repeated sequence, a token id outside the vocabulary or a full
  // sequence; the backend's errors otherwise (the batch's sequences are then unusable).
  virtual absl::Status DecodeStep(absl::Span<KvSequence* const> seqs,
                                  absl::Span<const int32_t> tokens, absl::Span<float> logits) {
    if (absl::Status s = CheckDecodeStep(seqs, tokens, logits); !s.ok()) return s;
    const int64_t vocab = config().vocab_size;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (absl::Status s =
              Forward(*seqs[i], tokens.subspan(i, 1), 1, logits.subspan(i * vocab, vocab));
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // Appends a cached block (K encoded at block-local positions 0..n-1) at offset length(),
  // re-encoding its K by that offset; V is copied as is. INVALID_ARGUMENT if the block's
  // geometry (layers, kv heads, head_dim) is not the model's or the capacity is exceeded.
  // The block's bytes must stay valid until the sequence's next pass (Forward, ForwardBatch,
  // DecodeStep) or ReadKv has returned: a backend may move them to its device under that pass
  // (the CUDA backend copies them layer by layer, each layer of the pass waiting for its own).
  virtual absl::Status AppendBlock(KvSequence& seq, const BlockView& block) = 0;

  // Blocks a backend keeps on its device across requests (the CUDA backend's GPU tier): a hot
  // block then costs no store read and no transfer. FindResident returns a handle that keeps
  // the block resident while it lives, or null if `key` is not held with `num_tokens` tokens;
  // AppendResident appends it as AppendBlock appends a payload (same errors). Backends without
  // such a tier keep these defaults: nothing is resident.
  using ResidentBlock = std::shared_ptr<const void>;
  virtual ResidentBlock FindResident(const BlockKey& key, int64_t num_tokens) {
    (void)key;
    (void)num_tokens;
    return nullptr;
  }
  virtual absl::Status AppendResident(KvSequence& seq, const ResidentBlock& block) {
    (void)seq;
    (void)block;
    return absl::FailedPreconditionError("this backend keeps no resident blocks");
  }
  // Makes a block fetched from the store resident ahead of its append (the CUDA backend copies it
  // into its GPU tier now), so the engine can move each block to the device as soon as it has
  // arrived, while later blocks are still being fetched or encoded. Returns the handle (as
  // FindResident's), or null when the backend keeps no tier or did not keep this block (it does
  // not fit, its dtype needs converting, a copy failed): AppendBlock then does the work and
  // reports its errors. May run concurrently with every other call.
  virtual ResidentBlock MakeResident(const BlockView& block) {
    (void)block;
    return nullptr;
  }
  // Host memory that payloads handed to MakeResident/AppendBlock may lie in: a co-located cache
  // node's arena as the cache client maps it (the same-host data path). A backend that copies
  // payloads to a device may register it for direct DMA (the CUDA backend does, chunk by chunk
  // as copies read it); others ignore it. Remove only once no payload in the region is held.
  // Thread-safe.
  virtual void AddHostRegion(absl::Span<const uint8_t> region) { (void)region; }
  virtual void RemoveHostRegion(absl::Span<const uint8_t> region) { (void)region; }

  // Copies positions [begin, begin + n) of `seq` as f32 [layers][kv_heads][n][head_dim] into k
  // and v (the payload's layout). INVALID_ARGUMENT for a range outside the sequence or wrong
  // span sizes.
  virtual absl::Status ReadKv(const KvSequence& seq, int64_t begin, int64_t n, absl::Span<float> k,
                              absl::Span<float> v) const = 0;

 protected:
  // The argument checks of DecodeStep (see there), for overrides to run first.
  absl::Status CheckDecodeStep(absl::Span<KvSequence* const> seqs, absl::Span<const int32_t> tokens,
                               absl::Span<const float> logits) const {
    const ModelConfig& c = config();
    if (absl::Status s = CheckDistinct(seqs, "decode step"); !s.ok()) return s;
    if (tokens.size() != seqs.size() ||
        static_cast<int64_t>(logits.size()) < static_cast<int64_t>(seqs.size()) * c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("decode step: ", seqs.size(), " sequences, ",
                                                     tokens.size(), " tokens, ", logits.size(),
                                                     " logits (vocab ", c.vocab_size, ")"));
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (seqs[i]->length() >= seqs[i]->capacity()) {
        return absl::InvalidArgumentError(absl::StrCat("decode step: sequence ", i, " is full (",
                                                       seqs[i]->capacity(), " tokens)"));
      }
      if (absl::Status s = CheckTokenIds(tokens.subspan(i, 1)); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // The argument checks of ForwardBatch (see there), for overrides to run first.
  absl::Status CheckForwardBatch(absl::Span<KvSequence* const> seqs,
                                 absl::Span<const absl::Span<const int32_t>> tokens) const {
    if (absl::Status s = CheckDistinct(seqs, "forward batch"); !s.ok()) return s;
    if (tokens.size() != seqs.size()) {
      return absl::InvalidArgumentError(absl::StrCat("forward batch: ", seqs.size(), " sequences, ",
                                                     tokens.size(), " token lists"));
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int64_t n = static_cast<int64_t>(tokens[i].size());
      if (n == 0 || seqs[i]->length() + n > seqs[i]->capacity()) {
        return absl::InvalidArgumentError(
            absl::StrCat("forward batch: ", n, " tokens for sequence ", i, " (", seqs[i]->length(),
                         " of ", seqs[i]->capacity(), " tokens used)"));
      }
      if (absl::Status s = CheckTokenIds(tokens[i]); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  // INVALID_ARGUMENT (prefixed by `what`) for an empty batch or a null or repeated sequence.
  static absl::Status CheckDistinct(absl::Span<KvSequence* const> seqs, const char* what) {
    if (seqs.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": empty batch"));
    std::vector<const KvSequence*> sorted(seqs.begin(), seqs.end());
    std::sort(sorted.begin(), sorted.end());
    if (sorted.front() == nullptr ||
        std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": a sequence is null or repeated"));
    }
    return absl::OkStatus();
  }

  // INVALID_ARGUMENT for a token id outside the vocabulary.
  absl::Status CheckTokenIds(absl::Span<const int32_t> tokens) const {
    const int64_t vocab = config().vocab_size;
    for (int32_t id : tokens) {
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary of ", vocab));
      }
    }
    return absl::OkStatus();
  }
};

}  // namespace kvblock
