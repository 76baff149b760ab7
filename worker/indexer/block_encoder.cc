// LocalBlockEncoder (block_encoder.h).
#include "worker/indexer/block_encoder.h"

#include <utility>

namespace kvblock {

absl::Status LocalBlockEncoder::Encode(absl::Span<const std::vector<int32_t>> blocks,
                                       PayloadSink sink) {
  size_t begin = 0;
  while (begin < blocks.size()) {
    std::vector<absl::Span<const int32_t>> run;
    int64_t tokens = 0;
    size_t end = begin;
    for (; end < blocks.size(); ++end) {
      const auto n = static_cast<int64_t>(blocks[end].size());
      if (end > begin && tokens + n > chunk_tokens_) break;
      run.emplace_back(blocks[end]);
      tokens += n;
    }
    absl::StatusOr<std::vector<std::vector<uint8_t>>> payloads = engine_->EncodeBlocks(run);
    if (!payloads.ok()) return payloads.status();
    for (size_t j = 0; j < payloads->size(); ++j) {
      if (absl::Status s = sink(begin + j, std::move((*payloads)[j])); !s.ok()) return s;
    }
    begin = end;
  }
  return absl::OkStatus();
}

}  // namespace kvblock
