// Tests of the tokenizer.json components (normalizers, pre-tokenizers, BPE model, added tokens,
// decoders) on small hand-written tokenizer.json files with hand-checked expectations, and of
// malformed files (clear errors, never a crash).
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/worker/tokenizer/test_util.h"
#include "worker/tokenizer/decoder.h"
#include "worker/tokenizer/hf_tokenizer.h"
#include "worker/tokenizer/normalizer.h"
#include "worker/tokenizer/pre_tokenizer.h"

namespace kvblock {
namespace {

using json = nlohmann::json;
using tokenizer::PreToken;

std::string Normalize(const json& spec, std::string text) {
  auto n = tokenizer::NormalizerFromJson(spec, "normalizer");
  EXPECT_TRUE(n.ok()) << n.status();
  if (!n.ok()) return "<error>";
  (*n)->Normalize(&text);
  return text;
}

std::vector<std::string> PreTokenize(const json& spec, const std::string& text, bool at_start = true) {
  auto p = tokenizer::PreTokenizerFromJson(spec, "pre_tokenizer");
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return {"<error>"};
  std::vector<PreToken> pieces{{text, at_start}};
  (*p)->PreTokenize(&pieces);
  std::vector<std::string> out;
  for (const PreToken& piece : pieces) out.push_back(piece.text);
  return out;
}

std::string DecodeTokens(const json& spec, std::vector<std::string> tokens) {
  auto d = tokenizer::DecoderFromJson(spec, "decoder");
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return "<error>";
  (*d)->DecodeChain(&tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

using Strings = std::vector<std::string>;

TEST(NormalizerTest, EachType) {
  EXPECT_EQ(Normalize({{"type", "NFC"}}, "Cafe\xCC\x81"), "Caf\xC3\xA9");
  EXPECT_EQ(Normalize({{"type", "NFD"}}, "Caf\xC3\xA9"), "Cafe\xCC\x81");
  EXPECT_EQ(Normalize({{"type", "NFKC"}}, "\xEF\xAC\x81n"), "fin");
  EXPECT_EQ(Normalize({{"type", "NFKD"}}, "\xC2\xBD"), "1\xE2\x81\x84" "2");  // ½ -> 1⁄2
  EXPECT_EQ(Normalize({{"type", "Lowercase"}}, "HeLLo \xC3\x89T\xC3\x89"), "hello \xC3\xA9t\xC3\xA9");
  EXPECT_EQ(Normalize({{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}}, " \t hi there \n"),
            "hi there");
  EXPECT_EQ(Normalize({{"type", "Strip"}, {"strip_left", false}, {"strip_right", true}}, "  hi  "), "  hi");
  EXPECT_EQ(Normalize({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}, "a  b"),
            "a\xE2\x96\x81\xE2\x96\x81" "b");
  EXPECT_EQ(Normalize({{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", "_"}}, "a   b c"), "a_b_c");
  EXPECT_EQ(Normalize({{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}}, "hi"), "\xE2\x96\x81hi");
  EXPECT_EQ(Normalize({{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}}, ""), "");
  EXPECT_EQ(Normalize({{"type", "Sequence"},
                       {"normalizers", json::array({{{"type", "NFD"}}, {{"type", "StripAccents"}},
                                                    {{"type", "Lowercase"}}})}},
                      "Caf\xC3\xA9 NA\xC3\x8FVE"),
            "cafe naive");
  EXPECT_EQ(Normalize({{"type", "BertNormalizer"}, {"lowercase", true}}, "Hi\t\xE4\xBD\xA0!\x01"),
            "hi  \xE4\xBD\xA0 !");
}

TEST(PreTokenizerTest, SplitBehaviors) {
  // The examples of Hugging Face's documentation for SplitDelimiterBehavior.
  const std::string text = "the-final--countdown";
  const auto split = [&](const char* behavior) {
    return PreTokenize({{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", false}},
                       text);
  };
  EXPECT_EQ(split("Removed"), (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(split("Isolated"), (Strings{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithPrevious"), (Strings{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithNext"), (Strings{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split("Contiguous"), (Strings{"the", "-", "final", "--", "countdown"}));
  // invert: the pattern describes what to keep.
  EXPECT_EQ(PreTokenize({{"type", "Split"}, {"pattern", {{"Regex", "\\w+"}}}, {"behavior", "Removed"}, {"invert", true}},
                        "hi, you!"),
            (Strings{"hi", "you"}));
}

TEST(PreTokenizerTest, OtherTypes) {
  EXPECT_EQ(PreTokenize({{"type", "Digits"}, {"individual_digits", false}}, "abc123de4"),
            (Strings{"abc", "123", "de", "4"}));
  EXPECT_EQ(PreTokenize({{"type", "Digits"}, {"individual_digits", true}}, "abc123"),
            (Strings{"abc", "1", "2", "3"}));
  EXPECT_EQ(PreTokenize({{"type", "Whitespace"}}, "Hey man!! good?"), (Strings{"Hey", "man", "!!", "good", "?"}));
  EXPECT_EQ(PreTokenize({{"type", "WhitespaceSplit"}}, "Hey man!!\t x"), (Strings{"Hey", "man!!", "x"}));
  EXPECT_EQ(PreTokenize({{"type", "Punctuation"}}, "Hey, you!"), (Strings{"Hey", ",", " you", "!"}));
  EXPECT_EQ(PreTokenize({{"type", "BertPreTokenizer"}}, "Hey, you!"), (Strings{"Hey", ",", "you", "!"}));
  EXPECT_EQ(PreTokenize({{"type", "CharDelimiterSplit"}, {"delimiter", "x"}}, "axbxxc"), (Strings{"a", "b", "c"}));
  // ByteLevel: bytes become GPT-2's printable alphabet (space -> Ġ, newline -> Ċ).
  EXPECT_EQ(PreTokenize({{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}, "Hello world"),
            (Strings{"\xC4\xA0Hello", "\xC4\xA0world"}));
  EXPECT_EQ(PreTokenize({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}, "Hi  there\n"),
            (Strings{"Hi", "\xC4\xA0", "\xC4\xA0there", "\xC4\x8A"}));
  EXPECT_EQ(PreTokenize({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}, "\xC3\xA9 x"),
            (Strings{"\xC3\x83\xC2\xA9\xC4\xA0x"}));
}

TEST(PreTokenizerTest, Metaspace) {
  const json always = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}, {"split", true}};
  EXPECT_EQ(PreTokenize(always, "Hey friend"), (Strings{"\xE2\x96\x81Hey", "\xE2\x96\x81" "friend"}));
  EXPECT_EQ(PreTokenize(always, "Hey", /*at_start=*/false), (Strings{"\xE2\x96\x81Hey"}));
  json first = always;
  first["prepend_scheme"] = "first";
  EXPECT_EQ(PreTokenize(first, "Hey", /*at_start=*/false), (Strings{"Hey"}));
  EXPECT_EQ(PreTokenize(first, "Hey", /*at_start=*/true), (Strings{"\xE2\x96\x81Hey"}));
  json no_split = always;
  no_split["split"] = false;
  EXPECT_EQ(PreTokenize(no_split, "a b"), (Strings{"\xE2\x96\x81" "a\xE2\x96\x81" "b"}));
}

TEST(DecoderTest, EachType) {
  EXPECT_EQ(DecodeTokens({{"type", "ByteLevel"}}, {"Hello", "\xC4\xA0world", "\xC4\x8A"}), "Hello world\n");
  // Byte-level characters of a partial UTF-8 sequence decode lossily.
  EXPECT_EQ(DecodeTokens({{"type", "ByteLevel"}}, {"\xC3\xA6"}), "\xEF\xBF\xBD");
  const json llama2 = {{"type", "Sequence"},
                       {"decoders", json::array({
                                        {{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                        {{"type", "ByteFallback"}},
                                        {{"type", "Fuse"}},
                                        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}},
                                    })}};
  EXPECT_EQ(DecodeTokens(llama2, {"\xE2\x96\x81Hey", "\xE2\x96\x81", "<0xE6>", "<0x9D>", "<0xB1>", "!"}), "Hey \xE6\x9D\xB1!");
  EXPECT_EQ(DecodeTokens(llama2, {"<0xFF>", "<0x41>", "b"}), "\xEF\xBF\xBD\xEF\xBF\xBD" "b");  // invalid run: one U+FFFD per byte
  EXPECT_EQ(DecodeTokens({{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}},
                         {"\xE2\x96\x81Hey", "\xE2\x96\x81" "friend"}),
            "Hey friend");
  EXPECT_EQ(DecodeTokens({{"type", "BPEDecoder"}, {"suffix", "</w>"}}, {"hel", "lo</w>", "you</w>"}), "hello you");
  EXPECT_EQ(DecodeTokens({{"type", "Strip"}, {"content", "x"}, {"start", 2}, {"stop", 1}}, {"xxxaxx"}), "xax");
}

// A small byte-level-free BPE tokenizer: letters, merges, and whatever a test adds.
json SmallBpe() {
  return json{{"version", "1.0"},
              {"added_tokens", json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {" ", 6}, {"<unk>", 7}}},
                {"merges", json::array({"b c", "a b", "a bc"})}}}};
}

std::unique_ptr<HfTokenizer> Build(const json& spec) {
  auto tok = HfTokenizer::FromJsonText(spec.dump(), "test.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

std::vector<int32_t> Ids(const HfTokenizer& tok, std::string_view text) {
  auto ids = tok.Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{-99};
}

using Ints = std::vector<int32_t>;

TEST(BpeTest, MergesByRank) {
  auto tok = Build(SmallBpe());
  ASSERT_NE(tok, nullptr);
  // (b,c) has rank 0, so "abc" merges bc first, then a+bc.
  EXPECT_EQ(Ids(*tok, "abc"), (Ints{5}));
  EXPECT_EQ(Ids(*tok, "abab"), (Ints{3, 3}));
  EXPECT_EQ(Ids(*tok, "cab"), (Ints{2, 3}));
  json pairs = SmallBpe();  // the ["a", "b"] form and a different rank order
  pairs["model"]["merges"] = json::array({json::array({"a", "b"}), json::array({"b", "c"})});
  auto tok2 = Build(pairs);
  ASSERT_NE(tok2, nullptr);
  EXPECT_EQ(Ids(*tok2, "abc"), (Ints{3, 2}));  // a+b first, then no (ab, c) merge exists
  auto text = tok->Decode(Ints{5, 6, 3});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "abc   ab");  // no decoder: tokens joined with spaces, as Hugging Face does
  EXPECT_EQ(tok->Decode(Ints{8}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok->Decode(Ints{-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BpeTest, IgnoreMergesUnkAndByteFallback) {
  json spec = SmallBpe();
  spec["model"]["merges"] = json::array({"a b"});
  EXPECT_EQ(Ids(*Build(spec), "abc"), (Ints{3, 2}));
  spec["model"]["ignore_merges"] = true;  // a whole word in the vocabulary wins
  EXPECT_EQ(Ids(*Build(spec), "abc"), (Ints{5}));

  // Unknown characters are dropped without unk (so "a" and "b" meet and merge), become <unk>
  // with it, and are fused into one <unk> with fuse_unk.
  EXPECT_EQ(Ids(*Build(SmallBpe()), "azzb"), (Ints{3}));
  spec = SmallBpe();
  spec["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(Ids(*Build(spec), "azzb"), (Ints{0, 7, 7, 1}));
  spec["model"]["fuse_unk"] = true;
  EXPECT_EQ(Ids(*Build(spec), "azzb"), (Ints{0, 7, 1}));

  // Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes' <0xXX> tokens.
  spec = SmallBpe();
  spec["model"]["byte_fallback"] = true;
  spec["model"]["vocab"]["<0xC3>"] = 8;
  spec["model"]["vocab"]["<0xA9>"] = 9;
  spec["decoder"] = {{"type", "ByteFallback"}};
  auto tok = Build(spec);
  EXPECT_EQ(Ids(*tok, "a\xC3\xA9" "b"), (Ints{0, 8, 9, 1}));
  auto text = tok->Decode(Ints{0, 8, 9, 1});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "a\xC3\xA9" "b");
  EXPECT_EQ(Ids(*tok, "a\xE2\x82\xAC"), (Ints{0}));  // € has no byte tokens and no unk: dropped
}

TEST(BpeTest, ContinuingSubwordPrefix) {
  json spec = SmallBpe();
  spec["model"]["continuing_subword_prefix"] = "##";
  spec["model"]["vocab"] = {{"a", 0}, {"##b", 1}, {"ab", 2}, {"b", 3}};
  spec["model"]["merges"] = json::array({"a ##b"});
  EXPECT_EQ(Ids(*Build(spec), "ab"), (Ints{2}));
  EXPECT_EQ(Ids(*Build(spec), "ba"), (Ints{3}));  // "##a" is not in the vocabulary: dropped
}

TEST(AddedTokensTest, MatchedBeforeNormalization) {
  json spec = SmallBpe();
  spec["normalizer"] = {{"type", "Lowercase"}};
  spec["added_tokens"] = json::array({
      {{"id", 10}, {"content", "<S>"}, {"special", true}, {"normalized", false}},
      {{"id", 11}, {"content", "ABC"}, {"special", false}, {"normalized", true}},
  });
  auto tok = Build(spec);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->VocabSize(), 12);
  // "<S>" is matched in the raw text; the normalized token "ABC" is matched as "abc" after
  // lowercasing, so "AbC" matches it too; "<s>" is not the special token.
  EXPECT_EQ(Ids(*tok, "<S>ab"), (Ints{10, 3}));
  EXPECT_EQ(Ids(*tok, "AbC"), (Ints{11}));
  EXPECT_EQ(Ids(*tok, "c<S>"), (Ints{2, 10}));
  EXPECT_TRUE(tok->IsSpecialToken(10));
  EXPECT_FALSE(tok->IsSpecialToken(11));
  EXPECT_FALSE(tok->IsSpecialToken(3));
  auto text = tok->Decode(Ints{10, 3});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<S> ab");
  EXPECT_EQ(tok->TokenToId("<S>"), 10);
  EXPECT_EQ(tok->TokenToId("bc"), 4);
}

TEST(AddedTokensTest, StripAndSingleWord) {
  json spec = SmallBpe();
  spec["added_tokens"] = json::array({
      {{"id", 10}, {"content", "<m>"}, {"special", true}, {"normalized", false}, {"lstrip", true}},
      {{"id", 11}, {"content", "<r>"}, {"special", true}, {"normalized", false}, {"rstrip", true}},
      {{"id", 12}, {"content", "ab"}, {"special", false}, {"normalized", false}, {"single_word", true}},
  });
  auto tok = Build(spec);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(Ids(*tok, "a  <m>"), (Ints{0, 10}));     // lstrip swallows the spaces before
  EXPECT_EQ(Ids(*tok, "<r>  a"), (Ints{11, 0}));     // rstrip swallows the spaces after
  EXPECT_EQ(Ids(*tok, "a <r> "), (Ints{0, 6, 11}));
  EXPECT_EQ(Ids(*tok, "ab c"), (Ints{12, 6, 2}));    // a word of its own: the added token
  EXPECT_EQ(Ids(*tok, "cab"), (Ints{2, 3}));         // inside a word: ordinary BPE (ab = 3)
  // Leftmost-longest: with both "<m>" and "<m>x", the longer one wins.
  spec["added_tokens"].push_back({{"id", 13}, {"content", "<m>c"}, {"special", false}, {"normalized", false}});
  EXPECT_EQ(Ids(*Build(spec), "<m>cb"), (Ints{13, 1}));
}

TEST(HfTokenizerTest, RejectsInvalidUtf8) {
  auto tok = Build(SmallBpe());
  auto ids = tok->Encode("ab\xFF");
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ids.status().message().find("byte 2"), std::string_view::npos) << ids.status();
}

void ExpectError(const std::string& text, std::string_view needle) {
  auto tok = HfTokenizer::FromJsonText(text, "bad.json");
  ASSERT_FALSE(tok.ok()) << "accepted: " << text.substr(0, 200);
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("bad.json"), std::string_view::npos) << tok.status();
  EXPECT_NE(std::string(tok.status().message()).find(needle), std::string::npos) << tok.status();
}

TEST(MalformedTest, ClearErrors) {
  ExpectError("{not json", "not valid JSON");
  ExpectError("[1, 2]", "expected a JSON object");
  json spec = SmallBpe();
  spec.erase("model");
  ExpectError(spec.dump(), "missing \"model\"");
  spec = SmallBpe();
  spec["model"]["type"] = "WordPiece";
  ExpectError(spec.dump(), "unsupported model type 'WordPiece'");
  spec = SmallBpe();
  spec["model"]["merges"] = json::array({"a b c"});
  ExpectError(spec.dump(), "merges[0]");
  spec["model"]["merges"] = json::array({"a q"});
  ExpectError(spec.dump(), "token 'q' is not in the vocabulary");
  spec["model"]["merges"] = json::array({"c a"});
  ExpectError(spec.dump(), "merged token 'ca'");
  spec["model"]["merges"] = json::array({json::array({"a"})});
  ExpectError(spec.dump(), "merges[0]");
  spec = SmallBpe();
  spec["model"].erase("vocab");
  ExpectError(spec.dump(), "model.vocab");
  spec = SmallBpe();
  spec["model"]["vocab"]["x"] = -4;
  ExpectError(spec.dump(), "vocab['x']");
  spec = SmallBpe();
  spec["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  ExpectError(spec.dump(), "unsupported normalizer type 'Precompiled'");
  spec = SmallBpe();
  spec["pre_tokenizer"] = {{"type", "UnicodeScripts"}};
  ExpectError(spec.dump(), "unsupported pre-tokenizer type 'UnicodeScripts'");
  spec = SmallBpe();
  spec["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a(?=b)"}}}, {"behavior", "Isolated"}};
  ExpectError(spec.dump(), "look-around");
  spec["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
  ExpectError(spec.dump(), "behavior");
  spec = SmallBpe();
  spec["decoder"] = {{"type", "CTC"}};
  ExpectError(spec.dump(), "unsupported decoder type 'CTC'");
  spec = SmallBpe();
  spec["added_tokens"] = json::array({{{"id", 3}}});
  ExpectError(spec.dump(), "added_tokens[0].content");
  spec = SmallBpe();
  spec["model"]["dropout"] = 0.1;
  ExpectError(spec.dump(), "dropout");
}

TEST(MalformedTest, RandomCorruptionNeverCrashes) {
  json spec = SmallBpe();
  spec["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}, {{"type", "Lowercase"}}})}};
  spec["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\s+(?!\\S)|\\s+|\\w+"}}}, {"behavior", "Isolated"}};
  spec["decoder"] = {{"type", "Sequence"}, {"decoders", json::array({{{"type", "Fuse"}}, {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  spec["added_tokens"] = json::array({{{"id", 10}, {"content", "<s>"}, {"special", true}}});
  const std::string good = spec.dump();
  const uint64_t seed = testing_util::FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  int accepted = 0;
  for (int i = 0; i < 300; ++i) {
    std::string text = good;
    std::uniform_int_distribution<size_t> pos(0, text.size() - 1);
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 3) {
        case 0: text[pos(rng)] = static_cast<char>(rng() % 256); break;
        case 1: text.erase(pos(rng) % text.size(), 1 + rng() % 8); break;
        case 2: text.resize(pos(rng) % text.size()); break;
      }
      if (text.empty()) text = "{";
    }
    auto tok = HfTokenizer::FromJsonText(text, "fuzzed.json");
    if (!tok.ok()) {
      EXPECT_FALSE(tok.status().message().empty());
      continue;
    }
    ++accepted;
    // A file that still loads must also encode and decode without crashing.
    auto ids = (*tok)->Encode(testing_util::RandomText(rng, 40));
    if (ids.ok()) (void)(*tok)->Decode(*ids);
  }
  SUCCEED() << accepted << " of 300 corrupted files still loaded";
}

}  // namespace
}  // namespace kvblock
