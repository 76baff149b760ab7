// SessionTokens: the one-use tokens that open data-plane sessions. The gRPC control plane
// (OpenDataPlane, authenticated) mints one per session; the client presents it as the first
// message on the data plane (UCX endpoint or shared-memory socket), where it is redeemed once.
// A token not presented within its time to live expires.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvblock {

class SessionTokens {
 public:
  // Bytes of a token (random, from std::random_device).
  static constexpr size_t kTokenBytes = 32;
  // Unredeemed tokens held at most; Mint fails beyond (count).
  static constexpr size_t kMaxOutstanding = 100000;

  explicit SessionTokens(absl::Duration ttl) : ttl_(ttl) {}

  // A fresh token valid for the time to live. RESOURCE_EXHAUSTED when kMaxOutstanding unused
  // tokens are outstanding. Thread-safe.
  absl::StatusOr<std::string> Mint();
  // True (and the token is spent) when `token` was minted, is unexpired and unredeemed.
  // Thread-safe.
  bool Redeem(std::string_view token);
  // Forgets expired tokens. Thread-safe.
  void Sweep();

 private:
  const absl::Duration ttl_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::Time> expiry_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvblock
