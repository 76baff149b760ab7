// Rendezvous (highest-random-weight) hashing of block keys over a cluster's member list: every
// client ranks the members by a per-(key, member) score and sends a key to the best R of them.
// Adding or removing a member moves only the keys whose top R it enters or leaves (about R/N of
// them), and every client with the same list ranks alike without coordination.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "cache/block_key.h"

namespace kvblock {

class RendezvousHash {
 public:
  // `members` are the nodes' stable names (addresses); order does not matter.
  explicit RendezvousHash(std::vector<std::string> members);

  size_t size() const { return members_.size(); }
  const std::string& member(size_t index) const { return members_[index]; }

  // Indices of every member, best first, for `key`. Deterministic for a given member set.
  std::vector<uint32_t> Rank(const BlockKey& key) const;
  // Score of `key` on member `index` (exposed for tests).
  uint64_t Score(const BlockKey& key, size_t index) const;

 private:
  std::vector<std::string> members_;
  std::vector<uint64_t> seeds_;  // XXH3-64 of each member name
};

}  // namespace kvblock
