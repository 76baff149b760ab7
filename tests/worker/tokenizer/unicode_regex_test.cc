// Tests of worker/tokenizer/unicode.h and regex.h: UTF-8 handling, normalization forms, lowercase,
// the Oniguruma -> RE2 translation and the exact emulation of `\s+(?!\S)`.
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/tokenizer/test_util.h"
#include "worker/tokenizer/regex.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {
namespace {

constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::vector<std::string> Pieces(const Regex& re, std::string_view text) {
  std::vector<RegexMatch> matches;
  re.FindAll(text, &matches);
  std::vector<std::string> out;
  for (const RegexMatch& m : matches) out.emplace_back(text.substr(m.begin, m.end - m.begin));
  return out;
}

TEST(Utf8Test, ValidatesAndDecodes) {
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9 \xE6\x9D\xB1 \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  char32_t cp = 0;
  EXPECT_EQ(DecodeUtf8("\xF0\x9F\x98\x80", 0, &cp), 4u);
  EXPECT_EQ(cp, 0x1F600u);
}

TEST(Utf8Test, LossyReplacesMaximalSubparts) {
  // As Rust's String::from_utf8_lossy: one U+FFFD per maximal ill-formed subpart.
  EXPECT_EQ(LossyUtf8("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(LossyUtf8("\xE2\x82"), "\xEF\xBF\xBD");                 // truncated 3-byte: one
  EXPECT_EQ(LossyUtf8("\xE2\x82" "A"), "\xEF\xBF\xBD" "A");
  EXPECT_EQ(LossyUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");     // C0 never starts a sequence
  EXPECT_EQ(LossyUtf8("\xF0\x9F\x98"), "\xEF\xBF\xBD");
  EXPECT_EQ(LossyUtf8("\xE2\x82\xAC"), "\xE2\x82\xAC");             // valid euro sign kept
}

TEST(Utf8Test, RandomTextRoundTripsThroughLossy) {
  const uint64_t seed = testing_util::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 50; ++i) {
    const std::string text = testing_util::RandomText(rng, 200);
    ASSERT_TRUE(IsValidUtf8(text));
    EXPECT_EQ(LossyUtf8(text), text);
  }
}

TEST(NormalizeTest, Forms) {
  EXPECT_EQ(NormalizeUnicode("e\xCC\x81", NormalizationForm::kNfc), "\xC3\xA9");  // e + acute -> é
  EXPECT_EQ(NormalizeUnicode("\xC3\xA9", NormalizationForm::kNfd), "e\xCC\x81");
  EXPECT_EQ(NormalizeUnicode("\xEF\xAC\x81", NormalizationForm::kNfkc), "fi");     // ligature ﬁ
  EXPECT_EQ(NormalizeUnicode("\xEF\xAC\x81", NormalizationForm::kNfc), "\xEF\xAC\x81");
  EXPECT_EQ(NormalizeUnicode("\xE2\x91\xA0", NormalizationForm::kNfkd), "1");      // circled 1
  EXPECT_EQ(NormalizeUnicode("\xEF\xBC\xA1", NormalizationForm::kNfkc), "A");      // fullwidth A
  EXPECT_EQ(NormalizeUnicode("\xEA\xB0\x80", NormalizationForm::kNfd), "\xE1\x84\x80\xE1\x85\xA1");
  EXPECT_EQ(NormalizeUnicode("plain", NormalizationForm::kNfkd), "plain");
}

TEST(NormalizeTest, LowercaseIsFullMapping) {
  EXPECT_EQ(Lowercase("\xC3\x80" "BC \xCE\xA3"), "\xC3\xA0" "bc \xCF\x83");  // ÀBC Σ -> àbc σ
  EXPECT_EQ(Lowercase("\xC4\xB0"), "i\xCC\x87");  // İ -> i + combining dot (two characters)
}

TEST(CharClassTest, RustSemantics) {
  EXPECT_TRUE(IsWhitespace(0x3000));
  EXPECT_TRUE(IsWhitespace(0xA0));
  EXPECT_TRUE(IsWhitespace(0x85));
  EXPECT_FALSE(IsWhitespace(0x200B));  // zero-width space is not White_Space
  EXPECT_TRUE(IsNumeric(0x2163));      // Roman numeral four (Nl)
  EXPECT_TRUE(IsNumeric(0xBD));        // ½ (No)
  EXPECT_FALSE(IsNumeric('x'));
  EXPECT_TRUE(IsPunctuation('$'));     // ASCII symbol counts (is_ascii_punctuation)
  EXPECT_TRUE(IsPunctuation(0x3001));  // 、 (Po)
  EXPECT_FALSE(IsPunctuation(0x20AC)); // € is Sc, not punctuation
}

TEST(RegexTest, LookaheadAlternativeGivesBackLastSpace) {
  auto re = Regex::Compile(kLlama3Pattern);
  ASSERT_TRUE(re.ok()) << re.status();
  // Hand-derived with Oniguruma's backtracking semantics (and checked against tokenizers).
  EXPECT_EQ(Pieces(**re, "Hello  world\n\n   x  "),
            (std::vector<std::string>{"Hello", " ", " world", "\n\n", "  ", " x", "  "}));
  // A single space before a digit: \s+(?!\S) fails, the final \s+ takes it.
  EXPECT_EQ(Pieces(**re, "a 1"), (std::vector<std::string>{"a", " ", "1"}));
  EXPECT_EQ(Pieces(**re, "a  1"), (std::vector<std::string>{"a", " ", " ", "1"}));
  // Trailing whitespace at the end of text is kept whole.
  EXPECT_EQ(Pieces(**re, "x   "), (std::vector<std::string>{"x", "   "}));
  // Unicode whitespace counts as \s: two NBSPs before a letter split like spaces.
  EXPECT_EQ(Pieces(**re, "a\xC2\xA0\xC2\xA0" "c"),
            (std::vector<std::string>{"a", "\xC2\xA0", "\xC2\xA0" "c"}));
  EXPECT_EQ(Pieces(**re, "12345 it's"), (std::vector<std::string>{"123", "45", " it", "'s"}));
}

TEST(RegexTest, TranslationOfClasses) {
  auto t = TranslateOnigurumaPattern(R"(\s+(?!\S)|\s+)");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->lookahead_group, 1);
  EXPECT_FALSE(t->rest_pattern.empty());
  auto plain = TranslateOnigurumaPattern(R"(\w+|[^\w\s]+)");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->lookahead_group, -1);
  auto words = Regex::Compile(R"(\w+|[^\w\s]+)");
  ASSERT_TRUE(words.ok());
  // Unicode \w (letters with accents, CJK) and \s (U+3000).
  EXPECT_EQ(Pieces(**words, "caf\xC3\xA9\xE3\x80\x80\xE6\x9D\xB1!!"),
            (std::vector<std::string>{"caf\xC3\xA9", "\xE6\x9D\xB1", "!!"}));
  auto digits = Regex::Compile(R"(\d+)");
  ASSERT_TRUE(digits.ok());
  EXPECT_EQ(Pieces(**digits, "a\xD9\xA3\xD9\xA4" "b12"), (std::vector<std::string>{"\xD9\xA3\xD9\xA4", "12"}));
}

TEST(RegexTest, RejectsOtherLookAround) {
  for (const char* pattern : {"(?=a)b", "a(?!b)", "(?<=a)b", "(?<!a)b", R"(x|\s+(?!\S)c)"}) {
    auto re = Regex::Compile(pattern);
    ASSERT_FALSE(re.ok()) << pattern;
    EXPECT_EQ(re.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(re.status().message().find("look-around"), std::string_view::npos) << re.status();
  }
  auto bad = Regex::Compile("(unclosed");
  EXPECT_FALSE(bad.ok());
}

TEST(RegexTest, EmptyMatchesAndLiterals) {
  auto re = Regex::Compile("x*");
  ASSERT_TRUE(re.ok());
  std::vector<RegexMatch> matches;
  (*re)->FindAll("axx", &matches);
  // Oniguruma's find_iter: empty at 0, "xx" at 1..3; the empty match at 3 right after it is skipped.
  ASSERT_EQ(matches.size(), 2u);
  EXPECT_EQ(matches[0].begin, 0u);
  EXPECT_EQ(matches[0].end, 0u);
  EXPECT_EQ(matches[1].begin, 1u);
  EXPECT_EQ(matches[1].end, 3u);
  auto lit = Regex::Literal("--");
  EXPECT_EQ(Pieces(*lit, "a---b--"), (std::vector<std::string>{"--", "--"}));
  EXPECT_TRUE(Pieces(*Regex::Literal(""), "abc").empty());
}

}  // namespace
}  // namespace kvblock::tokenizer
