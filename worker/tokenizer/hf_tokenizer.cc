#include "worker/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/file_util.h"
#include "worker/tokenizer/json_util.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock {

namespace tk = tokenizer;

namespace {

absl::Status Prefixed(const std::string& name, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(name, ": ", status.message()));
}

size_t FirstInvalidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t cp;
    const size_t len = tk::DecodeUtf8(text, pos, &cp);
    if (len == 0) return pos;
    pos += len;
  }
  return pos;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::FromFile(
    const std::string& path, const tk::BpeModelOptions& bpe_options) {
  auto text = tk::ReadFileBytes(path);
  if (!text.ok()) return text.status();
  return FromJsonText(*text, path, bpe_options);
}

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::FromJsonText(
    std::string_view json_text, const std::string& name, const tk::BpeModelOptions& bpe_options) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(json_text.begin(), json_text.end());
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not valid JSON: ", e.what()));
  }
  if (!json.is_object()) return absl::InvalidArgumentError(absl::StrCat(name, ": expected a JSON object"));
  std::unique_ptr<HfTokenizer> tok(new HfTokenizer());
  tok->name_ = name;
  try {
    const auto model_it = json.find("model");
    if (model_it == json.end() || !model_it->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": missing \"model\" object"));
    }
    auto model_type = tk::JsonStringOr(*model_it, "type", "model", "");
    if (!model_type.ok()) return Prefixed(name, model_type.status());
    if (model_type->empty() && model_it->contains("merges")) *model_type = "BPE";
    if (*model_type != "BPE") {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": unsupported model type '", *model_type, "' (only BPE is supported)"));
    }
    auto model = tk::BpeModel::FromJson(*model_it, "model", bpe_options);
    if (!model.ok()) return Prefixed(name, model.status());
    tok->model_ = *std::move(model);

    if (const auto it = json.find("normalizer"); it != json.end() && !it->is_null()) {
      auto normalizer = tk::NormalizerFromJson(*it, "normalizer");
      if (!normalizer.ok()) return Prefixed(name, normalizer.status());
      tok->normalizer_ = *std::move(normalizer);
    }
    if (const auto it = json.find("pre_tokenizer"); it != json.end() && !it->is_null()) {
      auto pre_tokenizer = tk::PreTokenizerFromJson(*it, "pre_tokenizer");
      if (!pre_tokenizer.ok()) return Prefixed(name, pre_tokenizer.status());
      tok->pre_tokenizer_ = *std::move(pre_tokenizer);
    }
    if (const auto it = json.find("decoder"); it != json.end() && !it->is_null()) {
      auto decoder = tk::DecoderFromJson(*it, "decoder");
      if (!decoder.ok()) return Prefixed(name, decoder.status());
      tok->decoder_ = *std::move(decoder);
    }

    int32_t vocab_size = tok->model_->VocabSize();
    if (const auto it = json.find("added_tokens"); it != json.end() && !it->is_null()) {
      if (!it->is_array()) return absl::InvalidArgumentError(absl::StrCat(name, ": added_tokens: expected an array"));
      for (size_t i = 0; i < it->size(); ++i) {
        const std::string where = absl::StrCat("added_tokens[", i, "]");
        const nlohmann::json& a = (*it)[i];
        tk::AddedToken token;
        auto content = tk::JsonString(a, "content", where);
        if (!content.ok()) return Prefixed(name, content.status());
        token.content = *std::move(content);
        auto id = tk::JsonIntOr(a, "id", where, -1);
        if (!id.ok()) return Prefixed(name, id.status());
        if (*id < 0) {
          // Hugging Face gives an added token without an id the vocabulary's id for its content.
          auto vocab_id = tok->model_->TokenToId(token.content);
          if (!vocab_id) {
            return absl::InvalidArgumentError(absl::StrCat(name, ": ", where, ": missing id"));
          }
          *id = *vocab_id;
        }
        if (*id >= (int64_t{1} << 26)) {
          return absl::InvalidArgumentError(absl::StrCat(name, ": ", where, ": id ", *id, " is implausibly large"));
        }
        token.id = static_cast<int32_t>(*id);
        auto special = tk::JsonBoolOr(a, "special", where, false);
        auto single_word = tk::JsonBoolOr(a, "single_word", where, false);
        auto lstrip = tk::JsonBoolOr(a, "lstrip", where, false);
        auto rstrip = tk::JsonBoolOr(a, "rstrip", where, false);
        // Hugging Face's default: special tokens are not normalized, the others are.
        auto normalized = tk::JsonBoolOr(a, "normalized", where, !(special.ok() && *special));
        for (const absl::Status& s : {special.status(), single_word.status(), lstrip.status(),
                                      rstrip.status(), normalized.status()}) {
          if (!s.ok()) return Prefixed(name, s);
        }
        token.special = *special;
        token.single_word = *single_word;
        token.lstrip = *lstrip;
        token.rstrip = *rstrip;
        token.normalized = *normalized;
        vocab_size = std::max(vocab_size, token.id + 1);
        tok->added_tokens_.push_back(std::move(token));
      }
    }
    tok->vocab_size_ = vocab_size;
    for (size_t i = 0; i < tok->added_tokens_.size(); ++i) {
      tok->added_by_id_[tok->added_tokens_[i].id] = i;
    }
    std::vector<std::string> raw_patterns, normalized_patterns;
    std::vector<const tk::AddedToken*> raw_tokens, normalized_tokens;
    for (const tk::AddedToken& token : tok->added_tokens_) {
      if (token.normalized) {
        std::string pattern = token.content;
        if (tok->normalizer_ != nullptr) tok->normalizer_->Normalize(&pattern);
        normalized_patterns.push_back(std::move(pattern));
        normalized_tokens.push_back(&token);
      } else {
        raw_patterns.push_back(token.content);
        raw_tokens.push_back(&token);
      }
    }
    tok->raw_matcher_ = std::make_unique<tk::AddedTokenMatcher>(std::move(raw_patterns), std::move(raw_tokens));
    tok->normalized_matcher_ =
        std::make_unique<tk::AddedTokenMatcher>(std::move(normalized_patterns), std::move(normalized_tokens));
  } catch (const nlohmann::json::exception& e) {
    // The accessors check types first; this only guards against a case they missed.
    return absl::InvalidArgumentError(absl::StrCat(name, ": malformed tokenizer.json: ", e.what()));
  }
  return tok;
}

void HfTokenizer::EncodePiece(std::string_view text, bool at_start, std::vector<int32_t>* ids) const {
  std::vector<tk::PreToken> pieces;
  pieces.push_back({std::string(text), at_start});
  if (pre_tokenizer_ != nullptr) pre_tokenizer_->PreTokenize(&pieces);
  for (const tk::PreToken& piece : pieces) model_->Tokenize(piece.text, ids);
}

absl::StatusOr<std::vector<int32_t>> HfTokenizer::Encode(std::string_view text) const {
  if (const size_t bad = FirstInvalidUtf8(text); bad != text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name_, ": text is not valid UTF-8 (at byte ", bad, ")"));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  std::vector<tk::AddedSplit> splits, sub_splits;
  raw_matcher_->Split(text, &splits);
  for (const tk::AddedSplit& split : splits) {
    if (split.id >= 0) {
      ids.push_back(split.id);
      continue;
    }
    if (split.begin == split.end) continue;
    std::string piece(text.substr(split.begin, split.end - split.begin));
    const bool at_start = split.begin == 0;
    if (normalizer_ != nullptr) normalizer_->Normalize(&piece);
    if (piece.empty()) continue;
    if (normalized_matcher_->empty()) {
      EncodePiece(piece, at_start, &ids);
      continue;
    }
    sub_splits.clear();
    normalized_matcher_->Split(piece, &sub_splits);
    for (const tk::AddedSplit& sub : sub_splits) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
      } else if (sub.begin != sub.end) {
        EncodePiece(std::string_view(piece).substr(sub.begin, sub.end - sub.begin),
                    at_start && sub.begin == 0, &ids);
      }
    }
  }
  return ids;
}

absl::StatusOr<std::string> HfTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const auto it = added_by_id_.find(id); it != added_by_id_.end()) {
      tokens.push_back(added_tokens_[it->second].content);
      continue;
    }
    const std::string* token = model_->IdToToken(id);
    if (token == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is not in the vocabulary of ", name_, " (size ", vocab_size_, ")"));
    }
    tokens.push_back(*token);
  }
  if (decoder_ == nullptr) return absl::StrJoin(tokens, " ");
  decoder_->DecodeChain(&tokens);
  return absl::StrJoin(tokens, "");
}

bool HfTokenizer::IsSpecialToken(int32_t id) const {
  const auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_tokens_[it->second].special;
}

std::optional<int32_t> HfTokenizer::TokenToId(std::string_view token) const {
  for (const tk::AddedToken& added : added_tokens_) {
    if (added.content == token) return added.id;
  }
  return model_->TokenToId(token);
}

}  // namespace kvblock
