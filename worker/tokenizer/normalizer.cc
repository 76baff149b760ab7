#include "worker/tokenizer/normalizer.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/json_util.h"
#include "worker/tokenizer/regex.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {

namespace {

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalizationForm form) : form_(form) {}
  void Normalize(std::string* text) const override { *text = NormalizeUnicode(*text, form_); }

 private:
  NormalizationForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = Lowercase(*text); }
};

// Removes leading and/or trailing whitespace.
class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    size_t begin = 0, end = text->size();
    char32_t cp;
    if (left_) {
      size_t len;
      while (begin < end && (len = DecodeUtf8(*text, begin, &cp)) > 0 && IsWhitespace(cp))
        begin += len;
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>((*text)[start]) & 0xC0) == 0x80)
          --start;
        if (DecodeUtf8(*text, start, &cp) == 0 || !IsWhitespace(cp)) break;
        end = start;
      }
    }
    *text = text->substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

// Removes nonspacing marks (used after NFD to strip accents).
class StripAccentsNormalizer final : public Normalizer {
 public:
  void Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    for (size_t pos = 0; pos < text->size();) {
      char32_t cp;
      const size_t len = DecodeUtf8(*text, pos, &cp);
      if (len == 0) {
        out.push_back((*text)[pos++]);
        continue;
      }
      if (!IsNonspacingMark(cp)) out.append(*text, pos, len);
      pos += len;
    }
    *text = std::move(out);
  }
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Normalize(std::string* text) const override {
    std::vector<RegexMatch> matches;
    pattern_->FindAll(*text, &matches);
    if (matches.empty()) return;
    std::string out;
    size_t prev = 0;
    for (const RegexMatch& m : matches) {
      out.append(*text, prev, m.begin - prev);
      out.append(content_);
      prev = m.end;
    }
    out.append(*text, prev, std::string::npos);
    *text = std::move(out);
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

// Prepends a string to non-empty text.
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

// BERT's normalizer: control characters removed and whitespace made ' ', CJK characters padded
// with spaces, optional accent stripping (after NFD) and lowercasing.
class BertNormalizer final : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool chinese_chars, bool strip_accents, bool lowercase)
      : clean_text_(clean_text),
        chinese_chars_(chinese_chars),
        strip_accents_(strip_accents),
        lowercase_(lowercase) {}
  void Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    for (size_t pos = 0; pos < text->size();) {
      char32_t cp;
      const size_t len = DecodeUtf8(*text, pos, &cp);
      if (len == 0) {
        out.push_back((*text)[pos++]);
        continue;
      }
      pos += len;
      if (clean_text_) {
        if (cp == 0 || cp == 0xFFFD || IsBertControl(cp)) continue;
        if (IsBertWhitespace(cp)) cp = ' ';
      }
      if (chinese_chars_ && IsChinese(cp)) {
        out.push_back(' ');
        AppendUtf8(cp, &out);
        out.push_back(' ');
      } else {
        AppendUtf8(cp, &out);
      }
    }
    if (strip_accents_) {
      out = NormalizeUnicode(out, NormalizationForm::kNfd);
      StripAccentsNormalizer().Normalize(&out);
    }
    if (lowercase_) out = Lowercase(out);
    *text = std::move(out);
  }

 private:
  static bool IsBertWhitespace(char32_t cp) {
    return cp == '\t' || cp == '\n' || cp == '\r' || cp == ' ' || (cp > 0x7F && IsWhitespace(cp));
  }
  static bool IsBertControl(char32_t cp) {
    if (cp == '\t' || cp == '\n' || cp == '\r') return false;
    return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0);
  }
  static bool IsChinese(char32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
  }
  bool clean_text_, chinese_chars_, strip_accents_, lowercase_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void Normalize(std::string* text) const override {
    for (const auto& step : steps_) step->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const nlohmann::json& json,
                                                               const std::string& where) {
  auto type = JsonType(json, where);
  if (!type.ok()) return type.status();
  if (*type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalizationForm::kNfc);
  if (*type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalizationForm::kNfd);
  if (*type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalizationForm::kNfkc);
  if (*type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalizationForm::kNfkd);
  if (*type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (*type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (*type == "Strip") {
    auto left = JsonBoolOr(json, "strip_left", where, true);
    if (!left.ok()) return left.status();
    auto right = JsonBoolOr(json, "strip_right", where, true);
    if (!right.ok()) return right.status();
    return std::make_unique<StripNormalizer>(*left, *right);
  }
  if (*type == "Replace") {
    if (!json.contains("pattern")) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".pattern: missing"));
    }
    auto pattern = PatternFromJson(json["pattern"], where);
    if (!pattern.ok()) return pattern.status();
    auto content = JsonString(json, "content", where);
    if (!content.ok()) return content.status();
    return std::make_unique<ReplaceNormalizer>(*std::move(pattern), *std::move(content));
  }
  if (*type == "Prepend") {
    auto prefix = JsonString(json, "prepend", where);
    if (!prefix.ok()) return prefix.status();
    return std::make_unique<PrependNormalizer>(*std::move(prefix));
  }
  if (*type == "BertNormalizer") {
    auto clean = JsonBoolOr(json, "clean_text", where, true);
    auto chinese = JsonBoolOr(json, "handle_chinese_chars", where, true);
    auto lower = JsonBoolOr(json, "lowercase", where, true);
    for (const auto* s : {&clean, &chinese, &lower}) {
      if (!s->ok()) return s->status();
    }
    // strip_accents: null means "follow lowercase".
    auto strip = JsonBoolOr(json, "strip_accents", where, *lower);
    if (!strip.ok()) return strip.status();
    return std::make_unique<BertNormalizer>(*clean, *chinese, *strip, *lower);
  }
  if (*type == "Sequence") {
    auto steps = JsonSequence<Normalizer>(
        json, "normalizers", where,
        [](const nlohmann::json& j, const std::string& w) { return NormalizerFromJson(j, w); });
    if (!steps.ok()) return steps.status();
    return std::make_unique<SequenceNormalizer>(*std::move(steps));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": unsupported normalizer type '", *type, "'"));
}

}  // namespace kvblock::tokenizer
