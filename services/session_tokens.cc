// SessionTokens (session_tokens.h): mint, redeem once, expire.
#include "services/session_tokens.h"

#include <cstring>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/clock.h"

namespace kvblock {

absl::StatusOr<std::string> SessionTokens::Mint() {
  std::random_device rd;
  std::string token(kTokenBytes, '\0');
  for (size_t i = 0; i < kTokenBytes; i += 4) {
    const uint32_t v = rd();
    std::memcpy(&token[i], &v, 4);
  }
  absl::MutexLock l(&mu_);
  if (expiry_.size() >= kMaxOutstanding) {
    return absl::ResourceExhaustedError("too many unused data-plane session tokens");
  }
  expiry_[token] = absl::Now() + ttl_;
  return token;
}

bool SessionTokens::Redeem(std::string_view token) {
  absl::MutexLock l(&mu_);
  auto it = expiry_.find(std::string(token));  // absl::string_view is not std::string_view here
  if (it == expiry_.end()) return false;
  const bool valid = it->second >= absl::Now();
  expiry_.erase(it);  // one use (and an expired one is gone either way)
  return valid;
}

void SessionTokens::Sweep() {
  const absl::Time now = absl::Now();
  absl::MutexLock l(&mu_);
  absl::erase_if(expiry_, [&](const auto& kv) { return kv.second < now; });
}

}  // namespace kvblock
