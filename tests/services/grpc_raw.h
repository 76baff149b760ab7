// Raw gRPC calls by method name with serialized bytes (grpc::GenericStub on a completion queue):
// lets tests send malformed messages, call the health and reflection services without generated
// stubs, and cut streams at a chosen point.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace kvblock::testing {

struct RawResult {
  grpc::Status status;
  std::vector<std::string> responses;
};

inline std::string BufferToString(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  (void)b.Dump(&slices);
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// Sends `requests` on a (possibly streaming) call to `method`, half-closes (unless `cancel_after`
// >= 0: then the call is cancelled after that many writes), reads every response and returns the
// final status. `metadata` pairs are added to the call. Bounded by `timeout`.
inline RawResult RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                         const std::vector<std::string>& requests,
                         const std::vector<std::pair<std::string, std::string>>& metadata = {},
                         int cancel_after = -1,
                         std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
  grpc::CompletionQueue cq;
  RawResult result;
  auto call = stub.PrepareCall(&ctx, method, &cq);
  void* tag;
  bool ok;
  auto step = [&](void* t) {
    if (!cq.Next(&tag, &ok)) return false;
    return tag == t && ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  bool alive = step(reinterpret_cast<void*>(1));
  int written = 0;
  for (const std::string& r : requests) {
    if (!alive) break;
    if (cancel_after >= 0 && written == cancel_after) break;
    grpc::Slice slice(r);
    grpc::ByteBuffer buf(&slice, 1);
    call->Write(buf, reinterpret_cast<void*>(2));
    alive = step(reinterpret_cast<void*>(2));
    ++written;
  }
  if (cancel_after >= 0) {
    ctx.TryCancel();
  } else if (alive) {
    call->WritesDone(reinterpret_cast<void*>(3));
    alive = step(reinterpret_cast<void*>(3));
  }
  for (int i = 0; i < 100000 && cancel_after < 0; ++i) {
    grpc::ByteBuffer in;
    call->Read(&in, reinterpret_cast<void*>(4));
    if (!step(reinterpret_cast<void*>(4))) break;
    result.responses.push_back(BufferToString(in));
  }
  call->Finish(&result.status, reinterpret_cast<void*>(5));
  while (cq.Next(&tag, &ok)) {
    if (tag == reinterpret_cast<void*>(5)) break;
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return result;
}

}  // namespace kvblock::testing
