// Small typed accessors for reading tokenizer.json with nlohmann::json without exceptions: each
// returns INVALID_ARGUMENT naming the field when it is missing or of the wrong type.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
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

// The steps of a "Sequence" component (normalizer, pre-tokenizer, decoder): object[key] must be
// an array; each element is parsed by `parse(element, where_of_element)`. INVALID_ARGUMENT
// naming the key or the failing element.
template <typename T, typename Parse>
absl::StatusOr<std::vector<std::unique_ptr<T>>> JsonSequence(const nlohmann::json& object,
                                                             const char* key,
                                                             const std::string& where,
                                                             Parse parse) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", key, ": expected an array"));
  }
  std::vector<std::unique_ptr<T>> steps;
  for (size_t i = 0; i < it->size(); ++i) {
    absl::StatusOr<std::unique_ptr<T>> step =
        parse((*it)[i], absl::StrCat(where, ".", key, "[", i, "]"));
    if (!step.ok()) return step.status();
    steps.push_back(*std::move(step));
  }
  return steps;
}

}  // namespace kvblock::tokenizer
