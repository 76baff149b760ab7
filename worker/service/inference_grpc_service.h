// The gRPC face of `kvblock worker`: kvblock.v1.InferenceService on the callback API. Reactors
// are thin: they check the bearer token, hand the request to InferenceCore and report each
// finished call to the observer. Generate streams the tokens as the core samples them (at most
// InferenceCoreOptions::stream_chunk_tokens per message, one write in flight), then one final
// message with done, finish_reason, timings, cache report and any text held back.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "kvblock/v1/inference.grpc.pb.h"
#include "worker/service/inference_core.h"

namespace kvblock {

// Receives what the service did (for metrics). Implementations must be thread-safe.
class InferenceObserver {
 public:
  virtual ~InferenceObserver() = default;
  // One finished call: method name ("Generate", "EncodeBlocks", "Health"), status, latency.
  virtual void OnCall(std::string_view method, absl::StatusCode code, absl::Duration latency) = 0;
  // One successful Generate.
  virtual void OnGenerated(const GenerateOutcome& outcome) = 0;
};

class InferenceGrpcService final : public v1::InferenceService::CallbackService {
 public:
  // Borrows `core` and `observer` (nullable); both must outlive the gRPC server. An empty
  // `auth_token` disables authentication; otherwise every call must carry "Bearer <token>".
  InferenceGrpcService(InferenceCore* core, InferenceObserver* observer, std::string auth_token)
      : core_(core), observer_(observer), auth_token_(std::move(auth_token)) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* EncodeBlocks(grpc::CallbackServerContext* context,
                                         const v1::EncodeBlocksRequest* request,
                                         v1::EncodeBlocksResponse* response) override;
  grpc::ServerUnaryReactor* Health(grpc::CallbackServerContext* context,
                                   const v1::HealthRequest* request,
                                   v1::HealthResponse* response) override;

  // UNAUTHENTICATED unless the call carries the expected bearer token. Thread-safe.
  absl::Status Authenticate(const grpc::CallbackServerContext* context) const;

 private:
  InferenceCore* const core_;
  InferenceObserver* const observer_;
  const std::string auth_token_;
};

}  // namespace kvblock
