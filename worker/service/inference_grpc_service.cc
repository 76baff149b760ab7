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
    // `done` runs on a pool thread (or here for early errors); the reactor lives until OnDone,
    // which cannot happen before Finish is called from End.
    core->GenerateAsync(
        *request, start_, DeadlineOf(context), [context] { return context->IsCancelled(); },
        [this](absl::StatusOr<GenerateOutcome> r) { OnGenerated(std::move(r)); });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      End(absl::CancelledError("Generate stream broken by the client"));
      return;
    }
    WriteNext();
  }

  void OnDone() override { delete this; }

 private:
  void OnGenerated(absl::StatusOr<GenerateOutcome> r) {
    if (!r.ok()) {
      End(r.status());
      return;
    }
    outcome_ = *std::move(r);
    if (observer_ != nullptr) observer_->OnGenerated(outcome_);
    WriteNext();
  }

  // Next chunk of tokens, or the final message, or Finish.
  void WriteNext() {
    if (final_sent_) {
      End(absl::OkStatus());
      return;
    }
    response_.Clear();
    const size_t n = outcome_.tokens.size();
    if (next_ < n) {
      const size_t end =
          std::min(n, next_ + static_cast<size_t>(core_->options().stream_chunk_tokens));
      response_.mutable_token_ids()->Add(outcome_.tokens.begin() + next_,
                                         outcome_.tokens.begin() + end);
      // Text of the new tokens: decode the whole prefix and send what it adds, so a character
      // split across chunks is sent whole once complete. A trailing U+FFFD may be the start of
      // a character whose other bytes are in the next chunk: it is held back until the last one.
      std::string text = core_->Decode(absl::MakeConstSpan(outcome_.tokens.data(), end));
      constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
      while (end < n && text.size() >= kReplacement.size() &&
             text.compare(text.size() - kReplacement.size(), kReplacement.size(), kReplacement) == 0) {
        text.resize(text.size() - kReplacement.size());
      }
      if (text.size() >= sent_text_.size() && text.compare(0, sent_text_.size(), sent_text_) == 0) {
        response_.set_text(text.substr(sent_text_.size()));
        sent_text_ = text;
      }
      next_ = end;
    } else {
      response_.set_done(true);
      response_.set_finish_reason(outcome_.finish_reason);
      *response_.mutable_timings() = outcome_.timings;
      *response_.mutable_cache() = outcome_.cache;
      final_sent_ = true;
    }
    StartWrite(&response_);
  }

  void End(const absl::Status& status) {
    if (observer_ != nullptr) observer_->OnCall("Generate", status.code(), absl::Now() - start_);
    Finish(ToGrpcStatus(status));
  }

  InferenceCore* core_;
  InferenceObserver* observer_;
  absl::Time start_;
  GenerateOutcome outcome_;
  v1::GenerateResponse response_;
  std::string sent_text_;
  size_t next_ = 0;
  bool final_sent_ = false;
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
