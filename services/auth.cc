#include "services/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kvblock {

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read token file ", path));
  std::string line;
  std::getline(in, line);
  std::string token(absl::StripAsciiWhitespace(line));
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("token file ", path, " is empty"));
  for (unsigned char c : token) {
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat("token in ", path, " holds whitespace or non-printable bytes"));
    }
  }
  return token;
}

std::string BearerValue(std::string_view token) {
  return absl::StrCat("Bearer ", std::string(token));
}

absl::Status CheckBearer(std::string_view expected, const std::string* presented_value) {
  if (expected.empty()) return absl::OkStatus();
  if (presented_value == nullptr) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  constexpr std::string_view kPrefix = "Bearer ";
  const std::string& v = *presented_value;
  if (v.size() < kPrefix.size() || std::string_view(v).substr(0, kPrefix.size()) != kPrefix) {
    return absl::UnauthenticatedError("authorization metadata is not a Bearer token");
  }
  std::string_view token = std::string_view(v).substr(kPrefix.size());
  // Constant time in the token's content (the length is not secret enough to hide).
  unsigned char diff = token.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < token.size() && i < expected.size(); ++i) {
    diff |= static_cast<unsigned char>(token[i] ^ expected[i]);
  }
  if (diff != 0) return absl::UnauthenticatedError("invalid bearer token");
  return absl::OkStatus();
}

}  // namespace kvblock
