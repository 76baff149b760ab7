#include "worker/tokenizer/added_vocabulary.h"

#include <algorithm>
#include <utility>

#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {

namespace {

// The character that ends `text` / starts `text`, or nothing.
bool LastChar(std::string_view text, char32_t* cp) {
  if (text.empty()) return false;
  size_t start = text.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return DecodeUtf8(text, start, cp) > 0;
}

bool FirstChar(std::string_view text, char32_t* cp) { return DecodeUtf8(text, 0, cp) > 0; }

// Offset just past the last non-whitespace character of `text` (0 if all whitespace).
size_t SpaceLeftmostAtEnd(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    char32_t cp;
    if (DecodeUtf8(text, start, &cp) == 0 || !IsWhitespace(cp)) return end;
    end = start;
  }
  return 0;
}

// Length of the whitespace that starts `text`.
size_t SpaceRightmostAtStart(std::string_view text) {
  size_t pos = 0;
  char32_t cp;
  size_t len;
  while (pos < text.size() && (len = DecodeUtf8(text, pos, &cp)) > 0 && IsWhitespace(cp)) pos += len;
  return pos;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<std::string> patterns,
                                     std::vector<const AddedToken*> tokens)
    : patterns_(std::move(patterns)), tokens_(std::move(tokens)) {
  for (size_t i = 0; i < patterns_.size(); ++i) {
    if (patterns_[i].empty()) continue;
    by_first_byte_[static_cast<uint8_t>(patterns_[i][0])].push_back(static_cast<int>(i));
  }
  for (auto& bucket : by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [this](int a, int b) {
      return patterns_[a].size() > patterns_[b].size();
    });
  }
}

void AddedTokenMatcher::Split(std::string_view text, std::vector<AddedSplit>* out) const {
  if (text.empty()) {
    out->push_back({0, 0, -1});
    return;
  }
  // 1. Non-overlapping leftmost-longest matches (what aho-corasick's LeftmostLongest yields).
  struct Raw {
    size_t begin, end;
    int index;
  };
  std::vector<Raw> raw;
  for (size_t pos = 0; pos < text.size();) {
    int found = -1;
    for (int index : by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      if (text.substr(pos).starts_with(patterns_[index])) {
        found = index;
        break;
      }
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    raw.push_back({pos, pos + patterns_[found].size(), found});
    pos += patterns_[found].size();
  }
  // 2. single_word, lstrip and rstrip, then the ordinary text between matches.
  size_t start_offset = 0;
  for (const Raw& r : raw) {
    size_t start = r.begin, stop = r.end;
    const AddedToken& token = *tokens_[r.index];
    if (token.single_word) {
      char32_t cp;
      const bool start_space = start == 0 || !LastChar(text.substr(0, start), &cp) || !IsAlphanumeric(cp);
      const bool stop_space =
          stop == text.size() || !FirstChar(text.substr(stop), &cp) || !IsAlphanumeric(cp);
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) start = std::max(SpaceLeftmostAtEnd(text.substr(0, start)), start_offset);
    if (token.rstrip) stop += SpaceRightmostAtStart(text.substr(stop));
    if (start > start_offset) out->push_back({start_offset, start, -1});
    out->push_back({start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset != text.size()) out->push_back({start_offset, text.size(), -1});
}

}  // namespace kvblock::tokenizer
