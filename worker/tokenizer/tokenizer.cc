#include "worker/tokenizer/tokenizer.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "worker/tokenizer/byte_tokenizer.h"
#include "worker/tokenizer/hf_tokenizer.h"

namespace kvblock {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    if (fs::exists(dir / "tokenizer.json", ec)) {
      auto tok = HfTokenizer::FromFile((dir / "tokenizer.json").string());
      if (!tok.ok()) return tok.status();
      return std::unique_ptr<Tokenizer>(*std::move(tok));
    }
    if (fs::exists(dir / "config.json", ec)) {
      auto tok = ByteTokenizer::FromConfigFile((dir / "config.json").string());
      if (!tok.ok()) return tok.status();
      return std::unique_ptr<Tokenizer>(*std::move(tok));
    }
    return absl::NotFoundError(absl::StrCat(path, ": no tokenizer.json or config.json in this directory"));
  }
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  auto tok = HfTokenizer::FromFile(path);
  if (!tok.ok()) return tok.status();
  return std::unique_ptr<Tokenizer>(*std::move(tok));
}

}  // namespace kvblock
