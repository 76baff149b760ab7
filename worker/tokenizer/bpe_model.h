// The BPE model of Hugging Face tokenizer.json ("model": {"type": "BPE", ...}): vocabulary,
// ranked merges (either "a b" strings or ["a", "b"] pairs), ignore_merges, byte_fallback, unk
// token (fused or not), continuing_subword_prefix and end_of_word_suffix. Words are merged with a
// priority queue over a rank map; results are cached per word (bounded).
// Thread-safe after construction: the cache is sharded, one absl::Mutex per shard.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json_fwd.hpp"

namespace kvblock::tokenizer {

struct BpeModelOptions {
  // Words whose ids are kept in the cache, over all shards (0 disables it). Default: 65536.
  size_t cache_capacity = 65536;
  // Longest word (bytes) that is cached; longer words are rare and cheap to skip. Default: 256.
  size_t max_cached_word_bytes = 256;

  absl::Status Validate() const;
};

class BpeModel {
 public:
  // Builds the model from the tokenizer.json "model" object. INVALID_ARGUMENT naming `where` and
  // the field for a missing vocab, a merge that is not two tokens or names a token that is not in
  // the vocabulary, duplicate ids, and a dropout > 0 (not deterministic; not supported).
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& json,
                                                            const std::string& where,
                                                            const BpeModelOptions& options = {});

  // Appends the ids of one pre-tokenized word (byte-level text for byte-level BPE) to `ids`.
  // Characters that are neither in the vocabulary nor covered by byte fallback or unk are
  // dropped, as Hugging Face does. Thread-safe.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  // The token of `id`, or null when the vocabulary has no such id.
  const std::string* IdToToken(int32_t id) const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // One past the largest id of the vocabulary.
  int32_t VocabSize() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  struct CacheShard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> words ABSL_GUARDED_BY(mu);
  };
  static constexpr size_t kCacheShards = 16;

  BpeModel() = default;
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;
  const Merge* FindMerge(int32_t left, int32_t right) const;

  BpeModelOptions options_;
  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::array<int32_t, 256> byte_fallback_ids_{};  // ids of <0x00>..<0xFF>, -1 where missing
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace kvblock::tokenizer
