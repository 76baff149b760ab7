// Hugging Face `tokenizer.json` tokenizers (Llama 3, Qwen 2/3, and others built from the same
// parts): added tokens, normalizer, pre-tokenizer, BPE model and decoder, encoding as
// `Tokenizer.encode(text, add_special_tokens=False)` does (the post-processor only adds special
// tokens, so it is not applied; truncation and padding are ignored).
// Thread-safe after construction: Encode/Decode are const (the BPE cache locks internally).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/tokenizer/added_vocabulary.h"
#include "worker/tokenizer/bpe_model.h"
#include "worker/tokenizer/decoder.h"
#include "worker/tokenizer/normalizer.h"
#include "worker/tokenizer/pre_tokenizer.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {

class HfTokenizer final : public Tokenizer {
 public:
  // Parses the contents of a tokenizer.json; `name` (usually the path) prefixes every error.
  // INVALID_ARGUMENT for malformed JSON, a missing or unsupported model (only BPE is supported),
  // unknown component types, bad merges and look-around regexes that cannot be emulated.
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> FromJsonText(
      std::string_view json_text, const std::string& name,
      const tokenizer::BpeModelOptions& bpe_options = {});
  // Reads and parses a tokenizer.json file; NOT_FOUND when it cannot be read.
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> FromFile(
      const std::string& path, const tokenizer::BpeModelOptions& bpe_options = {});

  // INVALID_ARGUMENT (with the byte offset) for text that is not well-formed UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  // Special tokens are decoded too (as their text); filter ids with IsSpecialToken to leave them
  // out. INVALID_ARGUMENT for an id that is neither in the vocabulary nor an added token.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override;
  int32_t VocabSize() const override { return vocab_size_; }
  bool IsSpecialToken(int32_t id) const override;

  // The id of a token (vocabulary or added token), e.g. "<|eot_id|>".
  std::optional<int32_t> TokenToId(std::string_view token) const;

 private:
  HfTokenizer() = default;
  // Normalizes, pre-tokenizes and tokenizes one piece of ordinary text.
  void EncodePiece(std::string_view text, bool at_start, std::vector<int32_t>* ids) const;

  std::string name_;
  std::unique_ptr<tokenizer::Normalizer> normalizer_;        // may be null
  std::unique_ptr<tokenizer::PreTokenizer> pre_tokenizer_;   // may be null
  std::unique_ptr<tokenizer::BpeModel> model_;
  std::unique_ptr<tokenizer::Decoder> decoder_;              // may be null: tokens joined by ' '
  std::vector<tokenizer::AddedToken> added_tokens_;
  absl::flat_hash_map<int32_t, size_t> added_by_id_;         // id -> index in added_tokens_
  std::unique_ptr<tokenizer::AddedTokenMatcher> raw_matcher_;         // normalized=false tokens
  std::unique_ptr<tokenizer::AddedTokenMatcher> normalized_matcher_;  // normalized=true tokens
  int32_t vocab_size_ = 0;
};

}  // namespace kvblock
