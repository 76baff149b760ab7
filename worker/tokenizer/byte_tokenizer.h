// The byte-level tokenizer of the small test models (shared/fixtures): token id = byte value for
// ids 0..255; the ids above (BOS, EOS, pad) are special tokens with no text.
// Thread-safe: immutable after construction.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {

struct ByteTokenizerOptions {
  // Ids in the vocabulary: 256 bytes plus the special tokens. Default: 259 (as the fixtures).
  int32_t vocab_size = 259;
  // Beginning-of-sequence id, or -1 for none. Default: 256.
  int32_t bos_id = 256;
  // End-of-sequence ids. Default: {257}.
  std::vector<int32_t> eos_ids = {257};
  // Padding id, or -1 for none. Default: 258.
  int32_t pad_id = 258;

  // INVALID_ARGUMENT unless vocab_size >= 256 and every special id is in [256, vocab_size).
  absl::Status Validate() const;
};

class ByteTokenizer final : public Tokenizer {
 public:
  // INVALID_ARGUMENT when `options` do not validate.
  static absl::StatusOr<std::unique_ptr<ByteTokenizer>> Create(const ByteTokenizerOptions& options);
  // Reads vocab_size, bos_token_id, eos_token_id (one id or a list) and pad_token_id from a
  // Hugging Face config.json. NOT_FOUND if unreadable, INVALID_ARGUMENT naming the file otherwise.
  static absl::StatusOr<std::unique_ptr<ByteTokenizer>> FromConfigFile(const std::string& path);

  // Any bytes (UTF-8 or not): one id per byte. Never fails.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  // Bytes of ids < 256; special ids add nothing; the bytes are made UTF-8 lossily (U+FFFD).
  // INVALID_ARGUMENT for an id < 0 or >= VocabSize().
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override;
  int32_t VocabSize() const override { return options_.vocab_size; }
  bool IsSpecialToken(int32_t id) const override { return id >= 256 && id < options_.vocab_size; }
  const ByteTokenizerOptions& options() const { return options_; }

 private:
  explicit ByteTokenizer(ByteTokenizerOptions options) : options_(std::move(options)) {}
  ByteTokenizerOptions options_;
};

}  // namespace kvblock
