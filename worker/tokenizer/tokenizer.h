// Tokenizer: text <-> token ids. Implementations: the byte-level tokenizer of the small test
// models (id = byte value, plus BOS/EOS ids from the config) and Hugging Face `tokenizer.json`
// (byte-level BPE with its normalizer, pre-tokenizer, added tokens and decoder).
// Thread-safe after construction: Encode/Decode are const.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvblock {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` without adding BOS/EOS (special tokens written in the text are still matched
  // where the tokenizer defines them). INVALID_ARGUMENT for text that is not valid UTF-8 where
  // the tokenizer needs UTF-8.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  // Text of `ids`; INVALID_ARGUMENT for an id outside the vocabulary.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const = 0;
  virtual int32_t VocabSize() const = 0;
  // Whether `id` is a special (control) token such as BOS/EOS or <|eot_id|>: text shown to people
  // usually leaves these out. Default: none is.
  virtual bool IsSpecialToken(int32_t id) const { return false; }
};

// Loads `path`: a tokenizer.json file, or a model directory holding tokenizer.json. A model
// directory without one gets the byte-level tokenizer sized from its config.json (vocab_size,
// bos/eos ids). NOT_FOUND / INVALID_ARGUMENT with the file name on failure.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path);

}  // namespace kvblock
