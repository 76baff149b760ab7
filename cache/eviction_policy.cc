#include "cache/eviction_policy.h"

#include <algorithm>
#include <list>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvblock {
namespace {

class LruPolicy final : public EvictionPolicy {
 public:
  void Insert(const BlockKey& key, uint64_t) override {
    order_.push_back(key);
    where_[key] = std::prev(order_.end());
  }
  void Touch(const BlockKey& key) override {
    auto it = where_.find(key);
    if (it == where_.end()) return;
    order_.splice(order_.end(), order_, it->second);
  }
  void Erase(const BlockKey& key) override {
    auto it = where_.find(key);
    if (it == where_.end()) return;
    order_.erase(it->second);
    where_.erase(it);
  }
  std::optional<BlockKey> Evict() override {
    if (order_.empty()) return std::nullopt;
    BlockKey victim = order_.front();
    order_.pop_front();
    where_.erase(victim);
    return victim;
  }
  size_t size() const override { return where_.size(); }

 private:
  std::list<BlockKey> order_;  // front = least recently used
  absl::flat_hash_map<BlockKey, std::list<BlockKey>::iterator> where_;
};

class S3FifoPolicy final : public EvictionPolicy {
 public:
  explicit S3FifoPolicy(const S3FifoOptions& options) : options_(options) {}

  void Insert(const BlockKey& key, uint64_t charge) override {
    const bool ghost = ghost_where_.contains(key);
    if (ghost) {
      ghost_.erase(ghost_where_[key]);
      ghost_where_.erase(key);
    }
    std::list<Node>& queue = ghost ? main_ : small_;
    queue.push_back(Node{key, charge, 0, ghost});
    where_[key] = std::prev(queue.end());
    (ghost ? main_bytes_ : small_bytes_) += charge;
  }

  void Touch(const BlockKey& key) override {
    auto it = where_.find(key);
    if (it == where_.end()) return;
    it->second->hits = std::min<uint32_t>(it->second->hits + 1, kMaxHits);
  }

  void Erase(const BlockKey& key) override {
    auto it = where_.find(key);
    if (it == where_.end()) return;
    Node& n = *it->second;
    if (n.in_main) {
      main_bytes_ -= n.charge;
      main_.erase(it->second);
    } else {
      small_bytes_ -= n.charge;
      small_.erase(it->second);
    }
    where_.erase(it);
  }

  std::optional<BlockKey> Evict() override {
    // Every pass either evicts or lowers a hit count / moves a node to main, so the loop ends
    // within (kMaxHits + 2) * size() steps.
    while (!where_.empty()) {
      const uint64_t total = small_bytes_ + main_bytes_;
      const bool from_small =
          !small_.empty() &&
          (main_.empty() || static_cast<double>(small_bytes_) >= options_.small_fraction * total);
      if (from_small) {
        auto node = small_.begin();
        small_bytes_ -= node->charge;
        if (node->hits >= options_.move_to_main_hits) {
          node->hits = 0;
          node->in_main = true;
          main_bytes_ += node->charge;
          main_.splice(main_.end(), small_, node);
          continue;
        }
        BlockKey victim = node->key;
        small_.erase(node);
        where_.erase(victim);
        RememberGhost(victim);
        return victim;
      }
      auto node = main_.begin();
      if (node->hits > 0) {
        --node->hits;
        main_.splice(main_.end(), main_, node);
        continue;
      }
      main_bytes_ -= node->charge;
      BlockKey victim = node->key;
      main_.erase(node);
      where_.erase(victim);
      return victim;
    }
    return std::nullopt;
  }

  size_t size() const override { return where_.size(); }

 private:
  static constexpr uint32_t kMaxHits = 3;
  struct Node {
    BlockKey key;
    uint64_t charge = 0;
    uint32_t hits = 0;
    bool in_main = false;
  };

  void RememberGhost(const BlockKey& key) {
    ghost_.push_back(key);
    ghost_where_[key] = std::prev(ghost_.end());
    const size_t limit =
        std::max<size_t>(1, static_cast<size_t>(options_.ghost_factor * (where_.size() + 1)));
    while (ghost_where_.size() > limit) {
      ghost_where_.erase(ghost_.front());
      ghost_.pop_front();
    }
  }

  const S3FifoOptions options_;
  std::list<Node> small_, main_;  // front = oldest
  uint64_t small_bytes_ = 0, main_bytes_ = 0;
  absl::flat_hash_map<BlockKey, std::list<Node>::iterator> where_;
  std::list<BlockKey> ghost_;
  absl::flat_hash_map<BlockKey, std::list<BlockKey>::iterator> ghost_where_;
};

}  // namespace

std::string_view EvictionPolicyName(EvictionPolicyKind kind) {
  switch (kind) {
    case EvictionPolicyKind::kLru:
      return "lru";
    case EvictionPolicyKind::kS3Fifo:
      return "s3fifo";
  }
  return "unknown";
}

absl::StatusOr<EvictionPolicyKind> ParseEvictionPolicy(std::string_view name) {
  if (name == "lru") return EvictionPolicyKind::kLru;
  if (name == "s3fifo") return EvictionPolicyKind::kS3Fifo;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown eviction policy '", std::string(name), "' (want lru or s3fifo)"));
}

std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(EvictionPolicyKind kind,
                                                   const S3FifoOptions& s3fifo) {
  if (kind == EvictionPolicyKind::kS3Fifo) return std::make_unique<S3FifoPolicy>(s3fifo);
  return std::make_unique<LruPolicy>();
}

}  // namespace kvblock
