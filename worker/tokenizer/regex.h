// Regular expressions written for Oniguruma (what Hugging Face tokenizers uses), run with RE2.
// The pattern is translated: \s, \S, \d, \w, \h take their Unicode (Oniguruma) meaning, `(?<name>`
// becomes `(?P<name>`, \uHHHH becomes \x{HHHH}. RE2 has no look-around; the one form that
// tokenizers need, a top-level alternative `\s+(?!\S)` (GPT-2, Llama 3, Qwen), is emulated exactly:
// it matches `\s+` and gives back the last whitespace character when a non-space follows, and
// falls through to the later alternatives where nothing is left. Any other look-around is a
// clear INVALID_ARGUMENT. Thread-safe after construction (RE2 objects are).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace re2 {
class RE2;
}

namespace kvblock::tokenizer {

struct RegexMatch {
  size_t begin = 0;  // byte offsets into the searched text
  size_t end = 0;
};

// The result of translating an Oniguruma pattern for RE2 (exposed for tests).
struct TranslatedPattern {
  std::string re2_pattern;     // the whole pattern; top-level alternatives wrapped in groups
                               // when `lookahead_group` >= 0
  int lookahead_group = -1;    // RE2 group of the emulated `\s+(?!\S)` alternative, or -1
  std::string rest_pattern;    // the alternatives after that one ("" if none)
};

absl::StatusOr<TranslatedPattern> TranslateOnigurumaPattern(std::string_view pattern);

class Regex {
 public:
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Compiles an Oniguruma-syntax pattern. INVALID_ARGUMENT naming the pattern when it uses a
  // construct that cannot be translated or that RE2 rejects.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  // A pattern that matches `literal` exactly (Hugging Face's String patterns). An empty literal
  // matches nothing.
  static std::unique_ptr<Regex> Literal(std::string_view literal);

  // All non-overlapping matches left to right, as Oniguruma's find_iter reports them (an empty
  // match right after the previous match is skipped). Appends to `out`.
  void FindAll(std::string_view text, std::vector<RegexMatch>* out) const;

 private:
  Regex() = default;
  // The leftmost match starting at or after `pos`; false if none.
  bool FindAt(std::string_view text, size_t pos, RegexMatch* match) const;

  std::string literal_;  // used when re_ is null
  std::unique_ptr<re2::RE2> re_;
  std::unique_ptr<re2::RE2> rest_;  // alternatives after the emulated look-ahead one
  int lookahead_group_ = -1;
};

}  // namespace kvblock::tokenizer
