#include "worker/indexer/block_splitter.h"

#include <algorithm>
#include <array>

#include "absl/status/status.h"

namespace kvblock {
namespace {
constexpr std::array<std::string_view, 4> kDelimiters = {"\n\n", "---", "===", "\n\t"};
}  // namespace

std::vector<std::string_view> SplitAtDelimiters(std::string_view text) {
  std::vector<std::string_view> out;
  size_t start = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t matched = 0;
    for (std::string_view d : kDelimiters) {
      if (text.substr(i, d.size()) == d) {
        matched = d.size();
        break;
      }
    }
    if (matched == 0) {
      ++i;
      continue;
    }
    i += matched;
    // A run of delimiter characters ("\n\n\n", "-----") stays in one segment.
    while (i < text.size() && (text[i] == text[i - 1])) ++i;
    out.push_back(text.substr(start, i - start));
    start = i;
  }
  if (start < text.size()) out.push_back(text.substr(start));
  return out;
}

std::vector<std::vector<int32_t>> SplitTokenIds(const std::vector<int32_t>& ids,
                                                int64_t max_block_tokens) {
  std::vector<std::vector<int32_t>> out;
  if (max_block_tokens <= 0) return out;
  for (size_t i = 0; i < ids.size(); i += max_block_tokens) {
    const size_t end = std::min(ids.size(), i + static_cast<size_t>(max_block_tokens));
    out.emplace_back(ids.begin() + i, ids.begin() + end);
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> SplitIntoBlocks(const Tokenizer& tokenizer,
                                                                  std::string_view text,
                                                                  int64_t max_block_tokens) {
  if (max_block_tokens <= 0) {
    return absl::InvalidArgumentError("max_block_tokens must be > 0");
  }
  std::vector<std::vector<int32_t>> blocks;
  std::vector<int32_t> current;
  for (std::string_view segment : SplitAtDelimiters(text)) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(segment);
    if (!ids.ok()) return ids.status();
    if (ids->empty()) continue;
    if (static_cast<int64_t>(current.size() + ids->size()) <= max_block_tokens) {
      current.insert(current.end(), ids->begin(), ids->end());
      continue;
    }
    if (!current.empty()) blocks.push_back(std::move(current));
    current.clear();
    if (static_cast<int64_t>(ids->size()) <= max_block_tokens) {
      current = std::move(*ids);
    } else {
      std::vector<std::vector<int32_t>> pieces = SplitTokenIds(*ids, max_block_tokens);
      current = std::move(pieces.back());
      pieces.pop_back();
      for (auto& p : pieces) blocks.push_back(std::move(p));
    }
  }
  if (!current.empty()) blocks.push_back(std::move(current));
  return blocks;
}

}  // namespace kvblock
