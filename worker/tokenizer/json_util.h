// Small typed accessors for reading tokenizer.json with nlohmann::json without exceptions: each
// returns INVALID_ARGUMENT naming the field when it is missing or of the wrong type.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace kvblock::tokenizer {

class Regex;

// `where` names the object for error messages, e.g. "normalizer".
absl::StatusOr<std::string> JsonString(const nlohmann::json& object, const char* key,
                                       const std::string& where);
// As above; `fallback` when the key is missing or null.
absl::StatusOr<std::string> JsonStringOr(const nlohmann::json& object, const char* key,
                                         const std::string& where, std::string fallback);
absl::StatusOr<bool> JsonBoolOr(const nlohmann::json& object, const char* key,
                                const std::string& where, bool fallback);
absl::StatusOr<int64_t> JsonIntOr(const nlohmann::json& object, const char* key,
                                  const std::string& where, int64_t fallback);
// The "type" of a component object.
absl::StatusOr<std::string> JsonType(const nlohmann::json& object, const std::string& where);
// A field holding exactly one Unicode character (Metaspace replacement, Strip content).
absl::StatusOr<std::string> JsonChar(const nlohmann::json& object, const char* key,
                                     const std::string& where, std::string fallback);

// A {"String": s} (literal) or {"Regex": r} (Oniguruma syntax) pattern, as Replace and Split use.
absl::StatusOr<std::unique_ptr<Regex>> PatternFromJson(const nlohmann::json& json,
                                                       const std::string& where);

}  // namespace kvblock::tokenizer
