// The retrieval-QA prompt layout of kvblock's trained demo model (the layout training/kvqa/data.py
// trains on; keep the two in step): the non-final blocks are the instruction and the passages,
// the final block is "Question: <question>\nAnswer:", and the answer is generated up to EOS.
// Used by `kvblock eval` and `kvblock demo`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/engine/engine.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {

// The first block of every prompt (cached like any passage).
inline constexpr std::string_view kQaInstruction =
    "Answer the question using only the passages below.\n";

// A request with blocks = [instruction, passage blocks...] (each passage cut by SplitIntoBlocks
// at max_block_tokens, as the indexer cuts it, so the keys match an indexed corpus) and the
// question as the final block. max_new_tokens, sampling and mode keep their defaults.
// Errors: the tokenizer's and SplitIntoBlocks' (INVALID_ARGUMENT for max_block_tokens <= 0).
absl::StatusOr<GenerateRequest> BuildQaRequest(const Tokenizer& tokenizer,
                                               absl::Span<const std::string> passages,
                                               std::string_view question,
                                               int64_t max_block_tokens);

// The answer compared by exact match: the generated text up to its first newline, with leading
// and trailing ASCII whitespace removed (the model emits " answer" then EOS).
std::string NormalizeAnswer(std::string_view generated);

}  // namespace kvblock
