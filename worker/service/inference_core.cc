#include "worker/service/inference_core.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "services/proto_convert.h"
#include "worker/engine/cpu_backend.h"
#include "worker/indexer/block_splitter.h"

namespace kvblock {
namespace {

// Per-request state of PolicyStore, set on the pool thread for the duration of one Generate.
struct RequestCacheScope {
  CachePolicyMode policy = CachePolicyMode::kReadWrite;
  int64_t local_hits = 0;  // present keys not served by the remote tier
  uint64_t fetched_bytes = 0;
  double fetch_ms = 0;
};
thread_local RequestCacheScope* tls_scope = nullptr;

double MsBetween(absl::Time a, absl::Time b) { return absl::ToDoubleMilliseconds(b - a); }

// Applies the cache policy of the request running on this thread (none: read-write).
class PolicyStore final : public BlockStore {
 public:
  explicit PolicyStore(BlockStore* inner) : inner_(inner) {}
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override {
    if (tls_scope != nullptr && tls_scope->policy != CachePolicyMode::kReadWrite) {
      return absl::OkStatus();  // READ_ONLY / BYPASS: the miss is not written
    }
    return inner_->Put(key, payload);
  }
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override {
    if (tls_scope != nullptr && tls_scope->policy == CachePolicyMode::kBypass) {
      return absl::NotFoundError("cache bypassed");
    }
    const absl::Time t0 = absl::Now();
    absl::StatusOr<BlockBytes> got = inner_->Get(key);
    if (tls_scope != nullptr) {
      tls_scope->fetch_ms += MsBetween(t0, absl::Now());
      if (got.ok()) tls_scope->fetched_bytes += got->bytes.size();
    }
    return got;
  }
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
  if (auto_split_max_block_tokens <= 0) {
    return absl::InvalidArgumentError("auto_split_max_block_tokens must be > 0");
  }
  if (default_max_new_tokens <= 0) {
    return absl::InvalidArgumentError("default_max_new_tokens must be > 0");
  }
  if (max_new_tokens_limit < default_max_new_tokens) {
    return absl::InvalidArgumentError("max_new_tokens_limit must be >= default_max_new_tokens");
  }
  if (stream_chunk_tokens <= 0) {
    return absl::InvalidArgumentError("stream_chunk_tokens must be > 0");
  }
  return absl::OkStatus();
}

struct InferenceCore::Job {
  GenerateRequest request;
  CachePolicyMode policy = CachePolicyMode::kReadWrite;
  std::vector<int32_t> stop_ids;
  absl::Time arrival;
  absl::Time deadline;
  double tokenize_ms = 0;
  CancelledFn cancelled;
  GenerateDone done;
};

absl::StatusOr<std::unique_ptr<InferenceCore>> InferenceCore::Create(Runtime* runtime,
                                                                     InferenceCoreOptions options) {
  if (runtime == nullptr || runtime->store == nullptr || runtime->model.weights == nullptr) {
    return absl::InvalidArgumentError("InferenceCore needs an opened runtime");
  }
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<InferenceCore> core(new InferenceCore(runtime, std::move(options)));
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateCpuBackend(runtime->model.weights, runtime->model.config);
  if (!backend.ok()) return backend.status();
  core->policy_store_ = std::make_unique<PolicyStore>(runtime->store);
  EngineOptions eo;
  eo.max_new_tokens_limit = core->options_.max_new_tokens_limit;
  eo.kv_dtype = core->options_.kv_dtype;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(
      std::move(*backend), core->policy_store_.get(), runtime->model.fingerprint, eo);
  if (!engine.ok()) return engine.status();
  core->engine_ = std::move(*engine);
  core->vocab_size_ = runtime->model.config.vocab_size;
  for (int i = 0; i < core->options_.max_concurrent; ++i) {
    core->threads_.emplace_back([c = core.get()] { c->PoolLoop(); });
  }
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
  for (std::thread& t : threads_) t.join();
}

int64_t InferenceCore::pending() const {
  absl::MutexLock lock(&mu_);
  return running_ + static_cast<int64_t>(queue_.size());
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
                                  absl::Time deadline, CancelledFn cancelled, GenerateDone done) {
  auto job = std::make_unique<Job>();
  job->arrival = arrival;
  job->deadline = deadline;
  job->cancelled = std::move(cancelled);
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
      job->stop_ids.push_back(id);
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
    } else if (running_ + static_cast<int64_t>(queue_.size()) >=
               options_.max_concurrent + options_.queue_size) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "worker overloaded: ", running_, " running, ", queue_.size(), " queued (max_concurrent ",
          options_.max_concurrent, ", queue_size ", options_.queue_size, ")"));
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
  GenerateAsync(request, absl::Now(), deadline, std::move(cancelled),
                [&](absl::StatusOr<GenerateOutcome> r) {
                  result = std::move(r);
                  finished.Notify();
                });
  finished.WaitForNotification();
  return result;
}

void InferenceCore::PoolLoop() {
  while (true) {
    std::unique_ptr<Job> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](InferenceCore* c)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) { return c->stop_ || !c->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stop_ and nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
    }
    absl::StatusOr<GenerateOutcome> result = Run(*job);
    {
      // The slot is free before the caller hears of the result, so a caller that sends its next
      // request on completion is not refused.
      absl::MutexLock lock(&mu_);
      --running_;
    }
    job->done(std::move(result));
  }
}

absl::StatusOr<GenerateOutcome> InferenceCore::Run(Job& job) {
  auto check = [&](const char* phase) -> absl::Status {
    if (job.cancelled && job.cancelled()) {
      return absl::CancelledError(absl::StrCat("request cancelled ", phase));
    }
    return CheckDeadline(job.deadline, phase);
  };
  if (absl::Status s = check("while queued"); !s.ok()) return s;
  const absl::Time start = absl::Now();
  RequestCacheScope scope;
  scope.policy = job.policy;
  tls_scope = &scope;
  absl::StatusOr<GenerateResult> result = engine_->Generate(job.request);
  tls_scope = nullptr;
  if (!result.ok()) return result.status();
  if (absl::Status s = check("after generation"); !s.ok()) return s;
  GenerateOutcome out;
  out.tokens = std::move(result->tokens);
  out.finish_reason = result->stop_reason == "eos" ? "eos" : "length";
  // Stop ids: the engine knows only the model's EOS ids, so generation is cut after the first
  // requested stop id here.
  for (size_t i = 0; i < out.tokens.size(); ++i) {
    if (std::find(job.stop_ids.begin(), job.stop_ids.end(), out.tokens[i]) != job.stop_ids.end()) {
      const bool last_is_eos = out.finish_reason == "eos" && i + 1 == out.tokens.size();
      if (!last_is_eos) out.finish_reason = "stop";
      out.tokens.resize(i + 1);
      break;
    }
  }
  const GenerateTimings& t = result->timings;
  out.timings.set_tokenize_ms(job.tokenize_ms);
  out.timings.set_lookup_ms(t.lookup_ms);
  out.timings.set_fetch_ms(scope.fetch_ms);
  out.timings.set_compute_misses_ms(t.encode_ms);
  out.timings.set_prefill_ms(t.load_ms + t.prefill_ms);
  out.timings.set_first_token_ms(MsBetween(job.arrival, start) + t.ttft_ms);
  out.timings.set_total_ms(MsBetween(job.arrival, absl::Now()));
  out.cache.set_hits(static_cast<uint32_t>(result->cache_hits));
  out.cache.set_misses(static_cast<uint32_t>(result->cache_misses));
  out.cache.set_gpu_hits(
      static_cast<uint32_t>(std::min<int64_t>(scope.local_hits, result->cache_hits)));
  out.cache.set_fetched_bytes(scope.fetched_bytes);
  return out;
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
  const absl::Time t0 = absl::Now();
  v1::EncodeBlocksResponse out;
  std::vector<BlockKey> keys;
  for (const auto& b : blocks) keys.push_back(engine_->KeyOf(b));
  std::vector<LookupResult> found(keys.size());
  runtime_->store->Lookup(keys, absl::MakeSpan(found));
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (absl::Status s = CheckDeadline(deadline, "while encoding"); !s.ok()) return s;
    v1::EncodedBlock* eb = out.add_blocks();
    ToProto(keys[i], eb->mutable_key());
    eb->set_num_tokens(static_cast<uint32_t>(blocks[i].size()));
    eb->set_already_cached(found[i].present);
    if (found[i].present) continue;
    absl::StatusOr<std::vector<uint8_t>> payload = engine_->EncodeBlock(blocks[i]);
    if (!payload.ok()) return payload.status();
    if (absl::Status s = runtime_->store->Put(keys[i], *payload); !s.ok()) return s;
  }
  out.set_encode_ms(MsBetween(t0, absl::Now()));
  return out;
}

v1::HealthResponse InferenceCore::Health() const {
  v1::HealthResponse h;
  h.set_ready(true);
  h.set_model_id(runtime_->model.dir);
  ToProto(runtime_->model.fingerprint, h.mutable_model_fingerprint());
  h.set_backend(options_.backend);
  h.set_max_prompt_tokens(static_cast<uint32_t>(options_.max_prompt_tokens));
  h.set_version("kvblock 0.1.0");
  return h;
}

}  // namespace kvblock
