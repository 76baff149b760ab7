// Normalizers of Hugging Face tokenizer.json (the "normalizer" field): NFC, NFD, NFKC, NFKD,
// Lowercase, Strip, StripAccents, Replace, Prepend, BertNormalizer and Sequence. A normalizer maps
// a (well-formed UTF-8) piece of text to another; offsets are not tracked because kvblock needs only
// the ids. Thread-safe after construction.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace kvblock::tokenizer {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites `*text` in place.
  virtual void Normalize(std::string* text) const = 0;
};

// Builds a normalizer from its tokenizer.json object. INVALID_ARGUMENT naming `where` and the
// field for unknown types (e.g. "Precompiled") and malformed fields.
absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const nlohmann::json& json,
                                                               const std::string& where);

}  // namespace kvblock::tokenizer
