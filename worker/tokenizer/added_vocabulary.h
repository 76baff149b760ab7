// Added tokens of Hugging Face tokenizer.json ("added_tokens": special tokens such as
// <|begin_of_text|> and ordinary ones such as <think>). They are found in the text before the
// normalizer and pre-tokenizer run, as Hugging Face does: tokens with normalized=false in the raw
// text, the others in the normalized text; leftmost-longest, honouring single_word, lstrip and
// rstrip. Thread-safe after construction.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvblock::tokenizer {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;      // control token (skipped by decoders that skip special tokens)
  bool single_word = false;  // matches only when not inside a word
  bool lstrip = false;       // swallows the whitespace on its left
  bool rstrip = false;       // swallows the whitespace on its right
  bool normalized = true;    // matched in normalized text (else in the raw text)
};

// A stretch of text: an added token's id, or -1 for ordinary text.
struct AddedSplit {
  size_t begin = 0;
  size_t end = 0;
  int32_t id = -1;
};

// Finds a set of added tokens in text.
class AddedTokenMatcher {
 public:
  // `patterns[i]` is what is searched for `tokens[i]` (its content, normalized where it is
  // matched after normalization). Empty patterns never match. `tokens` must outlive the matcher.
  AddedTokenMatcher(std::vector<std::string> patterns, std::vector<const AddedToken*> tokens);

  // Cuts `text` into added-token matches and the ordinary text between them (empty `text`: one
  // empty ordinary split), as Hugging Face's AddedVocabulary::find_matches.
  void Split(std::string_view text, std::vector<AddedSplit>* out) const;
  bool empty() const { return patterns_.empty(); }

 private:
  std::vector<std::string> patterns_;
  std::vector<const AddedToken*> tokens_;
  std::array<std::vector<int>, 256> by_first_byte_;  // pattern indices, longest first
};

}  // namespace kvblock::tokenizer
