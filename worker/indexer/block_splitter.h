// Splitting text into blocks (the paper's segmentation): a long text is cut at the delimiters
// "\n\n", "---", "===" and "\n\t" into segments (each delimiter stays with the text before it, so
// the blocks concatenated are the text again), each segment is tokenized alone, and adjacent
// segments are packed greedily into blocks of at most max_block_tokens tokens; a segment longer
// than that is cut into max_block_tokens-sized pieces. Used by the indexer (passages) and the
// inference service (`auto_split`), so both produce the same blocks and hence the same keys.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {

// The text segments of `text` cut after each delimiter (no segment is empty; their
// concatenation is `text`). Pure function.
std::vector<std::string_view> SplitAtDelimiters(std::string_view text);

// Blocks of `text` as described above; empty text gives no blocks. INVALID_ARGUMENT for
// max_block_tokens <= 0; the tokenizer's errors otherwise. Thread-safe if the tokenizer is.
absl::StatusOr<std::vector<std::vector<int32_t>>> SplitIntoBlocks(const Tokenizer& tokenizer,
                                                                  std::string_view text,
                                                                  int64_t max_block_tokens);

// Cuts token ids into pieces of at most max_block_tokens (no delimiters are known for ids).
std::vector<std::vector<int32_t>> SplitTokenIds(const std::vector<int32_t>& ids,
                                                int64_t max_block_tokens);

}  // namespace kvblock
