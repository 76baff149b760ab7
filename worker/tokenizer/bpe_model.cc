#include "worker/tokenizer/bpe_model.h"

#include <functional>
#include <queue>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/json_util.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {

namespace {

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

absl::Status BpeModelOptions::Validate() const {
  if (cache_capacity > 0 && max_cached_word_bytes == 0) {
    return absl::InvalidArgumentError("BpeModelOptions.max_cached_word_bytes must be > 0 when the cache is on");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const nlohmann::json& json,
                                                             const std::string& where,
                                                             const BpeModelOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (!json.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected an object"));
  std::unique_ptr<BpeModel> model(new BpeModel());
  model->options_ = options;

  const auto vocab_it = json.find("vocab");
  if (vocab_it == json.end() || !vocab_it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".vocab: expected an object of token -> id"));
  }
  model->vocab_.reserve(vocab_it->size());
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab_it->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t{1} << 31)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".vocab['", token, "']: expected a non-negative 32-bit integer id"));
    }
    const int64_t value = id.get<int64_t>();
    model->vocab_[token] = static_cast<int32_t>(value);
    max_id = std::max(max_id, value);
  }
  if (max_id >= (int64_t{1} << 26)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".vocab: id ", max_id, " is implausibly large"));
  }
  model->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  model->has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : model->vocab_) {
    model->id_to_token_[id] = token;
    model->has_id_[id] = true;
  }

  auto dropout = json.find("dropout");
  if (dropout != json.end() && !dropout->is_null()) {
    if (!dropout->is_number()) return absl::InvalidArgumentError(absl::StrCat(where, ".dropout: expected a number"));
    if (dropout->get<double>() != 0.0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".dropout: BPE dropout is random and not supported for inference"));
    }
  }
  auto byte_fallback = JsonBoolOr(json, "byte_fallback", where, false);
  auto fuse_unk = JsonBoolOr(json, "fuse_unk", where, false);
  auto ignore_merges = JsonBoolOr(json, "ignore_merges", where, false);
  auto prefix = JsonStringOr(json, "continuing_subword_prefix", where, "");
  auto suffix = JsonStringOr(json, "end_of_word_suffix", where, "");
  auto unk = JsonStringOr(json, "unk_token", where, "");
  for (const absl::Status& s : {byte_fallback.status(), fuse_unk.status(), ignore_merges.status(),
                                prefix.status(), suffix.status(), unk.status()}) {
    if (!s.ok()) return s;
  }
  model->byte_fallback_ = *byte_fallback;
  model->fuse_unk_ = *fuse_unk;
  model->ignore_merges_ = *ignore_merges;
  model->continuing_subword_prefix_ = *prefix;
  model->end_of_word_suffix_ = *suffix;
  if (!unk->empty()) {
    auto id = model->TokenToId(*unk);
    if (!id) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".unk_token: '", *unk, "' is not in the vocabulary"));
    }
    model->unk_id_ = *id;
  }
  for (int b = 0; b < 256; ++b) {
    auto id = model->TokenToId(absl::StrFormat("<0x%02X>", b));
    model->byte_fallback_ids_[b] = id ? *id : -1;
  }

  const auto merges_it = json.find("merges");
  if (merges_it == json.end() || !merges_it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".merges: expected an array"));
  }
  model->merges_.reserve(merges_it->size());
  const size_t prefix_len = model->continuing_subword_prefix_.size();
  for (size_t i = 0; i < merges_it->size(); ++i) {
    const nlohmann::json& m = (*merges_it)[i];
    std::string left, right;
    if (m.is_string()) {
      const std::string& line = m.get_ref<const std::string&>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ".merges[", i, "]: '", line, "' is not two tokens separated by one space"));
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".merges[", i, "]: expected \"a b\" or [\"a\", \"b\"]"));
    }
    auto left_id = model->TokenToId(left);
    auto right_id = model->TokenToId(right);
    if (!left_id || !right_id) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".merges[", i, "]: token '",
                                                     left_id ? right : left,
                                                     "' is not in the vocabulary"));
    }
    if (right.size() < prefix_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".merges[", i, "]: '", right, "' is shorter than continuing_subword_prefix"));
    }
    const std::string merged = left + right.substr(prefix_len);
    auto merged_id = model->TokenToId(merged);
    if (!merged_id) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".merges[", i, "]: merged token '",
                                                     merged, "' is not in the vocabulary"));
    }
    model->merges_[PairKey(*left_id, *right_id)] = Merge{static_cast<int32_t>(i), *merged_id};
  }
  return model;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = vocab_.find(AbslView(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const BpeModel::Merge* BpeModel::FindMerge(int32_t left, int32_t right) const {
  const auto it = merges_.find(PairKey(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = TokenToId(word)) {
      ids->push_back(*id);
      return;
    }
  }
  const bool cacheable = options_.cache_capacity > 0 && word.size() <= options_.max_cached_word_bytes;
  CacheShard* shard = nullptr;
  if (cacheable) {
    shard = &cache_[std::hash<std::string_view>()(word) % kCacheShards];
    absl::MutexLock lock(&shard->mu);
    const auto it = shard->words.find(AbslView(word));
    if (it != shard->words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  MergeWord(word, ids);
  if (cacheable) {
    std::vector<int32_t> result(ids->begin() + static_cast<std::ptrdiff_t>(first), ids->end());
    absl::MutexLock lock(&shard->mu);
    // Bounded: a full shard starts over rather than tracking recency.
    if (shard->words.size() >= options_.cache_capacity / kCacheShards + 1) shard->words.clear();
    shard->words.emplace(std::string(word), std::move(result));
  }
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    size_t len;  // bytes; 0 once merged into its left neighbour
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&symbols](int32_t id, size_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, len});
  };
  // An unk symbol not yet added (so that consecutive unknown characters can be fused).
  bool has_unk = false;
  int32_t unk_id = -1;
  size_t unk_len = 0;
  std::string piece;
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = Utf8CharLength(word, pos);
    const bool is_first = pos == 0, is_last = pos + len == word.size();
    piece.clear();
    if (!is_first) piece.append(continuing_subword_prefix_);
    piece.append(word.substr(pos, len));
    if (is_last) piece.append(end_of_word_suffix_);
    pos += len;
    if (auto id = TokenToId(piece)) {
      if (has_unk) {
        add(unk_id, unk_len);
        has_unk = false;
      }
      add(*id, len);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : piece) all = all && byte_fallback_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (char c : piece) add(byte_fallback_ids_[static_cast<uint8_t>(c)], 1);
        continue;
      }
    }
    if (unk_id_) {
      if (has_unk && fuse_unk_) {
        unk_len += len;
      } else {
        if (has_unk) add(unk_id, unk_len);
        has_unk = true;
        unk_id = *unk_id_;
        unk_len = len;
      }
    }
  }
  if (has_unk) add(unk_id, unk_len);

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.len == 0 || current.next == -1) continue;
    const int32_t next_pos = current.next;
    const Symbol right = symbols[next_pos];
    const Merge* m = FindMerge(current.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale entry
    current.id = top.new_id;
    current.len += right.len;
    current.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (current.prev >= 0) {
      if (const Merge* pm = FindMerge(symbols[current.prev].id, current.id)) {
        queue.push({pm->rank, current.prev, pm->new_id});
      }
    }
    if (current.next >= 0) {
      if (const Merge* nm = FindMerge(current.id, symbols[current.next].id)) {
        queue.push({nm->rank, top.pos, nm->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids->push_back(s.id);
  }
}

}  // namespace kvblock::tokenizer
