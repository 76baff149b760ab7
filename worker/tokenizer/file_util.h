// Reads a whole file for the tokenizer loaders.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace kvblock::tokenizer {

// The bytes of `path`; NOT_FOUND naming the path when it cannot be opened or read.
absl::StatusOr<std::string> ReadFileBytes(const std::string& path);

}  // namespace kvblock::tokenizer
