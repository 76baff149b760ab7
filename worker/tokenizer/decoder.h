// Decoders of Hugging Face tokenizer.json (the "decoder" field): ByteLevel, ByteFallback, Fuse,
// Strip, Replace, Metaspace, BPEDecoder and Sequence. A decoder rewrites the list of token strings
// (decode_chain); the text is their concatenation. Thread-safe after construction.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace kvblock::tokenizer {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// Builds a decoder from its tokenizer.json object. INVALID_ARGUMENT naming `where` and the field
// for unknown types and malformed fields.
absl::StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const nlohmann::json& json,
                                                         const std::string& where);

}  // namespace kvblock::tokenizer
