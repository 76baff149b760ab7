// The gRPC face of a cache node: kvblock.v1.CacheService on the callback API. Reactors are thin:
// they authenticate, hand messages to CacheServiceCore and report each finished call to the
// observer; every decision lives in the core.
#pragma once

#include <memory>

#include "grpcpp/grpcpp.h"
#include "kvblock/v1/cache.grpc.pb.h"
#include "services/blocking_executor.h"
#include "services/cache_service_core.h"

namespace kvblock {

class CacheGrpcService final : public v1::CacheService::CallbackService {
 public:
  // Borrows `core` and `observer` (nullable); both must outlive the gRPC server.
  // `blocking_threads` run Put commits and Get reads.
  CacheGrpcService(CacheServiceCore* core, CacheServiceObserver* observer,
                   int blocking_threads = 8)
      : core_(core), observer_(observer), executor_(blocking_threads) {}

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const v1::LookupRequest* request,
                                   v1::LookupResponse* response) override;
  grpc::ServerReadReactor<v1::PutRequest>* Put(grpc::CallbackServerContext* context,
                                               v1::PutResponse* response) override;
  grpc::ServerWriteReactor<v1::GetResponse>* Get(grpc::CallbackServerContext* context,
                                                 const v1::GetRequest* request) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* context,
                                   const v1::DeleteRequest* request,
                                   v1::DeleteResponse* response) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context,
                                  const v1::StatsRequest* request,
                                  v1::StatsResponse* response) override;
  grpc::ServerUnaryReactor* OpenDataPlane(grpc::CallbackServerContext* context,
                                          const v1::OpenDataPlaneRequest* request,
                                          v1::OpenDataPlaneResponse* response) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* context,
                                  const v1::DrainRequest* request,
                                  v1::DrainResponse* response) override;

 private:
  template <typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const char* method,
                                  Fn&& fn);

  CacheServiceCore* const core_;
  CacheServiceObserver* const observer_;
  BlockingExecutor executor_;
};

}  // namespace kvblock
