#include "services/rendezvous.h"

#include <algorithm>
#include <numeric>

#include "xxhash.h"

namespace kvblock {

RendezvousHash::RendezvousHash(std::vector<std::string> members) : members_(std::move(members)) {
  seeds_.reserve(members_.size());
  for (const std::string& m : members_) seeds_.push_back(XXH3_64bits(m.data(), m.size()));
}

uint64_t RendezvousHash::Score(const BlockKey& key, size_t index) const {
  uint8_t bytes[16];
  key.ToBytes(bytes);
  return XXH3_64bits_withSeed(bytes, sizeof(bytes), seeds_[index]);
}

std::vector<uint32_t> RendezvousHash::Rank(const BlockKey& key) const {
  std::vector<std::pair<uint64_t, uint32_t>> scored(members_.size());
  for (uint32_t i = 0; i < members_.size(); ++i) scored[i] = {Score(key, i), i};
  // Ties (astronomically rare) break by index so the order stays deterministic.
  std::sort(scored.begin(), scored.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first
                                                                         : a.second < b.second; });
  std::vector<uint32_t> out(members_.size());
  for (size_t i = 0; i < scored.size(); ++i) out[i] = scored[i].second;
  return out;
}

}  // namespace kvblock
