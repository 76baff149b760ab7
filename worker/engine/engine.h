// The block-attention engine: turns a request (blocks + final block + sampling) into tokens,
// with block KV going through the cache.
//
// Block mode: each block's key is ComputeBlockKey(fingerprint, kv dtype, tokens). A block the
// backend still holds on its device (Backend::FindResident: the CUDA backend's GPU tier) is
// used from there, with no store read. The other keys are
// looked up in the BlockStore; hits are read from it (the fetch, on a second thread) while the
// request's thread encodes the misses, each alone at positions 0..n-1 but several per backend
// pass (Backend::ForwardBatch), and Puts them back; a hit found unusable or evicted by the time
// it is read is encoded after the fetch. Every block, resident, hit or miss, then enters the
// sequence, its K re-encoded to the block's offset (the sum of the lengths of the
// blocks before it). The final block is prefilled at its real positions attending to all
// blocks and causally to itself; decoding samples until an EOS id of the model, a stop id of
// the request or max_new_tokens.
// Full mode: ordinary causal prefill of blocks[0] ++ ... ++ final_block, same decoding.
//
// Generation is split so that requests can be decoded together: Prefill (per request: blocks,
// final block, first token) returns a Decoding, and DecodeStep advances a batch of Decodings by
// one token each with one Backend::DecodeStep call (continuous batching: the caller may change
// the batch between steps). Generate is Prefill plus DecodeStep on a batch of one, so a request
// decodes through the same code alone or batched.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/block_key.h"
#include "cache/block_store.h"
#include "cache/dtype.h"
#include "kernels/cpu/sampling.h"
#include "worker/engine/backend.h"

namespace kvblock {

enum class AttentionMode { kBlock, kFull };
std::string_view AttentionModeName(AttentionMode mode);  // "block", "full"

struct GenerateRequest {
  std::vector<std::vector<int32_t>> blocks;  // may be empty; no block may be empty
  std::vector<int32_t> final_block;          // must not be empty
  int32_t max_new_tokens = 16;
  kernels::SamplingParams sampling;
  AttentionMode mode = AttentionMode::kBlock;
  bool return_logits = false;  // fill GenerateResult::logits
  std::vector<int32_t> stop_token_ids;  // end generation (included) besides the model's EOS ids
};

// Block mode's fetch and encode overlap: their sum may exceed the time they took together.
struct GenerateTimings {
  double lookup_ms = 0;   // keys and store lookups
  double fetch_ms = 0;    // reading the found blocks from the store (a second thread)
  double encode_ms = 0;   // encoding missed blocks and writing them back (the request's thread)
  double load_ms = 0;     // placing blocks in the sequence, K re-encoded
  double prefill_ms = 0;  // final block (block mode) or whole prompt (full mode)
  double decode_ms = 0;   // first token to last token
  double ttft_ms = 0;     // request start to first token
  double total_ms = 0;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids, an EOS that stopped generation included
  std::string stop_reason;      // "eos", "stop" (a stop_token_id), "max_new_tokens" or "context_limit"
  std::vector<float> logits;    // [final_block.size()][vocab] when return_logits
  int64_t cache_hits = 0;       // blocks read from the store
  int64_t cache_misses = 0;     // blocks encoded here
  int64_t cache_put_errors = 0; // misses that could not be written back (request still served)
  uint64_t fetched_bytes = 0;   // payload bytes read from the store
  GenerateTimings timings;
};

struct EngineOptions {
  // Element type of block payloads written to / expected from the store. Default: f32.
  KvDtype kv_dtype = KvDtype::kF32;
  // Write encoded blocks back to the store. Default: true.
  bool write_back = true;
  // Longest prompt + generated sequence, in tokens; 0 = the model's max_position_embeddings.
  // Default: 0.
  int64_t max_sequence_tokens = 0;
  // Largest max_new_tokens accepted. Default: 4096.
  int32_t max_new_tokens_limit = 4096;
  // Most tokens of the blocks encoded in one backend pass (EncodeBlocks, a request's misses);
  // a longer block is encoded alone. Bounds the activation memory of a pass. Default: 4096.
  int64_t encode_batch_tokens = 4096;
  // A request's blocks found in the store are fetched this many at once (threads, 1..64): one
  // data-plane fetch moves bytes at about one core's copy rate, so several fill the link.
  // Default: 8 (the cache client's default data-plane lanes).
  int32_t fetch_threads = 8;

  // INVALID_ARGUMENT for an invalid dtype, negative limits, encode_batch_tokens <= 0 or
  // fetch_threads outside 1..64.
  absl::Status Validate() const;
};

// One request from its prefill to its last token: made by Engine::Prefill, advanced by one token
// per Engine::DecodeStep. Not thread-safe: one owner at a time; must not outlive its Engine.
class Decoding {
 public:
  // True once the last token is sampled (EOS, a stop id, max_new_tokens or the context limit).
  bool done() const { return done_; }
  // Tokens sampled so far: the first comes from the prefill, each DecodeStep adds one.
  const std::vector<int32_t>& tokens() const { return result_.tokens; }
  // The result so far; stop_reason, decode_ms and total_ms are set once done().
  const GenerateResult& result() const { return result_; }
  GenerateResult TakeResult() { return std::move(result_); }

 private:
  friend class Engine;
  using Clock = std::chrono::steady_clock;
  Decoding(const GenerateRequest& request, int64_t vocab, Clock::time_point start);

  std::unique_ptr<KvSequence> seq_;
  kernels::SamplingParams sampling_;
  kernels::SamplingRng rng_;
  int32_t max_new_tokens_;
  std::vector<int32_t> stop_ids_;
  std::vector<float> probs_;    // sampling workspace
  std::vector<int32_t> order_;  // sampling workspace
  Clock::time_point start_;
  Clock::time_point first_token_;
  GenerateResult result_;
  bool done_ = false;
};

class Engine {
 public:
  // `store` is not owned and must outlive the engine. INVALID_ARGUMENT for bad options or a
  // null backend/store.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<Backend> backend,
                                                        BlockStore* store,
                                                        const ModelFingerprint& fingerprint,
                                                        const EngineOptions& options = {});

  // Thread-safe (requests share nothing but the backend and the store, both thread-safe).
  // INVALID_ARGUMENT for an empty final block, an empty block, a token id outside the
  // vocabulary, a prompt longer than the model's limit or bad sampling settings; the backend's
  // and store's errors otherwise.
  // Prefill(request), then DecodeStep on it alone until done.
  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& request);

  // Checks the request, resolves its blocks, prefills and samples the first token (unless
  // max_new_tokens is 0). Thread-safe. Errors as Generate's.
  absl::StatusOr<std::unique_ptr<Decoding>> Prefill(const GenerateRequest& request);
  // Feeds each Decoding's last token and samples its next one, all in one Backend::DecodeStep;
  // each samples with its own parameters and generator, so a request's tokens do not depend on
  // the batch it runs in (up to the backend's rounding). Thread-safe for disjoint batches.
  // INVALID_ARGUMENT for an empty batch, a null, repeated or done Decoding; the backend's errors
  // otherwise (the batch's Decodings are then unusable).
  absl::Status DecodeStep(absl::Span<Decoding* const> batch);

  // Encodes each block alone at positions 0..n-1 into a payload (the cache format), payloads[i]
  // for blocks[i]: consecutive blocks share one Backend::ForwardBatch up to
  // EngineOptions::encode_batch_tokens (whether a payload is then bit for bit the one encoded
  // alone is the backend's: CpuBackendOptions::batch_invariant). `before_batch`, if set, runs
  // before each pass and its error stops the encoding (e.g. a deadline). Thread-safe.
  // INVALID_ARGUMENT for an empty block or one longer than the model's limit; before_batch's
  // and the backend's errors otherwise.
  absl::StatusOr<std::vector<std::vector<uint8_t>>> EncodeBlocks(
      absl::Span<const absl::Span<const int32_t>> blocks,
      const std::function<absl::Status()>& before_batch = nullptr);
  // EncodeBlocks of one block.
  absl::StatusOr<std::vector<uint8_t>> EncodeBlock(absl::Span<const int32_t> tokens);
  BlockKey KeyOf(absl::Span<const int32_t> tokens) const;

  // A second engine over the same backend (one copy of the weights on the device) with its own
  // store and options, e.g. the worker's, whose store applies per-request cache policies.
  // `store` is not owned and must outlive it. INVALID_ARGUMENT for bad options or a null store.
  absl::StatusOr<std::unique_ptr<Engine>> WithStore(BlockStore* store,
                                                    const EngineOptions& options) const;

  const Backend& backend() const { return *backend_; }
  const ModelFingerprint& fingerprint() const { return fingerprint_; }

 private:
  Engine(std::shared_ptr<Backend> backend, BlockStore* store, const ModelFingerprint& fingerprint,
         const EngineOptions& options);
  struct ResolvedBlocks;
  absl::Status CheckRequest(const GenerateRequest& request, int64_t* prompt_tokens) const;
  // Block mode: the payload of every block of `r` (see the file comment), filling `out`'s
  // put errors, fetched bytes and lookup, fetch and encode timings.
  absl::Status ResolveBlocks(const GenerateRequest& r, ResolvedBlocks& blocks, GenerateResult& out);
  // Encodes the blocks r.blocks[i], i in `which`, makes them blocks.views and writes them back
  // (replacing the records `found` says exist, which were unusable).
  absl::Status EncodeMisses(const GenerateRequest& r, absl::Span<const BlockKey> keys,
                            absl::Span<const LookupResult> found, absl::Span<const size_t> which,
                            ResolvedBlocks& blocks, GenerateResult& out);
  // One backend pass of EncodeBlocks: payloads[i] for blocks[i] (checked).
  absl::Status EncodeBatch(absl::Span<const absl::Span<const int32_t>> blocks,
                           absl::Span<std::vector<uint8_t>> payloads);
  // Appends the next token of `d` sampled from `logits` ([vocab]) and decides whether d is done.
  absl::Status Sample(Decoding& d, absl::Span<const float> logits) const;

  std::shared_ptr<Backend> backend_;  // shared with engines made by WithStore
  BlockStore* store_;
  ModelFingerprint fingerprint_;
  EngineOptions options_;
};

}  // namespace kvblock
