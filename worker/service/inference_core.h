// InferenceCore: the network-free heart of `kvblock worker` (kvblock.v1.InferenceService).
// It validates a v1::GenerateRequest (text or token-id segments, auto_split_text, sampling,
// attention mode, cache policy), admits it to a bounded pool (max_concurrent threads plus a
// bounded queue; overload is RESOURCE_EXHAUSTED), runs Engine::Generate there and returns the
// tokens with Timings and a CacheReport. Also EncodeBlocks (encode + Put) and Health. The gRPC
// reactors (inference_grpc_service.h) only authenticate, convert and stream.
//
// Cache policy is applied per request by PolicyStore, a BlockStore in front of the runtime's
// store that the core's own Engine uses: READ_ONLY drops the Puts of one request, BYPASS also
// reports every key missing. The policy and per-request counters travel in a thread-local set
// for the duration of Engine::Generate (the engine calls its store on the calling thread).
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
  // Requests run at the same time (pool threads). Default: 1.
  int32_t max_concurrent = 1;
  // Admitted requests that may wait for a pool thread; beyond it RESOURCE_EXHAUSTED. Default: 8.
  int32_t queue_size = 8;
  // Block size used by auto_split_text when the request gives 0 (tokens). Default: 256.
  int64_t auto_split_max_block_tokens = 256;
  // max_new_tokens used when the request gives 0 (tokens). Default: 16.
  int32_t default_max_new_tokens = 16;
  // Largest max_new_tokens accepted (tokens). Default: 4096.
  int32_t max_new_tokens_limit = 4096;
  // Generated tokens per streamed GenerateResponse (the engine returns all tokens at the end;
  // the reactor streams them in chunks of this size). Default: 8.
  int32_t stream_chunk_tokens = 8;
  // Backend name reported by Health. Default: "cpu".
  std::string backend = "cpu";
  // KV dtype of the payloads; must match the runtime's (RuntimeOptions::kv_dtype) so keys agree.
  // Default: f32.
  KvDtype kv_dtype = KvDtype::kF32;

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
  // Borrows `runtime` (must outlive the core) and builds its own Engine over the runtime's model
  // weights (shared, not copied) and a PolicyStore in front of runtime->store. Starts
  // max_concurrent pool threads. INVALID_ARGUMENT for bad options or a null runtime.
  static absl::StatusOr<std::unique_ptr<InferenceCore>> Create(Runtime* runtime,
                                                               InferenceCoreOptions options);
  // Waits for running requests; queued ones are completed with UNAVAILABLE.
  ~InferenceCore();

  using CancelledFn = std::function<bool()>;
  using GenerateDone = std::function<void(absl::StatusOr<GenerateOutcome>)>;

  // Validates and converts `request` now (on the caller's thread), then runs it on the pool and
  // calls `done` there exactly once (also for every error). `deadline` and `cancelled`
  // (nullable) are checked on arrival, when a pool thread picks the request up, after
  // tokenization and after generation. Codes: INVALID_ARGUMENT (bad request),
  // RESOURCE_EXHAUSTED (pool and queue full), DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE (shut
  // down), and the engine's errors. Thread-safe.
  void GenerateAsync(const v1::GenerateRequest& request, absl::Time arrival, absl::Time deadline,
                     CancelledFn cancelled, GenerateDone done);
  // GenerateAsync, waiting for the result. Thread-safe; codes as above.
  absl::StatusOr<GenerateOutcome> Generate(const v1::GenerateRequest& request,
                                           absl::Time deadline = absl::InfiniteFuture(),
                                           CancelledFn cancelled = nullptr);

  // Encodes each block alone, Puts it unless already cached (reported as already_cached), on the
  // caller's thread. INVALID_ARGUMENT for no blocks, an empty block, bad token ids or a dtype
  // other than the worker's; DEADLINE_EXCEEDED; the engine's and store's errors. Thread-safe.
  absl::StatusOr<v1::EncodeBlocksResponse> EncodeBlocks(const v1::EncodeBlocksRequest& request,
                                                        absl::Time deadline);
  // Model id, fingerprint, backend, limits. Thread-safe.
  v1::HealthResponse Health() const;

  // Decodes ids with the model's tokenizer ("" when it cannot). Thread-safe.
  std::string Decode(absl::Span<const int32_t> ids) const;
  // Requests admitted and not finished (running + queued). Thread-safe.
  int64_t pending() const;
  const InferenceCoreOptions& options() const { return options_; }

 private:
  struct Job;
  InferenceCore(Runtime* runtime, InferenceCoreOptions options);
  void PoolLoop();
  // Runs one job on this pool thread (phases, cancellation checks, engine, outcome).
  absl::StatusOr<GenerateOutcome> Run(Job& job);
  absl::StatusOr<std::vector<int32_t>> SegmentTokens(const v1::Segment& segment,
                                                     const std::string& where) const;

  Runtime* const runtime_;
  const InferenceCoreOptions options_;
  std::unique_ptr<BlockStore> policy_store_;
  std::unique_ptr<Engine> engine_;
  int64_t vocab_size_ = 0;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Job>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvblock
