#include "worker/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/byte_level.h"
#include "worker/tokenizer/json_util.h"
#include "worker/tokenizer/regex.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {

namespace {

// GPT-2's pattern, used by ByteLevel with use_regex.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::vector<Segment> SegmentsFromMatches(std::string_view text,
                                         const std::vector<RegexMatch>& matches, bool invert) {
  std::vector<Segment> segments;
  if (text.empty()) {
    segments.push_back({0, 0, invert});
    return segments;
  }
  size_t prev = 0;
  for (const RegexMatch& m : matches) {
    if (prev != m.begin) segments.push_back({prev, m.begin, invert});
    segments.push_back({m.begin, m.end, !invert});
    prev = m.end;
  }
  if (prev != text.size()) segments.push_back({prev, text.size(), invert});
  return segments;
}

// Every character for which `pred` holds is a match of its own.
std::vector<Segment> SegmentsFromPredicate(std::string_view text,
                                           const std::function<bool(char32_t)>& pred) {
  std::vector<Segment> segments;
  if (text.empty()) {
    segments.push_back({0, 0, false});
    return segments;
  }
  size_t last = 0, pos = 0;
  while (pos < text.size()) {
    char32_t cp;
    size_t len = DecodeUtf8(text, pos, &cp);
    if (len == 0) len = 1, cp = 0xFFFD;
    if (pred(cp)) {
      if (last < pos) segments.push_back({last, pos, false});
      segments.push_back({pos, pos + len, true});
      last = pos + len;
    }
    pos += len;
  }
  if (last < text.size()) segments.push_back({last, text.size(), false});
  return segments;
}

template <typename F>
void SplitEach(std::vector<PreToken>* pieces, F&& split) {
  std::vector<PreToken> out;
  out.reserve(pieces->size());
  for (const PreToken& piece : *pieces) split(piece, &out);
  *pieces = std::move(out);
}

absl::StatusOr<SplitBehavior> ParseBehavior(const nlohmann::json& json, const std::string& where,
                                            const char* fallback) {
  auto name = JsonStringOr(json, "behavior", where, fallback);
  if (!name.ok()) return name.status();
  if (*name == "Removed") return SplitBehavior::kRemoved;
  if (*name == "Isolated") return SplitBehavior::kIsolated;
  if (*name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (*name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (*name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat(where, ".behavior: unknown value '", *name, "'"));
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    std::vector<RegexMatch> matches;
    SplitEach(pieces, [&](const PreToken& piece, std::vector<PreToken>* out) {
      matches.clear();
      pattern_->FindAll(piece.text, &matches);
      SplitBySegments(piece, SegmentsFromMatches(piece.text, matches, invert_), behavior_, out);
    });
  }

 private:
  std::unique_ptr<Regex> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class PredicatePreTokenizer final : public PreTokenizer {
 public:
  PredicatePreTokenizer(std::function<bool(char32_t)> pred, SplitBehavior behavior)
      : pred_(std::move(pred)), behavior_(behavior) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    SplitEach(pieces, [&](const PreToken& piece, std::vector<PreToken>* out) {
      SplitBySegments(piece, SegmentsFromPredicate(piece.text, pred_), behavior_, out);
    });
  }

 private:
  std::function<bool(char32_t)> pred_;
  SplitBehavior behavior_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    std::vector<RegexMatch> matches;
    SplitEach(pieces, [&](const PreToken& piece, std::vector<PreToken>* out) {
      PreToken p = piece;
      if (add_prefix_space_ && !p.text.starts_with(' ')) p.text.insert(0, " ");
      if (regex_ == nullptr) {
        if (!p.text.empty()) out->push_back(std::move(p));
        return;
      }
      matches.clear();
      regex_->FindAll(p.text, &matches);
      SplitBySegments(p, SegmentsFromMatches(p.text, matches, false), SplitBehavior::kIsolated,
                      out);
    });
    for (PreToken& piece : *pieces) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      AppendByteLevel(piece.text, &mapped);
      piece.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null without use_regex
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {
    DecodeUtf8(replacement_, 0, &replacement_cp_);
  }
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    SplitEach(pieces, [&](const PreToken& piece, std::vector<PreToken>* out) {
      PreToken p;
      p.at_start = piece.at_start;
      p.text.reserve(piece.text.size() + 8);
      for (char c : piece.text) {
        if (c == ' ') {
          p.text.append(replacement_);
        } else {
          p.text.push_back(c);
        }
      }
      const bool prepend =
          scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && piece.at_start);
      if (prepend && !p.text.starts_with(replacement_)) p.text.insert(0, replacement_);
      if (!split_) {
        if (!p.text.empty()) out->push_back(std::move(p));
        return;
      }
      const char32_t r = replacement_cp_;
      SplitBySegments(p, SegmentsFromPredicate(p.text, [r](char32_t c) { return c == r; }),
                      SplitBehavior::kMergedWithNext, out);
    });
  }

 private:
  std::string replacement_;
  char32_t replacement_cp_ = 0;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    for (const auto& step : steps_) step->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

void SplitBySegments(const PreToken& piece, const std::vector<Segment>& segments,
                     SplitBehavior behavior, std::vector<PreToken>* out) {
  // (begin, end, remove) after applying the behavior, as tokenizers' NormalizedString::split.
  struct Cut {
    size_t begin, end;
    bool remove;
  };
  std::vector<Cut> cuts;
  cuts.reserve(segments.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Segment& s : segments) cuts.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments) cuts.push_back({s.begin, s.end, s.is_match});
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && !cuts.empty()) {
          cuts.back().end = s.end;
        } else {
          cuts.push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_match && !previous_match && !cuts.empty()) {
          cuts.back().begin = it->begin;
        } else {
          cuts.push_back({it->begin, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(cuts.begin(), cuts.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match == previous_match && !cuts.empty()) {
          cuts.back().end = s.end;
        } else {
          cuts.push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    }
  }
  for (const Cut& c : cuts) {
    if (c.remove || c.begin == c.end) continue;
    out->push_back({piece.text.substr(c.begin, c.end - c.begin), piece.at_start && c.begin == 0});
  }
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const nlohmann::json& json,
                                                                   const std::string& where) {
  auto type = JsonType(json, where);
  if (!type.ok()) return type.status();
  if (*type == "Split") {
    if (!json.contains("pattern")) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".pattern: missing"));
    }
    auto pattern = PatternFromJson(json["pattern"], where);
    if (!pattern.ok()) return pattern.status();
    if (!json.contains("behavior")) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".behavior: missing"));
    }
    auto behavior = ParseBehavior(json, where, "");
    if (!behavior.ok()) return behavior.status();
    auto invert = JsonBoolOr(json, "invert", where, false);
    if (!invert.ok()) return invert.status();
    return std::make_unique<SplitPreTokenizer>(*std::move(pattern), *behavior, *invert);
  }
  if (*type == "ByteLevel") {
    auto add_prefix_space = JsonBoolOr(json, "add_prefix_space", where, true);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    auto use_regex = JsonBoolOr(json, "use_regex", where, true);
    if (!use_regex.ok()) return use_regex.status();
    std::unique_ptr<Regex> regex;
    if (*use_regex) {
      auto compiled = Regex::Compile(kGpt2Pattern);
      if (!compiled.ok()) return compiled.status();
      regex = *std::move(compiled);
    }
    return std::make_unique<ByteLevelPreTokenizer>(*add_prefix_space, std::move(regex));
  }
  if (*type == "Digits") {
    auto individual = JsonBoolOr(json, "individual_digits", where, false);
    if (!individual.ok()) return individual.status();
    return std::make_unique<PredicatePreTokenizer>(
        IsNumeric, *individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (*type == "Whitespace") {
    auto regex = Regex::Compile(R"(\w+|[^\w\s]+)");
    if (!regex.ok()) return regex.status();
    // The words and runs of symbols are kept; what lies between (whitespace) is removed.
    return std::make_unique<SplitPreTokenizer>(*std::move(regex), SplitBehavior::kRemoved, true);
  }
  if (*type == "WhitespaceSplit") {
    return std::make_unique<PredicatePreTokenizer>(IsWhitespace, SplitBehavior::kRemoved);
  }
  if (*type == "Punctuation") {
    auto behavior = ParseBehavior(json, where, "Isolated");
    if (!behavior.ok()) return behavior.status();
    return std::make_unique<PredicatePreTokenizer>(IsPunctuation, *behavior);
  }
  if (*type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    steps.push_back(std::make_unique<PredicatePreTokenizer>(IsWhitespace, SplitBehavior::kRemoved));
    steps.push_back(
        std::make_unique<PredicatePreTokenizer>(IsPunctuation, SplitBehavior::kIsolated));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (*type == "CharDelimiterSplit") {
    auto delimiter = JsonChar(json, "delimiter", where, "");
    if (!delimiter.ok()) return delimiter.status();
    char32_t d;
    DecodeUtf8(*delimiter, 0, &d);
    return std::make_unique<PredicatePreTokenizer>([d](char32_t c) { return c == d; },
                                                   SplitBehavior::kRemoved);
  }
  if (*type == "Metaspace") {
    auto replacement = JsonChar(json, "replacement", where, "\xE2\x96\x81");
    if (!replacement.ok()) return replacement.status();
    auto split = JsonBoolOr(json, "split", where, true);
    if (!split.ok()) return split.status();
    PrependScheme scheme = PrependScheme::kAlways;
    auto add_prefix_space = JsonBoolOr(json, "add_prefix_space", where, true);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    if (!*add_prefix_space) scheme = PrependScheme::kNever;
    auto scheme_name = JsonStringOr(json, "prepend_scheme", where, "");
    if (!scheme_name.ok()) return scheme_name.status();
    if (*scheme_name == "always") {
      scheme = PrependScheme::kAlways;
    } else if (*scheme_name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (*scheme_name == "never") {
      scheme = PrependScheme::kNever;
    } else if (!scheme_name->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".prepend_scheme: unknown value '", *scheme_name, "'"));
    }
    return std::make_unique<MetaspacePreTokenizer>(*std::move(replacement), scheme, *split);
  }
  if (*type == "Sequence") {
    auto steps = JsonSequence<PreTokenizer>(
        json, "pretokenizers", where,
        [](const nlohmann::json& j, const std::string& w) { return PreTokenizerFromJson(j, w); });
    if (!steps.ok()) return steps.status();
    return std::make_unique<SequencePreTokenizer>(*std::move(steps));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": unsupported pre-tokenizer type '", *type, "'"));
}

}  // namespace kvblock::tokenizer
