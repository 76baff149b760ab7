#include "worker/eval/qa_prompt.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "worker/indexer/block_splitter.h"

namespace kvblock {

absl::StatusOr<GenerateRequest> BuildQaRequest(const Tokenizer& tokenizer,
                                               absl::Span<const std::string> passages,
                                               std::string_view question,
                                               int64_t max_block_tokens) {
  GenerateRequest req;
  absl::StatusOr<std::vector<int32_t>> instruction = tokenizer.Encode(kQaInstruction);
  if (!instruction.ok()) return instruction.status();
  req.blocks.push_back(std::move(*instruction));
  for (const std::string& passage : passages) {
    absl::StatusOr<std::vector<std::vector<int32_t>>> blocks =
        SplitIntoBlocks(tokenizer, passage, max_block_tokens);
    if (!blocks.ok()) return blocks.status();
    for (auto& b : *blocks) req.blocks.push_back(std::move(b));
  }
  absl::StatusOr<std::vector<int32_t>> fin =
      tokenizer.Encode(absl::StrCat("Question: ", std::string(question), "\nAnswer:"));
  if (!fin.ok()) return fin.status();
  req.final_block = std::move(*fin);
  return req;
}

std::string NormalizeAnswer(std::string_view generated) {
  const size_t nl = generated.find('\n');
  if (nl != std::string_view::npos) generated = generated.substr(0, nl);
  return std::string(absl::StripAsciiWhitespace(absl::string_view(generated.data(), generated.size())));
}

}  // namespace kvblock
