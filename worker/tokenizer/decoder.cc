#include "worker/tokenizer/decoder.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/byte_level.h"
#include "worker/tokenizer/json_util.h"
#include "worker/tokenizer/regex.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {

namespace {

std::vector<char32_t> Chars(const std::string& text) {
  std::vector<char32_t> chars;
  for (size_t pos = 0; pos < text.size();) {
    char32_t cp;
    size_t len = DecodeUtf8(text, pos, &cp);
    if (len == 0) len = 1, cp = 0xFFFD;
    chars.push_back(cp);
    pos += len;
  }
  return chars;
}

// Byte-level characters back to bytes; one string for all tokens, lossily made UTF-8. A token with
// a character outside the byte-level alphabet (an added token, say) contributes its own bytes.
class ByteLevelDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    std::string token_bytes;
    for (const std::string& token : *tokens) {
      token_bytes.clear();
      bool all = true;
      for (size_t pos = 0; pos < token.size() && all;) {
        char32_t cp;
        const size_t len = DecodeUtf8(token, pos, &cp);
        const int b = len > 0 ? ByteLevelByte(cp) : -1;
        if (b < 0) {
          all = false;
        } else {
          token_bytes.push_back(static_cast<char>(b));
        }
        pos += len;
      }
      bytes.append(all ? token_bytes : token);
    }
    tokens->assign(1, LossyUtf8(bytes));
  }
};

// <0xAB> tokens back to bytes; a run of them that is not UTF-8 becomes one U+FFFD per byte.
class ByteFallbackDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t pending_count = 0;
    const auto flush = [&] {
      if (pending_count == 0) return;
      if (IsValidUtf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending_count; ++i) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
      pending_count = 0;
    };
    for (std::string& token : *tokens) {
      int byte = -1;
      if (token.size() == 6 && token.starts_with("<0x") && token.ends_with(">")) {
        byte = HexByte(token[3], token[4]);
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
        ++pending_count;
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    *tokens = std::move(out);
  }

 private:
  static int Hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int HexByte(char hi, char lo) {
    const int h = Hex(hi), l = Hex(lo);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string all;
    for (const std::string& t : *tokens) all += t;
    tokens->assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      const std::vector<char32_t> chars = Chars(token);
      size_t start_cut = 0;
      for (size_t i = 0; i < start_ && i < chars.size() && chars[i] == content_; ++i)
        start_cut = i + 1;
      size_t stop_cut = chars.size();
      for (size_t i = 0; i < stop_ && i < chars.size(); ++i) {
        const size_t index = chars.size() - i - 1;
        if (chars[index] != content_) break;
        stop_cut = index;
      }
      std::string out;
      for (size_t i = start_cut; i < stop_cut; ++i) AppendUtf8(chars[i], &out);
      token = std::move(out);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<RegexMatch> matches;
    for (std::string& token : *tokens) {
      matches.clear();
      pattern_->FindAll(token, &matches);
      if (matches.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (const RegexMatch& m : matches) {
        out.append(token, prev, m.begin - prev);
        out.append(content_);
        prev = m.end;
      }
      out.append(token, prev, std::string::npos);
      token = std::move(out);
    }
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

// The replacement character becomes a space, except in the first token when a prefix space was
// added at encoding time.
class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, bool prepends)
      : replacement_(replacement), prepends_(prepends) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string out;
      for (char32_t c : Chars((*tokens)[i])) {
        if (c == replacement_) {
          if (i == 0 && prepends_) continue;
          out.push_back(' ');
        } else {
          AppendUtf8(c, &out);
        }
      }
      (*tokens)[i] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  bool prepends_;
};

// Classic BPE end-of-word suffixes: the suffix becomes a space (nothing after the last token).
class BpeSuffixDecoder final : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    if (suffix_.empty()) return;
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& token = (*tokens)[i];
      const char* replacement = i + 1 == tokens->size() ? "" : " ";
      std::string out;
      size_t prev = 0, at;
      while ((at = token.find(suffix_, prev)) != std::string::npos) {
        out.append(token, prev, at - prev);
        out.append(replacement);
        prev = at + suffix_.size();
      }
      out.append(token, prev, std::string::npos);
      token = std::move(out);
    }
  }

 private:
  std::string suffix_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) step->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

char32_t FirstCodePoint(const std::string& s) {
  char32_t cp = 0;
  DecodeUtf8(s, 0, &cp);
  return cp;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const nlohmann::json& json,
                                                         const std::string& where) {
  auto type = JsonType(json, where);
  if (!type.ok()) return type.status();
  if (*type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (*type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (*type == "Fuse") return std::make_unique<FuseDecoder>();
  if (*type == "Strip") {
    auto content = JsonChar(json, "content", where, " ");
    auto start = JsonIntOr(json, "start", where, 0);
    auto stop = JsonIntOr(json, "stop", where, 0);
    for (const absl::Status& s : {content.status(), start.status(), stop.status()}) {
      if (!s.ok()) return s;
    }
    if (*start < 0 || *stop < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": start and stop must be >= 0"));
    }
    return std::make_unique<StripDecoder>(FirstCodePoint(*content), static_cast<size_t>(*start),
                                          static_cast<size_t>(*stop));
  }
  if (*type == "Replace") {
    if (!json.contains("pattern")) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".pattern: missing"));
    }
    auto pattern = PatternFromJson(json["pattern"], where);
    if (!pattern.ok()) return pattern.status();
    auto content = JsonString(json, "content", where);
    if (!content.ok()) return content.status();
    return std::make_unique<ReplaceDecoder>(*std::move(pattern), *std::move(content));
  }
  if (*type == "Metaspace") {
    auto replacement = JsonChar(json, "replacement", where, "\xE2\x96\x81");
    if (!replacement.ok()) return replacement.status();
    auto add_prefix_space = JsonBoolOr(json, "add_prefix_space", where, true);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    bool prepends = *add_prefix_space;
    auto scheme = JsonStringOr(json, "prepend_scheme", where, "");
    if (!scheme.ok()) return scheme.status();
    if (!scheme->empty()) {
      if (*scheme != "always" && *scheme != "first" && *scheme != "never") {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".prepend_scheme: unknown value '", *scheme, "'"));
      }
      prepends = *scheme != "never";
    }
    return std::make_unique<MetaspaceDecoder>(FirstCodePoint(*replacement), prepends);
  }
  if (*type == "BPEDecoder") {
    auto suffix = JsonStringOr(json, "suffix", where, "</w>");
    if (!suffix.ok()) return suffix.status();
    return std::make_unique<BpeSuffixDecoder>(*std::move(suffix));
  }
  if (*type == "Sequence") {
    auto steps = JsonSequence<Decoder>(
        json, "decoders", where,
        [](const nlohmann::json& j, const std::string& w) { return DecoderFromJson(j, w); });
    if (!steps.ok()) return steps.status();
    return std::make_unique<SequenceDecoder>(*std::move(steps));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": unsupported decoder type '", *type, "'"));
}

}  // namespace kvblock::tokenizer
