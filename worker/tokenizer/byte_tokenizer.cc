#include "worker/tokenizer/byte_tokenizer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/file_util.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock {

absl::Status ByteTokenizerOptions::Validate() const {
  if (vocab_size < 256) {
    return absl::InvalidArgumentError(absl::StrCat("byte tokenizer: vocab_size ", vocab_size, " < 256"));
  }
  std::vector<int32_t> specials = eos_ids;
  if (bos_id >= 0) specials.push_back(bos_id);
  if (pad_id >= 0) specials.push_back(pad_id);
  for (int32_t id : specials) {
    if (id < 256 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "byte tokenizer: special id ", id, " is outside [256, vocab_size=", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ByteTokenizer>> ByteTokenizer::Create(const ByteTokenizerOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::unique_ptr<ByteTokenizer>(new ByteTokenizer(options));
}

absl::StatusOr<std::unique_ptr<ByteTokenizer>> ByteTokenizer::FromConfigFile(const std::string& path) {
  auto text = tokenizer::ReadFileBytes(path);
  if (!text.ok()) return text.status();
  const nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  const auto id_or = [&](const char* key, int32_t fallback) -> absl::StatusOr<int32_t> {
    const auto it = config.find(key);
    if (it == config.end() || it->is_null()) return fallback;
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > (int64_t{1} << 30)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, ": expected a non-negative integer"));
    }
    return static_cast<int32_t>(it->get<int64_t>());
  };
  ByteTokenizerOptions options;
  auto vocab = id_or("vocab_size", -1);
  if (!vocab.ok()) return vocab.status();
  if (*vocab < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": missing vocab_size"));
  options.vocab_size = *vocab;
  auto bos = id_or("bos_token_id", -1);
  auto pad = id_or("pad_token_id", -1);
  if (!bos.ok()) return bos.status();
  if (!pad.ok()) return pad.status();
  options.bos_id = *bos;
  options.pad_id = *pad;
  options.eos_ids.clear();
  if (const auto it = config.find("eos_token_id"); it != config.end() && it->is_array()) {
    for (const auto& id : *it) {
      if (!id.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": eos_token_id: expected integers"));
      }
      options.eos_ids.push_back(id.get<int32_t>());
    }
  } else {
    auto eos = id_or("eos_token_id", -1);
    if (!eos.ok()) return eos.status();
    if (*eos >= 0) options.eos_ids.push_back(*eos);
  }
  if (absl::Status s = options.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  }
  return std::unique_ptr<ByteTokenizer>(new ByteTokenizer(std::move(options)));
}

absl::StatusOr<std::vector<int32_t>> ByteTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<uint8_t>(text[i]);
  return ids;
}

absl::StatusOr<std::string> ByteTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string bytes;
  bytes.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= options_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the byte tokenizer's vocabulary (size ",
                       options_.vocab_size, ")"));
    }
    if (id < 256) bytes.push_back(static_cast<char>(id));
  }
  return tokenizer::LossyUtf8(bytes);
}

}  // namespace kvblock
