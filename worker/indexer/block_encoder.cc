// LocalBlockEncoder (block_encoder.h).
#include "worker/indexer/block_encoder.h"

namespace kvblock {

absl::Status LocalBlockEncoder::Encode(absl::Span<const std::vector<int32_t>> blocks,
                                       PayloadSink sink) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::StatusOr<std::vector<uint8_t>> payload = engine_->EncodeBlock(blocks[i]);
    if (!payload.ok()) return payload.status();
    if (absl::Status s = sink(i, *std::move(payload)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace kvblock
