#include "worker/tokenizer/file_util.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace kvblock::tokenizer {

absl::StatusOr<std::string> ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::NotFoundError(absl::StrCat(path, ": read error"));
  return std::move(contents).str();
}

}  // namespace kvblock::tokenizer
