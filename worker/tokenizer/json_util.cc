#include "worker/tokenizer/json_util.h"

#include "absl/strings/str_cat.h"
#include "worker/tokenizer/regex.h"
#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {

namespace {

absl::Status Bad(const std::string& where, const char* key, const char* expected) {
  return absl::InvalidArgumentError(absl::StrCat(where, ".", key, ": expected ", expected));
}

}  // namespace

absl::StatusOr<std::string> JsonString(const nlohmann::json& object, const char* key,
                                       const std::string& where) {
  if (!object.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected an object"));
  const auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return Bad(where, key, "a string");
  return it->get<std::string>();
}

absl::StatusOr<std::string> JsonStringOr(const nlohmann::json& object, const char* key,
                                         const std::string& where, std::string fallback) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_string()) return Bad(where, key, "a string");
  return it->get<std::string>();
}

absl::StatusOr<bool> JsonBoolOr(const nlohmann::json& object, const char* key,
                                const std::string& where, bool fallback) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return Bad(where, key, "a boolean");
  return it->get<bool>();
}

absl::StatusOr<int64_t> JsonIntOr(const nlohmann::json& object, const char* key,
                                  const std::string& where, int64_t fallback) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) return Bad(where, key, "an integer");
  return it->get<int64_t>();
}

absl::StatusOr<std::string> JsonType(const nlohmann::json& object, const std::string& where) {
  if (!object.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected an object"));
  return JsonString(object, "type", where);
}

absl::StatusOr<std::string> JsonChar(const nlohmann::json& object, const char* key,
                                     const std::string& where, std::string fallback) {
  auto value = JsonStringOr(object, key, where, std::move(fallback));
  if (!value.ok()) return value.status();
  char32_t cp;
  if (value->empty() || DecodeUtf8(*value, 0, &cp) != value->size()) {
    return Bad(where, key, "a single character");
  }
  return value;
}

// Reads a {"String": s} or {"Regex": r} pattern (Replace, Split).
absl::StatusOr<std::unique_ptr<Regex>> PatternFromJson(const nlohmann::json& json,
                                                       const std::string& where) {
  if (json.is_object() && json.contains("String") && json["String"].is_string()) {
    return Regex::Literal(json["String"].get<std::string>());
  }
  if (json.is_object() && json.contains("Regex") && json["Regex"].is_string()) {
    auto regex = Regex::Compile(json["Regex"].get<std::string>());
    if (!regex.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".pattern: ", regex.status().message()));
    }
    return regex;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ".pattern: expected {\"String\": ...} or {\"Regex\": ...}"));
}

}  // namespace kvblock::tokenizer
