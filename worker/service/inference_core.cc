#include "worker/service/inference_core.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "services/proto_convert.h"
#include "worker/indexer/block_splitter.h"

namespace kvblock {
namespace {

// Per-request state of PolicyStore, set on the prefill thread for the duration of one Prefill.
struct RequestCacheScope {
  CachePolicyMode policy = CachePolicyMode::kReadWrite;
  int64_t local_hits = 0;  // present keys not served by the remote tier
};
thread_local RequestCacheScope* tls_scope = nullptr;

double MsBetween(absl::Time a, absl::Time b) { return absl::ToDoubleMilliseconds(b - a); }

// Applies the cache policy of the request running on this thread (none: read-write). The
// engine's Lookup, Put and Delete run on the request's prefill thread; its Gets may run on a
// fetch thread of its own, so Get is not filtered: a bypassed request's Lookup finds nothing,
// and the engine reads only what its Lookup found.
class PolicyStore final : public BlockStore {
 public:
  explicit PolicyStore(BlockStore* inner) : inner_(inner) {}
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override {
    if (tls_scope != nullptr && tls_scope->policy != CachePolicyMode::kReadWrite) {
      return absl::OkStatus();  // READ_ONLY / BYPASS: the miss is not written
    }
    return inner_->Put(key, payload);
  }
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override { return inner_->Get(key); }
  void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) override {
    if (tls_scope != nullptr && tls_scope->policy == CachePolicyMode::kBypass) {
      for (LookupResult& r : out) r = LookupResult{};
      return;
    }
    inner_->Lookup(keys, out);
    if (tls_scope != nullptr) {
      for (const LookupResult& r : out) {
        if (r.present && r.tier != StoreTier::kRemote) ++tls_scope->local_hits;
      }
    }
  }
  absl::Status Delete(const BlockKey& key) override {
    if (tls_scope != nullptr && tls_scope->policy != CachePolicyMode::kReadWrite) {
      return absl::OkStatus();
    }
    return inner_->Delete(key);
  }
  absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) override {
    return inner_->DeleteModel(model);
  }
  std::vector<TierStats> Stats() const override { return inner_->Stats(); }

 private:
  BlockStore* inner_;
};

absl::Status CheckDeadline(absl::Time deadline, const char* phase) {
  if (absl::Now() >= deadline) {
    return absl::DeadlineExceededError(absl::StrCat("deadline passed ", phase));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status InferenceCoreOptions::Validate() const {
  if (max_prompt_tokens <= 0) return absl::InvalidArgumentError("max_prompt_tokens must be > 0");
  if (max_concurrent <= 0) return absl::InvalidArgumentError("max_concurrent must be > 0");
  if (queue_size < 0) return absl::InvalidArgumentError("queue_size must be >= 0");
  if (prefill_threads <= 0) return absl::InvalidArgumentError("prefill_threads must be > 0");
  if (max_decode_batch <= 0) return absl::InvalidArgumentError("max_decode_batch must be > 0");
  if (auto_split_max_block_tokens <= 0) {
    return absl::InvalidArgumentError("auto_split_max_block_tokens must be > 0");
  }
  if (default_max_new_tokens <= 0) {
    return absl::InvalidArgumentError("default_max_new_tokens must be > 0");
  }
  if (max_new_tokens_limit < default_max_new_tokens) {
    return absl::InvalidArgumentError("max_new_tokens_limit must be >= default_max_new_tokens");
  }
  if (encode_batch_tokens <= 0) return absl::InvalidArgumentError("encode_batch_tokens must be > 0");
  if (stream_chunk_tokens <= 0) {
    return absl::InvalidArgumentError("stream_chunk_tokens must be > 0");
  }
  return absl::OkStatus();
}

struct InferenceCore::Job {
  GenerateRequest request;
  CachePolicyMode policy = CachePolicyMode::kReadWrite;
  absl::Time arrival;
  absl::Time deadline;
  absl::Time start;  // when its prefill began
  double tokenize_ms = 0;
  CancelledFn cancelled;
  TokensFn on_tokens;
  GenerateDone done;
  RequestCacheScope cache;             // what the prefill's store calls saw
  std::unique_ptr<Decoding> decoding;  // set by the prefill
  size_t streamed = 0;                 // tokens handed to on_tokens
  bool decoding_counted = false;       // counted in decoding_count_

  // Hands the tokens sampled since the last call to on_tokens.
  void StreamNewTokens() {
    const std::vector<int32_t>& tokens = decoding->tokens();
    if (on_tokens && tokens.size() > streamed) {
      on_tokens(absl::MakeConstSpan(tokens).subspan(streamed));
    }
    streamed = tokens.size();
  }

  // The finished request as the service reports it.
  GenerateOutcome Outcome() {
    GenerateResult result = decoding->TakeResult();
    GenerateOutcome out;
    out.tokens = std::move(result.tokens);
    out.finish_reason =
        result.stop_reason == "eos" || result.stop_reason == "stop" ? result.stop_reason : "length";
    const GenerateTimings& t = result.timings;
    out.timings.set_tokenize_ms(tokenize_ms);
    out.timings.set_lookup_ms(t.lookup_ms);
    out.timings.set_fetch_ms(t.fetch_ms);
    out.timings.set_compute_misses_ms(t.encode_ms);
    out.timings.set_prefill_ms(t.load_ms + t.prefill_ms);
    out.timings.set_first_token_ms(MsBetween(arrival, start) + t.ttft_ms);
    out.timings.set_total_ms(MsBetween(arrival, absl::Now()));
    out.cache.set_hits(static_cast<uint32_t>(result.cache_hits));
    out.cache.set_misses(static_cast<uint32_t>(result.cache_misses));
    out.cache.set_gpu_hits(
        static_cast<uint32_t>(std::min<int64_t>(cache.local_hits, result.cache_hits)));
    out.cache.set_fetched_bytes(result.fetched_bytes);
    return out;
  }
};

absl::StatusOr<std::unique_ptr<InferenceCore>> InferenceCore::Create(Runtime* runtime,
                                                                     InferenceCoreOptions options) {
  if (runtime == nullptr || runtime->store == nullptr || runtime->engine == nullptr) {
    return absl::InvalidArgumentError("InferenceCore needs an opened runtime");
  }
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<InferenceCore> core(new InferenceCore(runtime, std::move(options)));
  core->policy_store_ = std::make_unique<PolicyStore>(runtime->store);
  EngineOptions eo;
  eo.max_new_tokens_limit = core->options_.max_new_tokens_limit;
  eo.encode_batch_tokens = core->options_.encode_batch_tokens;
  eo.fetch_threads = core->options_.fetch_threads;
  eo.kv_dtype = core->options_.kv_dtype;
  // The runtime's backend (the one --backend chose), not a second copy of the weights.
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      runtime->engine->WithStore(core->policy_store_.get(), eo);
  if (!engine.ok()) return engine.status();
  core->engine_ = std::move(*engine);
  core->vocab_size_ = runtime->model.config.vocab_size;
  for (int i = 0; i < core->options_.prefill_threads; ++i) {
    core->prefill_threads_.emplace_back([c = core.get()] { c->PrefillLoop(); });
  }
  core->decode_thread_ = std::thread([c = core.get()] { c->DecodeLoop(); });
  return core;
}

InferenceCore::InferenceCore(Runtime* runtime, InferenceCoreOptions options)
    : runtime_(runtime), options_(std::move(options)) {}

InferenceCore::~InferenceCore() {
  std::deque<std::unique_ptr<Job>> orphans;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    orphans.swap(queue_);
  }
  for (auto& job : orphans) job->done(absl::UnavailableError("worker shutting down"));
  // Prefill threads finish their requests and hand them to the decode thread, which ends once
  // nothing is in progress.
  for (std::thread& t : prefill_threads_) t.join();
  if (decode_thread_.joinable()) decode_thread_.join();
}

int64_t InferenceCore::pending() const {
  absl::MutexLock lock(&mu_);
  return in_progress_ + static_cast<int64_t>(queue_.size());
}

int64_t InferenceCore::decoding() const {
  absl::MutexLock lock(&mu_);
  return decoding_count_;
}

std::string InferenceCore::Decode(absl::Span<const int32_t> ids) const {
  if (runtime_->tokenizer == nullptr) return "";
  absl::StatusOr<std::string> text = runtime_->tokenizer->Decode(ids);
  return text.ok() ? *std::move(text) : std::string();
}

absl::StatusOr<std::vector<int32_t>> InferenceCore::SegmentTokens(const v1::Segment& segment,
                                                                  const std::string& where) const {
  std::vector<int32_t> ids;
  if (segment.has_tokens()) {
    ids.assign(segment.tokens().ids().begin(), segment.tokens().ids().end());
  } else if (segment.content_case() == v1::Segment::kText) {
    if (runtime_->tokenizer == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " is text but the model has no tokenizer"));
    }
    absl::StatusOr<std::vector<int32_t>> enc = runtime_->tokenizer->Encode(segment.text());
    if (!enc.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", enc.status().message()));
    }
    ids = *std::move(enc);
  }
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat(where, " is empty"));
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": token id ", id, " outside the vocabulary [0, ", vocab_size_, ")"));
    }
  }
  return ids;
}

void InferenceCore::GenerateAsync(const v1::GenerateRequest& request, absl::Time arrival,
                                  absl::Time deadline, CancelledFn cancelled, TokensFn on_tokens,
                                  GenerateDone done) {
  auto job = std::make_unique<Job>();
  job->arrival = arrival;
  job->deadline = deadline;
  job->cancelled = std::move(cancelled);
  job->on_tokens = std::move(on_tokens);
  job->done = std::move(done);
  // Validation and conversion, on the caller's thread (cheap next to generation).
  absl::Status status = [&]() -> absl::Status {
    if (absl::Status s = CheckDeadline(deadline, "before the request started"); !s.ok()) return s;
    GenerateRequest& r = job->request;
    const absl::Time t0 = absl::Now();
    if (!request.auto_split_text().empty()) {
      if (request.blocks_size() > 0) {
        return absl::InvalidArgumentError("give either blocks or auto_split_text, not both");
      }
      if (runtime_->tokenizer == nullptr) {
        return absl::InvalidArgumentError("auto_split_text needs the model's tokenizer");
      }
      const int64_t max_block = request.auto_split_max_block_tokens() > 0
                                    ? request.auto_split_max_block_tokens()
                                    : options_.auto_split_max_block_tokens;
      const std::string& text = request.auto_split_text();
      absl::StatusOr<std::vector<std::vector<int32_t>>> blocks = SplitIntoBlocks(
          *runtime_->tokenizer, std::string_view(text.data(), text.size()), max_block);
      if (!blocks.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("auto_split_text: ", blocks.status().message()));
      }
      r.blocks = *std::move(blocks);
    } else {
      for (int i = 0; i < request.blocks_size(); ++i) {
        absl::StatusOr<std::vector<int32_t>> ids =
            SegmentTokens(request.blocks(i), absl::StrCat("blocks[", i, "]"));
        if (!ids.ok()) return ids.status();
        r.blocks.push_back(*std::move(ids));
      }
    }
    absl::StatusOr<std::vector<int32_t>> final_ids =
        SegmentTokens(request.final_block(), "final_block");
    if (!final_ids.ok()) return final_ids.status();
    r.final_block = *std::move(final_ids);
    int64_t prompt = static_cast<int64_t>(r.final_block.size());
    for (const auto& b : r.blocks) prompt += static_cast<int64_t>(b.size());
    if (prompt > options_.max_prompt_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt of ", prompt, " tokens exceeds max_prompt_tokens ", options_.max_prompt_tokens));
    }
    job->tokenize_ms = MsBetween(t0, absl::Now());

    const v1::SamplingParams& sp = request.sampling();
    const uint32_t max_new = sp.max_new_tokens() == 0
                                 ? static_cast<uint32_t>(options_.default_max_new_tokens)
                                 : sp.max_new_tokens();
    if (max_new > static_cast<uint32_t>(options_.max_new_tokens_limit)) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_new_tokens ", max_new, " exceeds ", options_.max_new_tokens_limit));
    }
    r.max_new_tokens = static_cast<int32_t>(max_new);
    if (!(sp.temperature() >= 0.0f)) {
      return absl::InvalidArgumentError("temperature must be >= 0");
    }
    if (sp.top_p() < 0.0f || sp.top_p() > 1.0f) {
      return absl::InvalidArgumentError("top_p must be in [0, 1]");
    }
    r.sampling.temperature = sp.temperature();
    r.sampling.top_k = static_cast<int32_t>(std::min<uint32_t>(sp.top_k(), 1u << 30));
    r.sampling.top_p = sp.top_p() == 0.0f ? 1.0f : sp.top_p();
    r.sampling.seed = sp.seed();
    if (absl::Status s = r.sampling.Validate(); !s.ok()) return s;
    for (int32_t id : sp.stop_token_ids()) {
      if (id < 0 || id >= vocab_size_) {
        return absl::InvalidArgumentError(
            absl::StrCat("stop token id ", id, " outside the vocabulary"));
      }
      r.stop_token_ids.push_back(id);
    }
    switch (request.mode()) {
      case v1::ATTENTION_MODE_UNSPECIFIED:
      case v1::ATTENTION_MODE_BLOCK:
        r.mode = AttentionMode::kBlock;
        break;
      case v1::ATTENTION_MODE_FULL:
        r.mode = AttentionMode::kFull;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat("unknown mode ", request.mode()));
    }
    switch (request.cache_policy()) {
      case v1::CACHE_POLICY_UNSPECIFIED:
      case v1::CACHE_POLICY_READ_WRITE:
        job->policy = CachePolicyMode::kReadWrite;
        break;
      case v1::CACHE_POLICY_READ_ONLY:
        job->policy = CachePolicyMode::kReadOnly;
        break;
      case v1::CACHE_POLICY_BYPASS:
        job->policy = CachePolicyMode::kBypass;
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("unknown cache_policy ", request.cache_policy()));
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    job->done(status);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    if (stop_) {
      status = absl::UnavailableError("worker shutting down");
    } else if (in_progress_ + static_cast<int64_t>(queue_.size()) >=
               options_.max_concurrent + options_.queue_size) {
      status = absl::ResourceExhaustedError(
          absl::StrCat("worker overloaded: ", in_progress_, " in progress, ", queue_.size(),
                       " queued (max_concurrent ", options_.max_concurrent, ", queue_size ",
                       options_.queue_size, ")"));
    } else {
      queue_.push_back(std::move(job));
      return;
    }
  }
  job->done(status);
}

absl::StatusOr<GenerateOutcome> InferenceCore::Generate(const v1::GenerateRequest& request,
                                                        absl::Time deadline,
                                                        CancelledFn cancelled) {
  absl::Notification finished;
  absl::StatusOr<GenerateOutcome> result = absl::UnknownError("not run");
  GenerateAsync(request, absl::Now(), deadline, std::move(cancelled), nullptr,
                [&](absl::StatusOr<GenerateOutcome> r) {
                  result = std::move(r);
                  finished.Notify();
                });
  finished.WaitForNotification();
  return result;
}

absl::Status InferenceCore::CheckAlive(const Job& job, const char* phase) {
  // The deadline first: gRPC also marks a call whose deadline passed as cancelled.
  if (absl::Status s = CheckDeadline(job.deadline, phase); !s.ok()) return s;
  if (job.cancelled && job.cancelled()) {
    return absl::CancelledError(absl::StrCat("request cancelled ", phase));
  }
  return absl::OkStatus();
}

void InferenceCore::Retire(std::unique_ptr<Job> job, const absl::Status& status) {
  absl::StatusOr<GenerateOutcome> result =
      status.ok() ? absl::StatusOr<GenerateOutcome>(job->Outcome()) : status;
  {
    // The slot is free before the caller hears of the result, so a caller that sends its next
    // request on completion is not refused.
    absl::MutexLock lock(&mu_);
    --in_progress_;
    if (job->decoding_counted) --decoding_count_;
  }
  job->done(std::move(result));
}

void InferenceCore::PrefillLoop() {
  while (true) {
    std::unique_ptr<Job> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](InferenceCore* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
            return c->stop_ || (!c->queue_.empty() && c->in_progress_ < c->options_.max_concurrent);
          },
          this));
      if (queue_.empty()) return;  // stop_ and nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
      ++in_progress_;
    }
    absl::Status status = Prefill(*job);
    if (!status.ok() || job->decoding->done()) {
      Retire(std::move(job), status);
      continue;
    }
    absl::MutexLock lock(&mu_);
    job->decoding_counted = true;
    ++decoding_count_;
    decoding_.push_back(std::move(job));
  }
}

absl::Status InferenceCore::Prefill(Job& job) {
  if (absl::Status s = CheckAlive(job, "while queued"); !s.ok()) return s;
  job.start = absl::Now();
  job.cache.policy = job.policy;
  tls_scope = &job.cache;
  absl::StatusOr<std::unique_ptr<Decoding>> decoding = engine_->Prefill(job.request);
  tls_scope = nullptr;
  if (!decoding.ok()) return decoding.status();
  job.decoding = *std::move(decoding);
  if (absl::Status s = CheckAlive(job, "after prefill"); !s.ok()) return s;
  job.StreamNewTokens();  // the first token, before the job reaches the decode thread
  return absl::OkStatus();
}

void InferenceCore::DecodeLoop() {
  std::vector<std::unique_ptr<Job>> batch;
  std::vector<Decoding*> decodings;
  while (true) {
    batch.clear();
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](InferenceCore* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
            return !c->decoding_.empty() || (c->stop_ && c->in_progress_ == 0);
          },
          this));
      if (decoding_.empty()) return;  // stopped and nothing in progress
      // The front of the queue: those left out go first next step, those taken rejoin at the back.
      while (!decoding_.empty() && static_cast<int>(batch.size()) < options_.max_decode_batch) {
        batch.push_back(std::move(decoding_.front()));
        decoding_.pop_front();
      }
    }
    // Cancelled and late requests leave before the step.
    decodings.clear();
    for (std::unique_ptr<Job>& job : batch) {
      if (absl::Status s = CheckAlive(*job, "while decoding"); !s.ok()) {
        Retire(std::move(job), s);
        continue;
      }
      decodings.push_back(job->decoding.get());
    }
    if (decodings.empty()) continue;
    const absl::Status step = engine_->DecodeStep(decodings);
    if (options_.decode_step_hook) options_.decode_step_hook(static_cast<int>(decodings.size()));
    std::vector<std::unique_ptr<Job>> kept;
    for (std::unique_ptr<Job>& job : batch) {
      if (job == nullptr) continue;  // retired above
      if (!step.ok()) {
        Retire(std::move(job), step);
        continue;
      }
      job->StreamNewTokens();
      if (job->decoding->done()) {
        Retire(std::move(job), absl::OkStatus());
      } else {
        kept.push_back(std::move(job));
      }
    }
    absl::MutexLock lock(&mu_);
    for (std::unique_ptr<Job>& job : kept) decoding_.push_back(std::move(job));
  }
}

absl::StatusOr<v1::EncodeBlocksResponse> InferenceCore::EncodeBlocks(
    const v1::EncodeBlocksRequest& request, absl::Time deadline) {
  if (absl::Status s = CheckDeadline(deadline, "before the request started"); !s.ok()) return s;
  if (request.blocks_size() == 0) return absl::InvalidArgumentError("no blocks");
  const KvDtype dtype = options_.kv_dtype;
  if (request.dtype() != v1::KV_DTYPE_UNSPECIFIED && request.dtype() != ToProto(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", v1::KvDtype_Name(request.dtype()),
                                                   " differs from the worker's ",
                                                   v1::KvDtype_Name(ToProto(dtype))));
  }
  std::vector<std::vector<int32_t>> blocks;
  for (int i = 0; i < request.blocks_size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> ids =
        SegmentTokens(request.blocks(i), absl::StrCat("blocks[", i, "]"));
    if (!ids.ok()) return ids.status();
    blocks.push_back(*std::move(ids));
  }
  int64_t tokens = 0;
  for (const auto& b : blocks) tokens += static_cast<int64_t>(b.size());
  if (tokens > options_.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("the blocks hold ", tokens,
                                                   " tokens, more than the worker's limit of ",
                                                   options_.max_prompt_tokens, " per call"));
  }
  const absl::Time t0 = absl::Now();
  v1::EncodeBlocksResponse out;
  std::vector<BlockKey> keys;
  for (const auto& b : blocks) keys.push_back(engine_->KeyOf(b));
  // With return_payloads the caller stores the blocks: nothing is looked up or written here.
  std::vector<LookupResult> found(keys.size());
  if (!request.return_payloads()) runtime_->store->Lookup(keys, absl::MakeSpan(found));
  std::vector<size_t> missing;
  std::vector<absl::Span<const int32_t>> to_encode;
  for (size_t i = 0; i < blocks.size(); ++i) {
    v1::EncodedBlock* eb = out.add_blocks();
    ToProto(keys[i], eb->mutable_key());
    eb->set_num_tokens(static_cast<uint32_t>(blocks[i].size()));
    eb->set_already_cached(found[i].present);
    if (found[i].present) continue;
    missing.push_back(i);
    to_encode.push_back(blocks[i]);
  }
  // Batched; the deadline is checked before each backend pass.
  absl::StatusOr<std::vector<std::vector<uint8_t>>> payloads = engine_->EncodeBlocks(
      to_encode, [deadline] { return CheckDeadline(deadline, "while encoding"); });
  if (!payloads.ok()) return payloads.status();
  for (size_t j = 0; j < missing.size(); ++j) {
    const std::vector<uint8_t>& payload = (*payloads)[j];
    if (request.return_payloads()) {
      out.mutable_blocks(static_cast<int>(missing[j]))->set_payload(payload.data(), payload.size());
    } else if (absl::Status s = runtime_->store->Put(keys[missing[j]], payload); !s.ok()) {
      return s;
    }
  }
  out.set_encode_ms(MsBetween(t0, absl::Now()));
  return out;
}

v1::HealthResponse InferenceCore::Health() const {
  v1::HealthResponse h;
  h.set_ready(true);
  h.set_model_id(runtime_->model.dir);
  ToProto(runtime_->model.fingerprint, h.mutable_model_fingerprint());
  h.set_backend(std::string(engine_->backend().name()));
  h.set_max_prompt_tokens(static_cast<uint32_t>(options_.max_prompt_tokens));
  h.set_version("kvblock 0.1.0");
  return h;
}

}  // namespace kvblock
