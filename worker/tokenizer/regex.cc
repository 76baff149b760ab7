#include "worker/tokenizer/regex.h"

#include <cctype>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "re2/re2.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {

namespace {

// Oniguruma's \s: the Unicode White_Space property (unicode.cc IsWhitespace), and its complement,
// as RE2 class bodies (usable inside or outside brackets).
constexpr char kSpaceClass[] =
    R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
constexpr char kNonSpaceClass[] =
    R"(\x{0}-\x{8}\x{E}-\x{1F}\x{21}-\x{84}\x{86}-\x{9F}\x{A1}-\x{167F}\x{1681}-\x{1FFF})"
    R"(\x{200B}-\x{2027}\x{202A}-\x{202E}\x{2030}-\x{205E}\x{2060}-\x{2FFF}\x{3001}-\x{10FFFF})";
constexpr char kWordClass[] = R"(\p{L}\p{M}\p{Nd}\p{Pc})";
constexpr char kLookaheadAlternative[] = R"(\s+(?!\S))";

absl::Status Unsupported(std::string_view pattern, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("regex '", std::string(pattern), "': ",
                                                 std::string(what)));
}

// Splits `body` at its top-level '|' (outside groups, classes and escapes).
absl::StatusOr<std::vector<std::string>> SplitAlternatives(std::string_view body,
                                                           std::string_view pattern) {
  std::vector<std::string> alts;
  std::string current;
  int depth = 0;
  bool in_class = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c == '\\' && i + 1 < body.size()) {
      current.push_back(c);
      current.push_back(body[++i]);
      continue;
    }
    if (in_class) {
      if (c == '[' && i + 1 < body.size() && body[i + 1] == ':') {
        const size_t close = body.find(":]", i + 2);
        if (close == std::string_view::npos) return Unsupported(pattern, "unterminated [: class");
        current.append(body.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
      if (c == '[') return Unsupported(pattern, "nested character classes are not supported");
      if (c == ']') in_class = false;
      current.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      current.push_back(c);
      if (i + 1 < body.size() && body[i + 1] == '^') current.push_back(body[++i]);
      if (i + 1 < body.size() && body[i + 1] == ']') current.push_back(body[++i]);  // literal ]
      continue;
    }
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (c == '|' && depth == 0) {
      alts.push_back(std::move(current));
      current.clear();
      continue;
    }
    current.push_back(c);
  }
  if (in_class) return Unsupported(pattern, "unterminated character class");
  alts.push_back(std::move(current));
  return alts;
}

// Translates one alternative (no top-level '|') to RE2 syntax; counts its capturing groups.
absl::StatusOr<std::string> TranslateAlternative(std::string_view alt, std::string_view pattern,
                                                 int* captures) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < alt.size(); ++i) {
    const char c = alt[i];
    if (c == '\\' && i + 1 < alt.size()) {
      const char e = alt[++i];
      switch (e) {
        case 's': absl::StrAppend(&out, in_class ? "" : "[", kSpaceClass, in_class ? "" : "]"); break;
        case 'S': absl::StrAppend(&out, in_class ? "" : "[", kNonSpaceClass, in_class ? "" : "]"); break;
        case 'd': out.append(R"(\p{Nd})"); break;
        case 'D': out.append(R"(\P{Nd})"); break;
        case 'w': absl::StrAppend(&out, in_class ? "" : "[", kWordClass, in_class ? "" : "]"); break;
        case 'W':
          if (in_class) return Unsupported(pattern, "\\W inside a character class is not supported");
          absl::StrAppend(&out, "[^", kWordClass, "]");
          break;
        case 'h': out.append(in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"); break;
        case 'H':
          if (in_class) return Unsupported(pattern, "\\H inside a character class is not supported");
          out.append("[^0-9a-fA-F]");
          break;
        case 'u':
          if (i + 4 < alt.size()) {
            absl::StrAppend(&out, "\\x{", std::string(alt.substr(i + 1, 4)), "}");
            i += 4;
          } else {
            return Unsupported(pattern, "truncated \\u escape");
          }
          break;
        case 'p':
        case 'P':
        case 'x':
          out.push_back('\\');
          out.push_back(e);
          if (i + 1 < alt.size() && alt[i + 1] == '{') {
            const size_t close = alt.find('}', i + 1);
            if (close == std::string_view::npos) return Unsupported(pattern, "unterminated \\p{ or \\x{");
            out.append(alt.substr(i + 1, close - i));
            i = close;
          }
          break;
        default:
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (in_class) {
      if (c == '[' && i + 1 < alt.size() && alt[i + 1] == ':') {
        const size_t close = alt.find(":]", i + 2);
        out.append(alt.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
      if (c == ']') in_class = false;
      out.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      if (i + 1 < alt.size() && alt[i + 1] == '^') out.push_back(alt[++i]);
      if (i + 1 < alt.size() && alt[i + 1] == ']') out.push_back(alt[++i]);
      continue;
    }
    if (c == '(') {
      const std::string_view rest = alt.substr(i);
      if (rest.starts_with("(?=") || rest.starts_with("(?!") || rest.starts_with("(?<=") ||
          rest.starts_with("(?<!")) {
        return Unsupported(pattern, absl::StrCat("look-around '", std::string(rest.substr(0, 4)),
                                                 "...' is not supported (only a top-level "
                                                 "alternative \\s+(?!\\S) is)"));
      }
      if (rest.starts_with("(?>")) return Unsupported(pattern, "atomic groups are not supported");
      if (rest.starts_with("(?<")) {  // named group, Oniguruma spelling
        out.append("(?P<");
        i += 2;
        ++*captures;
        continue;
      }
      if (rest.starts_with("(?P<")) {
        ++*captures;
      } else if (rest.starts_with("(?")) {
        // Flag groups: Ruby's 'm' is RE2's 's' (dot matches newline).
        size_t j = i + 2;
        out.append("(?");
        while (j < alt.size() && alt[j] != ')' && alt[j] != ':') {
          out.push_back(alt[j] == 'm' ? 's' : alt[j]);
          ++j;
        }
        i = j - 1;
        continue;
      } else {
        ++*captures;
      }
    }
    out.push_back(c);
  }
  return out;
}

re2::RE2::Options Re2Options() {
  re2::RE2::Options options;
  options.set_encoding(re2::RE2::Options::EncodingUTF8);
  options.set_log_errors(false);
  options.set_max_mem(int64_t{64} << 20);
  return options;
}

absl::StatusOr<std::unique_ptr<re2::RE2>> CompileRe2(const std::string& re2_pattern,
                                                     std::string_view pattern) {
  auto re = std::make_unique<re2::RE2>(re2_pattern, Re2Options());
  if (!re->ok()) return Unsupported(pattern, absl::StrCat("RE2 rejects it: ", re->error()));
  return re;
}

}  // namespace

absl::StatusOr<TranslatedPattern> TranslateOnigurumaPattern(std::string_view pattern) {
  // Ruby syntax: ^ and $ always match at line boundaries, which is RE2's multi-line mode.
  std::string prefix = "(?m)";
  std::string_view body = pattern;
  // A leading global flag group applies to every alternative; keep it in front.
  if (body.starts_with("(?")) {
    size_t j = 2;
    while (j < body.size() && (std::isalpha(static_cast<unsigned char>(body[j])) || body[j] == '-')) ++j;
    if (j < body.size() && body[j] == ')' && j > 2) {
      int ignored = 0;
      auto flags = TranslateAlternative(body.substr(0, j + 1), pattern, &ignored);
      if (!flags.ok()) return flags.status();
      prefix += *flags;
      body = body.substr(j + 1);
    }
  }
  auto alts = SplitAlternatives(body, pattern);
  if (!alts.ok()) return alts.status();

  std::vector<std::string> translated;
  std::vector<int> captures;
  int lookahead_index = -1;
  for (size_t k = 0; k < alts->size(); ++k) {
    const std::string& alt = (*alts)[k];
    int count = 0;
    if (alt == kLookaheadAlternative) {
      if (lookahead_index >= 0) return Unsupported(pattern, "two \\s+(?!\\S) alternatives");
      lookahead_index = static_cast<int>(k);
      translated.push_back(absl::StrCat("[", kSpaceClass, "]+"));
    } else {
      auto t = TranslateAlternative(alt, pattern, &count);
      if (!t.ok()) return t.status();
      translated.push_back(*std::move(t));
    }
    captures.push_back(count);
  }

  TranslatedPattern result;
  if (lookahead_index < 0) {
    result.re2_pattern = prefix + absl::StrJoin(translated, "|");
    return result;
  }
  int group = 1;
  std::vector<std::string> wrapped;
  for (size_t k = 0; k < translated.size(); ++k) {
    if (static_cast<int>(k) == lookahead_index) result.lookahead_group = group;
    wrapped.push_back(absl::StrCat("(", translated[k], ")"));
    group += 1 + captures[k];
  }
  result.re2_pattern = prefix + absl::StrJoin(wrapped, "|");
  if (lookahead_index + 1 < static_cast<int>(translated.size())) {
    std::vector<std::string> rest(translated.begin() + lookahead_index + 1, translated.end());
    result.rest_pattern = prefix + absl::StrJoin(rest, "|");
  }
  return result;
}

Regex::~Regex() = default;

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  auto translated = TranslateOnigurumaPattern(pattern);
  if (!translated.ok()) return translated.status();
  std::unique_ptr<Regex> regex(new Regex());
  auto re = CompileRe2(translated->re2_pattern, pattern);
  if (!re.ok()) return re.status();
  regex->re_ = *std::move(re);
  regex->lookahead_group_ = translated->lookahead_group;
  if (regex->lookahead_group_ >= 0 && !translated->rest_pattern.empty()) {
    auto rest = CompileRe2(translated->rest_pattern, pattern);
    if (!rest.ok()) return rest.status();
    regex->rest_ = *std::move(rest);
  }
  return regex;
}

std::unique_ptr<Regex> Regex::Literal(std::string_view literal) {
  std::unique_ptr<Regex> regex(new Regex());
  regex->literal_ = std::string(literal);
  return regex;
}

bool Regex::FindAt(std::string_view text, size_t pos, RegexMatch* match) const {
  if (re_ == nullptr) {
    if (literal_.empty()) return false;
    const size_t at = text.find(literal_, pos);
    if (at == std::string_view::npos) return false;
    *match = {at, at + literal_.size()};
    return true;
  }
  const re2::StringPiece input(text.data(), text.size());
  const auto offset = [&](const re2::StringPiece& piece) {
    return static_cast<size_t>(piece.data() - text.data());
  };
  while (pos <= text.size()) {
    re2::StringPiece whole;
    if (!re_->Match(input, pos, text.size(), re2::RE2::UNANCHORED, &whole, 1)) return false;
    const size_t begin = offset(whole), end = begin + whole.size();
    if (lookahead_group_ < 0 || begin == end) {
      *match = {begin, end};
      return true;
    }
    // Only an all-whitespace match can come from the emulated alternative.
    bool all_space = true;
    for (size_t p = begin; p < end && all_space;) {
      char32_t cp;
      const size_t len = DecodeUtf8(text, p, &cp);
      all_space = len > 0 && IsWhitespace(cp);
      p += len;
    }
    if (!all_space) {
      *match = {begin, end};
      return true;
    }
    std::vector<re2::StringPiece> groups(lookahead_group_ + 1);
    re_->Match(input, begin, text.size(), re2::RE2::ANCHOR_START, groups.data(),
               static_cast<int>(groups.size()));
    if (groups[lookahead_group_].data() == nullptr) {  // an earlier alternative matched
      *match = {begin, end};
      return true;
    }
    // `\s+` matched a maximal run; (?!\S) holds at its end only when nothing or a space follows.
    char32_t next;
    if (end == text.size() || (DecodeUtf8(text, end, &next) > 0 && IsWhitespace(next))) {
      *match = {begin, end};
      return true;
    }
    size_t last = end - 1;  // start of the run's last character
    while (last > begin && (static_cast<unsigned char>(text[last]) & 0xC0) == 0x80) --last;
    if (last > begin) {
      *match = {begin, last};
      return true;
    }
    // One whitespace character before a non-space: this alternative fails here; the later
    // ones may still match at `begin`, otherwise the search moves on by one character.
    re2::StringPiece rest_match;
    if (rest_ != nullptr &&
        rest_->Match(input, begin, text.size(), re2::RE2::ANCHOR_START, &rest_match, 1)) {
      *match = {begin, begin + rest_match.size()};
      return true;
    }
    pos = begin + Utf8CharLength(text, begin);
  }
  return false;
}

void Regex::FindAll(std::string_view text, std::vector<RegexMatch>* out) const {
  size_t last_end = 0;
  bool has_last = false;
  size_t last_match_end = 0;
  while (last_end <= text.size()) {
    RegexMatch m;
    if (!FindAt(text, last_end, &m)) break;
    if (m.begin == m.end && has_last && last_match_end == m.end) {
      last_end += last_end < text.size() ? Utf8CharLength(text, last_end) : 1;
      continue;
    }
    last_end = m.end;
    has_last = true;
    last_match_end = m.end;
    out->push_back(m);
  }
}

}  // namespace kvblock::tokenizer
