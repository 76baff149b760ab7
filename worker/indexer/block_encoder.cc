// LocalBlockEncoder (block_encoder.h).
#include "worker/indexer/block_encoder.h"

#include <utility>

namespace kvblock {

absl::Status LocalBlockEncoder::Encode(absl::Span<const std::vector<int32_t>> blocks,
                                       PayloadSink sink) {
  std::vector<absl::Span<const int32_t>> spans(blocks.begin(), blocks.end());
  absl::StatusOr<std::vector<std::vector<uint8_t>>> payloads = engine_->EncodeBlocks(spans);
  if (!payloads.ok()) return payloads.status();
  for (size_t i = 0; i < payloads->size(); ++i) {
    if (absl::Status s = sink(i, std::move((*payloads)[i])); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace kvblock
