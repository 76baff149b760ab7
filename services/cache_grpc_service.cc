#include "services/cache_grpc_service.h"

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "services/auth.h"
#include "services/grpc_status.h"

namespace kvblock {
namespace {

// The `authorization` metadata value, or nullopt-as-empty when absent.
bool AuthorizationOf(const grpc::CallbackServerContext* context, std::string* out) {
  const auto& md = context->client_metadata();
  auto it = md.find(grpc::string_ref(kAuthMetadataKey.data(), kAuthMetadataKey.size()));
  if (it == md.end()) return false;
  out->assign(it->second.data(), it->second.size());
  return true;
}

absl::Status Authenticate(const CacheServiceCore& core, const grpc::CallbackServerContext* ctx) {
  std::string value;
  const bool present = AuthorizationOf(ctx, &value);
  return core.Authenticate(present ? &value : nullptr);
}

// Accounting for one call: in-flight count, and method/code/latency to the observer.
class CallScope {
 public:
  CallScope(CacheServiceCore* core, CacheServiceObserver* observer, const char* method)
      : core_(core), observer_(observer), method_(method), start_(absl::Now()) {
    core_->CallStarted();
  }
  ~CallScope() { core_->CallEnded(); }
  void Finished(const absl::Status& status) {
    if (observer_ != nullptr) observer_->OnCall(method_, status.code(), absl::Now() - start_);
  }
  void Bytes(std::string_view direction, uint64_t n) {
    if (observer_ != nullptr && n != 0) observer_->OnBytes("grpc", direction, n);
  }

 private:
  CacheServiceCore* core_;
  CacheServiceObserver* observer_;
  const char* method_;
  absl::Time start_;
};

class PutReactor final : public grpc::ServerReadReactor<v1::PutRequest> {
 public:
  PutReactor(CacheServiceCore* core, CacheServiceObserver* observer, BlockingExecutor* executor,
             grpc::CallbackServerContext* context, v1::PutResponse* response)
      : scope_(core, observer, "Put"),
        executor_(executor),
        context_(context),
        response_(response) {
    absl::Status auth = Authenticate(*core, context);
    if (!auth.ok()) {
      End(auth);
      return;
    }
    session_ = core->StartPut();
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client half-closed (or the stream broke: then the byte count is short, or the
      // context is cancelled, and nothing is committed).
      if (context_->IsCancelled()) {
        End(absl::CancelledError("Put stream cancelled before completion"));
        return;
      }
      // The commit verifies checksums and writes RocksDB (fsync): not on this callback thread.
      executor_->Run([this] {
        absl::StatusOr<v1::PutResponse> r = session_->Finish();
        if (r.ok()) *response_ = *std::move(r);
        End(r.status());
      });
      return;
    }
    bytes_in_ += request_.ByteSizeLong();
    absl::Status s = session_->OnMessage(request_);
    if (!s.ok()) {
      End(s);
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  void End(const absl::Status& status) {
    session_.reset();  // drops an uncommitted buffer now
    scope_.Bytes("in", bytes_in_);
    scope_.Finished(status);
    Finish(ToGrpcStatus(status));
  }

  CallScope scope_;
  BlockingExecutor* executor_;
  grpc::CallbackServerContext* context_;
  v1::PutResponse* response_;
  v1::PutRequest request_;
  std::unique_ptr<PutSession> session_;
  uint64_t bytes_in_ = 0;
};

class GetReactor final : public grpc::ServerWriteReactor<v1::GetResponse> {
 public:
  GetReactor(CacheServiceCore* core, CacheServiceObserver* observer, BlockingExecutor* executor,
             grpc::CallbackServerContext* context, const v1::GetRequest* request)
      : scope_(core, observer, "Get") {
    absl::Status auth = Authenticate(*core, context);
    if (!auth.ok()) {
      End(auth);
      return;
    }
    // A memory miss reads RocksDB: not on this callback thread.
    executor->Run([this, core, request] {
      absl::StatusOr<std::unique_ptr<GetStream>> stream = core->StartGet(*request);
      if (!stream.ok()) {
        End(stream.status());
        return;
      }
      stream_ = *std::move(stream);
      WriteNext();
    });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      End(absl::CancelledError("Get stream broken by the client"));
      return;
    }
    WriteNext();
  }

  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    if (!stream_->Next(&response_)) {
      End(absl::OkStatus());
      return;
    }
    bytes_out_ += response_.chunk().size();
    StartWrite(&response_);
  }
  void End(const absl::Status& status) {
    stream_.reset();
    scope_.Bytes("out", bytes_out_);
    scope_.Finished(status);
    Finish(ToGrpcStatus(status));
  }

  CallScope scope_;
  std::unique_ptr<GetStream> stream_;
  v1::GetResponse response_;
  uint64_t bytes_out_ = 0;
};

}  // namespace

template <typename Fn>
grpc::ServerUnaryReactor* CacheGrpcService::Unary(grpc::CallbackServerContext* context,
                                                  const char* method, Fn&& fn) {
  CallScope scope(core_, observer_, method);
  absl::Status status = Authenticate(*core_, context);
  if (status.ok()) status = fn();
  scope.Finished(status);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* CacheGrpcService::Lookup(grpc::CallbackServerContext* context,
                                                   const v1::LookupRequest* request,
                                                   v1::LookupResponse* response) {
  return Unary(context, "Lookup", [&] { return core_->Lookup(*request, response); });
}

grpc::ServerReadReactor<v1::PutRequest>* CacheGrpcService::Put(
    grpc::CallbackServerContext* context, v1::PutResponse* response) {
  return new PutReactor(core_, observer_, &executor_, context, response);
}

grpc::ServerWriteReactor<v1::GetResponse>* CacheGrpcService::Get(
    grpc::CallbackServerContext* context, const v1::GetRequest* request) {
  return new GetReactor(core_, observer_, &executor_, context, request);
}

grpc::ServerUnaryReactor* CacheGrpcService::Delete(grpc::CallbackServerContext* context,
                                                   const v1::DeleteRequest* request,
                                                   v1::DeleteResponse* response) {
  return Unary(context, "Delete", [&] { return core_->Delete(*request, response); });
}

grpc::ServerUnaryReactor* CacheGrpcService::Stats(grpc::CallbackServerContext* context,
                                                  const v1::StatsRequest* request,
                                                  v1::StatsResponse* response) {
  return Unary(context, "Stats", [&] { return core_->Stats(*request, response); });
}

grpc::ServerUnaryReactor* CacheGrpcService::OpenDataPlane(
    grpc::CallbackServerContext* context, const v1::OpenDataPlaneRequest* request,
    v1::OpenDataPlaneResponse* response) {
  return Unary(context, "OpenDataPlane",
               [&] { return core_->OpenDataPlane(*request, response); });
}

grpc::ServerUnaryReactor* CacheGrpcService::Drain(grpc::CallbackServerContext* context,
                                                  const v1::DrainRequest* request,
                                                  v1::DrainResponse* response) {
  return Unary(context, "Drain", [&] { return core_->Drain(*request, response); });
}

}  // namespace kvblock
