// Eviction policies for the memory tier: who leaves when a new block needs room. A policy only
// orders keys; the tier owns the bytes and the byte budget. Policies are pluggable behind one
// small interface and tested alone (tests/cache/eviction_policy_test.cc):
//  - LRU: evicts the least recently inserted or hit block.
//  - S3-FIFO (Yang et al., SOSP 2023): a small FIFO that new blocks enter, a main FIFO for blocks
//    hit while in the small one, and a ghost FIFO of recently evicted keys (re-inserted ghosts go
//    straight to main). One-hit blocks of a scan leave through the small queue without pushing
//    out the hot set, which LRU cannot do.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/status/statusor.h"
#include "cache/block_key.h"

namespace kvblock {

enum class EvictionPolicyKind : uint8_t { kLru = 0, kS3Fifo = 1 };

std::string_view EvictionPolicyName(EvictionPolicyKind kind);  // "lru", "s3fifo"
// Accepts the names above; INVALID_ARGUMENT otherwise.
absl::StatusOr<EvictionPolicyKind> ParseEvictionPolicy(std::string_view name);

// Not thread-safe: the owner (one memory tier shard) calls it under its lock.
class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  // Starts tracking a key that is not tracked. `charge` is the bytes it holds in the tier.
  virtual void Insert(const BlockKey& key, uint64_t charge) = 0;
  // Records a hit on a tracked key; untracked keys are ignored.
  virtual void Touch(const BlockKey& key) = 0;
  // Stops tracking a key removed for a reason other than eviction (Delete); no-op if untracked.
  virtual void Erase(const BlockKey& key) = 0;
  // Chooses a victim, stops tracking it and returns it; nullopt when nothing is tracked.
  virtual std::optional<BlockKey> Evict() = 0;
  // Number of tracked keys.
  virtual size_t size() const = 0;
};

struct S3FifoOptions {
  // Share of the tracked bytes that the small (probationary) FIFO may hold. Default: 0.1 (the
  // paper's value).
  double small_fraction = 0.1;
  // Hits a block needs while in the small FIFO to move to main instead of leaving. Default: 1.
  uint32_t move_to_main_hits = 1;
  // Ghost keys remembered, as a multiple of the tracked keys. Default: 1.0.
  double ghost_factor = 1.0;
};

std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(EvictionPolicyKind kind,
                                                   const S3FifoOptions& s3fifo = {});

}  // namespace kvblock
