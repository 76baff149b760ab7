// Bearer-token authentication shared by the cache server (checks every call) and the cluster
// client (attaches the token): token files, the `authorization` metadata value, and a
// constant-time comparison so the check does not leak the token through timing.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvblock {

// gRPC metadata key that carries the token (lowercase, as HTTP/2 requires).
inline constexpr std::string_view kAuthMetadataKey = "authorization";

// Reads a token file: the first line with surrounding whitespace removed. NOT_FOUND if the file
// cannot be read, INVALID_ARGUMENT if the token is empty or holds whitespace or control bytes.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// "Bearer <token>".
std::string BearerValue(std::string_view token);

// Checks an `authorization` metadata value against the expected token. An empty `expected`
// disables authentication (always OK). UNAUTHENTICATED when the value is missing, not a bearer
// value, or names another token. Thread-safe (pure function).
absl::Status CheckBearer(std::string_view expected, const std::string* presented_value);

}  // namespace kvblock
