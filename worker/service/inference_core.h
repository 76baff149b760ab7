// InferenceCore: the network-free heart of `kvblock worker` (kvblock.v1.InferenceService).
// It validates a v1::GenerateRequest (text or token-id segments, auto_split_text, sampling,
// attention mode, cache policy) and admits it (at most max_concurrent requests in progress plus
// a bounded queue; overload is RESOURCE_EXHAUSTED). A request in progress is prefilled on a
// prefill thread (Engine::Prefill: blocks, final block, first token) and then decoded by the one
// decode thread together with every other prefilled request (continuous batching: each step is
// one Engine::DecodeStep over up to max_decode_batch requests; requests join and leave between
// steps). New tokens are handed to the caller as they are sampled, then the result with Timings
// and a CacheReport. Cancellation and deadlines are checked before every step. Also
// EncodeBlocks (encode + Put) and Health. The gRPC reactors (inference_grpc_service.h) only
// authenticate, convert and stream.
//
// Cache policy is applied per request by PolicyStore, a BlockStore in front of the runtime's
// store that the core's own Engine uses: READ_ONLY drops the Puts of one request, BYPASS also
// reports every key missing. The policy and per-request counters travel in a thread-local set
// for the duration of Engine::Prefill (the only phase that uses the store; it calls it on the
// calling thread).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvblock/v1/inference.pb.h"
#include "worker/engine/engine.h"
#include "worker/service/runtime.h"

namespace kvblock {

struct InferenceCoreOptions {
  // Longest prompt accepted (blocks + final block, tokens). Default: 8192.
  int64_t max_prompt_tokens = 8192;
  // Requests in progress at once (prefilling or decoding). Default: 16.
  int32_t max_concurrent = 16;
  // Admitted requests that may wait to start; beyond it RESOURCE_EXHAUSTED. Default: 8.
  int32_t queue_size = 8;
  // Threads that prefill requests (block lookup, encoding of misses, final-block prefill), each
  // one request at a time. Default: 1.
  int32_t prefill_threads = 1;
  // Requests decoded together in one step at most; more take turns (round robin). Default: 16.
  int32_t max_decode_batch = 16;
  // Block size used by auto_split_text when the request gives 0 (tokens). Default: 256.
  int64_t auto_split_max_block_tokens = 256;
  // max_new_tokens used when the request gives 0 (tokens). Default: 16.
  int32_t default_max_new_tokens = 16;
  // Largest max_new_tokens accepted (tokens). Default: 4096.
  int32_t max_new_tokens_limit = 4096;
  // Most tokens of missed blocks encoded in one backend pass (EngineOptions::
  // encode_batch_tokens: bounds a pass's activation memory). Default: 4096.
  int64_t encode_batch_tokens = 4096;
  // A request's cached blocks fetched from the store at once (EngineOptions::fetch_threads,
  // 1..64). Default: 8.
  int32_t fetch_threads = 8;
  // Most generated tokens per streamed GenerateResponse: tokens are written as they are sampled;
  // those sampled while the previous message is still being sent go together. Default: 8.
  int32_t stream_chunk_tokens = 8;
  // KV dtype of the payloads; must match the runtime's (RuntimeOptions::kv_dtype) so keys agree.
  // Default: f32.
  KvDtype kv_dtype = KvDtype::kF32;
  // Called on the decode thread after every decode step with the step's batch size, before the
  // step's tokens are handed out (tests use it to order events deterministically; it may call
  // pending() and decoding(), nothing else of the core). Default: none.
  std::function<void(int batch_size)> decode_step_hook;

  // INVALID_ARGUMENT naming the field for non-positive limits or a negative queue.
  absl::Status Validate() const;
};

// What one Generate produced.
struct GenerateOutcome {
  std::vector<int32_t> tokens;  // generated ids (truncated after a stop id)
  std::string finish_reason;    // "eos", "length" or "stop"
  v1::Timings timings;
  v1::CacheReport cache;
};

// Per-request cache policy, as applied by PolicyStore.
enum class CachePolicyMode { kReadWrite, kReadOnly, kBypass };

class InferenceCore {
 public:
  // Borrows `runtime` (must outlive the core) and builds its own Engine over the runtime engine's
  // backend (shared: one copy of the weights) and a PolicyStore in front of runtime->store. Starts
  // prefill_threads prefill threads and the decode thread. INVALID_ARGUMENT for bad options or a
  // null runtime.
  static absl::StatusOr<std::unique_ptr<InferenceCore>> Create(Runtime* runtime,
                                                               InferenceCoreOptions options);
  // Waits for requests in progress; queued ones are completed with UNAVAILABLE.
  ~InferenceCore();

  using CancelledFn = std::function<bool()>;
  using TokensFn = std::function<void(absl::Span<const int32_t> tokens)>;
  using GenerateDone = std::function<void(absl::StatusOr<GenerateOutcome>)>;

  // Validates and converts `request` now (on the caller's thread), then prefills and decodes it
  // on the core's threads. `on_tokens` (nullable) gets the new tokens as they are sampled, in
  // order, each call before the next and all before `done`; it must not block. `done` is called
  // exactly once (also for every error), on the caller's thread for early errors, else on a core
  // thread; its outcome holds all tokens. `deadline` and `cancelled` (nullable, must be quick)
  // are checked on arrival, when the request starts, after prefill and before every decode step.
  // Codes: INVALID_ARGUMENT (bad request), RESOURCE_EXHAUSTED (max_concurrent in progress and
  // the queue full), DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE (shut down), and the engine's
  // errors. Thread-safe.
  void GenerateAsync(const v1::GenerateRequest& request, absl::Time arrival, absl::Time deadline,
                     CancelledFn cancelled, TokensFn on_tokens, GenerateDone done);
  // GenerateAsync, waiting for the result. Thread-safe; codes as above.
  absl::StatusOr<GenerateOutcome> Generate(const v1::GenerateRequest& request,
                                           absl::Time deadline = absl::InfiniteFuture(),
                                           CancelledFn cancelled = nullptr);

  // Encodes each block alone, Puts it unless already cached (reported as already_cached), on the
  // caller's thread; with return_payloads returns every block's payload instead (no lookup, no
  // Put). INVALID_ARGUMENT for no blocks, an empty block, bad token ids, more tokens than
  // max_prompt_tokens or a dtype other than the worker's; DEADLINE_EXCEEDED; the engine's and
  // store's errors. Thread-safe.
  absl::StatusOr<v1::EncodeBlocksResponse> EncodeBlocks(const v1::EncodeBlocksRequest& request,
                                                        absl::Time deadline);
  // Model id, fingerprint, backend, limits. Thread-safe.
  v1::HealthResponse Health() const;

  // Decodes ids with the model's tokenizer ("" when it cannot). Thread-safe.
  std::string Decode(absl::Span<const int32_t> ids) const;
  // Requests admitted and not finished (in progress + queued). Thread-safe.
  int64_t pending() const;
  // Requests prefilled and decoding now. Thread-safe.
  int64_t decoding() const;
  const InferenceCoreOptions& options() const { return options_; }

 private:
  struct Job;
  InferenceCore(Runtime* runtime, InferenceCoreOptions options);
  void PrefillLoop();
  // Prefills one job on this prefill thread (cancellation checks, Engine::Prefill, first token).
  absl::Status Prefill(Job& job);
  void DecodeLoop();
  // Ends a job in progress: frees its slot, then calls its `done` with `status` or its outcome.
  void Retire(std::unique_ptr<Job> job, const absl::Status& status);
  // OK, or CANCELLED / DEADLINE_EXCEEDED naming `phase`.
  static absl::Status CheckAlive(const Job& job, const char* phase);
  absl::StatusOr<std::vector<int32_t>> SegmentTokens(const v1::Segment& segment,
                                                     const std::string& where) const;

  Runtime* const runtime_;
  const InferenceCoreOptions options_;
  std::unique_ptr<BlockStore> policy_store_;
  std::unique_ptr<Engine> engine_;
  int64_t vocab_size_ = 0;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Job>> queue_ ABSL_GUARDED_BY(mu_);     // admitted, not started
  std::deque<std::unique_ptr<Job>> decoding_ ABSL_GUARDED_BY(mu_);  // prefilled, between steps
  int64_t in_progress_ ABSL_GUARDED_BY(mu_) = 0;                    // started and not retired
  int64_t decoding_count_ ABSL_GUARDED_BY(mu_) = 0;                 // prefilled and not retired
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> prefill_threads_;
  std::thread decode_thread_;
};

}  // namespace kvblock
