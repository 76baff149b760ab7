// Pre-tokenizers of Hugging Face tokenizer.json (the "pre_tokenizer" field): Split (regex or
// string, every delimiter behavior, invert), ByteLevel, Digits, Whitespace, WhitespaceSplit,
// Punctuation, Metaspace, BertPreTokenizer, CharDelimiterSplit and Sequence. They cut normalized
// text into pieces that the model tokenizes independently. Thread-safe after construction.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace kvblock::tokenizer {

// One piece of text on its way to the model.
struct PreToken {
  std::string text;
  // Whether the piece starts at offset 0 of the original input (Metaspace's "first" scheme).
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `*pieces` with their pre-tokenized pieces (in order; empty pieces are dropped).
  virtual void PreTokenize(std::vector<PreToken>* pieces) const = 0;
};

// Hugging Face's SplitDelimiterBehavior: what happens to the matched delimiters.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A stretch of a piece: a match of the delimiter pattern or the text between matches.
struct Segment {
  size_t begin = 0;
  size_t end = 0;
  bool is_match = false;
};

// Cuts `piece` along `segments` (which cover it in order) as `behavior` says; appends the
// non-empty results to `out`.
void SplitBySegments(const PreToken& piece, const std::vector<Segment>& segments,
                     SplitBehavior behavior, std::vector<PreToken>* out);

// Builds a pre-tokenizer from its tokenizer.json object. INVALID_ARGUMENT naming `where` and the
// field for unknown types, bad behaviors and regexes that cannot be supported.
absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const nlohmann::json& json,
                                                                   const std::string& where);

}  // namespace kvblock::tokenizer
