#include "worker/service/inference_grpc_service.h"

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "services/auth.h"
#include "services/grpc_status.h"

namespace kvblock {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto d = context->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

// Streams a Generate: tokens are written as the core hands them over, at most one write in
// flight (the callback API's rule) and at most stream_chunk_tokens per message; then the final
// message, then Finish. The core calls on_tokens and done on its threads and OnWriteDone comes on
// gRPC's: all meet in Pump under mu_. Finish waits for the core's `done`, so the core never calls
// into a deleted reactor.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(InferenceGrpcService* service, InferenceCore* core, InferenceObserver* observer,
                  grpc::CallbackServerContext* context, const v1::GenerateRequest* request)
      : core_(core), observer_(observer), start_(absl::Now()) {
    absl::Status auth = service->Authenticate(context);
    if (!auth.ok()) {
      End(auth);
      return;
    }
    core->GenerateAsync(
        *request, start_, DeadlineOf(context), [context] { return context->IsCancelled(); },
        [this](absl::Span<const int32_t> tokens) { Pump({.tokens = tokens}); },
        [this](absl::StatusOr<GenerateOutcome> r) {
          if (r.ok() && observer_ != nullptr) observer_->OnGenerated(*r);
          Pump({.result = &r});
        });
  }

  void OnWriteDone(bool ok) override { Pump({.write_done = true, .write_ok = ok}); }

  void OnDone() override { delete this; }

 private:
  // What happened: new tokens, the core's result, or a write's completion.
  struct Event {
    absl::Span<const int32_t> tokens;
    absl::StatusOr<GenerateOutcome>* result = nullptr;  // taken
    bool write_done = false;
    bool write_ok = true;
  };

  // Records `event`, then starts the next write (tokens, or the final message) or Finish unless
  // a write is in flight. The event is recorded under the same lock as the decision: once this
  // thread unlocks without a write or Finish to do, another thread may end (and delete) the
  // reactor, so nothing here touches it afterwards.
  void Pump(Event event) {
    std::vector<int32_t> prefix;  // tokens sent once this message is out
    size_t first_new = 0;
    bool final_message = false;
    bool end = false;
    absl::Status finish;
    {
      absl::MutexLock lock(&mu_);
      tokens_.insert(tokens_.end(), event.tokens.begin(), event.tokens.end());
      if (event.result != nullptr) {
        finished_ = true;
        if (event.result->ok()) {
          outcome_ = **std::move(event.result);
        } else {
          status_ = event.result->status();
        }
      }
      if (event.write_done) {
        writing_ = false;
        // A broken stream: the client is gone, so its context reads as cancelled and the core
        // stops within a step; Finish waits for that.
        if (!event.write_ok) broken_ = true;
      }
      if (writing_ || ended_) return;
      if (broken_ || (finished_ && !status_.ok()) || final_sent_) {
        if (!finished_) return;
        ended_ = end = true;
        finish = broken_ ? absl::CancelledError("Generate stream broken by the client") : status_;
      } else if (next_ < tokens_.size()) {
        first_new = next_;
        next_ = std::min(tokens_.size(),
                         next_ + static_cast<size_t>(core_->options().stream_chunk_tokens));
        prefix.assign(tokens_.begin(), tokens_.begin() + next_);
        writing_ = true;
      } else if (finished_) {
        prefix = tokens_;
        final_message = final_sent_ = writing_ = true;
      } else {
        return;  // nothing to send yet
      }
    }
    if (end) {
      End(finish);
      return;
    }
    // Only this thread touches response_ and sent_text_ until the write completes.
    response_.Clear();
    if (!final_message)
      response_.mutable_token_ids()->Add(prefix.begin() + first_new, prefix.end());
    response_.set_text(NewText(prefix, /*last=*/final_message));
    if (final_message) {
      response_.set_done(true);
      response_.set_finish_reason(outcome_.finish_reason);
      *response_.mutable_timings() = outcome_.timings;
      *response_.mutable_cache() = outcome_.cache;
    }
    StartWrite(&response_);
  }

  // The text `tokens` add to what was sent: the whole prefix is decoded so a character split
  // across messages is sent whole once complete. Until the last message a trailing U+FFFD may be
  // the start of a character whose other bytes come later: it is held back.
  std::string NewText(const std::vector<int32_t>& tokens, bool last) {
    std::string text = core_->Decode(tokens);
    constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
    while (!last && text.size() >= kReplacement.size() &&
           text.compare(text.size() - kReplacement.size(), kReplacement.size(), kReplacement) ==
               0) {
      text.resize(text.size() - kReplacement.size());
    }
    if (text.size() < sent_text_.size() || text.compare(0, sent_text_.size(), sent_text_) != 0) {
      return "";
    }
    std::string added = text.substr(sent_text_.size());
    sent_text_ = std::move(text);
    return added;
  }

  void End(const absl::Status& status) {
    if (observer_ != nullptr) observer_->OnCall("Generate", status.code(), absl::Now() - start_);
    Finish(ToGrpcStatus(status));
  }

  InferenceCore* const core_;
  InferenceObserver* const observer_;
  const absl::Time start_;
  v1::GenerateResponse response_;  // the write in flight
  std::string sent_text_;

  absl::Mutex mu_;
  std::vector<int32_t> tokens_ ABSL_GUARDED_BY(mu_);  // every token the core handed over
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;              // tokens_[0, next_) written
  GenerateOutcome outcome_;  // written once under mu_ with finished_, read-only after
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // the core called done
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool final_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::Status InferenceGrpcService::Authenticate(const grpc::CallbackServerContext* context) const {
  const auto& md = context->client_metadata();
  auto it = md.find(grpc::string_ref(kAuthMetadataKey.data(), kAuthMetadataKey.size()));
  if (it == md.end()) return CheckBearer(auth_token_, nullptr);
  const std::string value(it->second.data(), it->second.size());
  return CheckBearer(auth_token_, &value);
}

grpc::ServerWriteReactor<v1::GenerateResponse>* InferenceGrpcService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new GenerateReactor(this, core_, observer_, context, request);
}

grpc::ServerUnaryReactor* InferenceGrpcService::EncodeBlocks(grpc::CallbackServerContext* context,
                                                             const v1::EncodeBlocksRequest* request,
                                                             v1::EncodeBlocksResponse* response) {
  // Encoding runs on the gRPC callback thread: indexers send few, bounded batches.
  const absl::Time start = absl::Now();
  absl::Status status = Authenticate(context);
  if (status.ok()) {
    absl::StatusOr<v1::EncodeBlocksResponse> r = core_->EncodeBlocks(*request, DeadlineOf(context));
    if (r.ok()) *response = *std::move(r);
    status = r.status();
  }
  if (observer_ != nullptr) observer_->OnCall("EncodeBlocks", status.code(), absl::Now() - start);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* InferenceGrpcService::Health(grpc::CallbackServerContext* context,
                                                       const v1::HealthRequest* request,
                                                       v1::HealthResponse* response) {
  const absl::Time start = absl::Now();
  absl::Status status = Authenticate(context);
  if (status.ok()) *response = core_->Health();
  if (observer_ != nullptr) observer_->OnCall("Health", status.code(), absl::Now() - start);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace kvblock
