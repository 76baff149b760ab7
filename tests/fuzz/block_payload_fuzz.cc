// libFuzzer target for the block payload decoder: any byte string must either fail with a status
// or decode into a view whose every layer can be read without leaving the buffer (ASan checks).
// Each input is tried twice: as is (checksum and framing checks), and resealed with correct
// checksums so the fuzzer also reaches the structural checks behind them.
#include <cstdint>
#include <vector>

#include "cache/block_payload.h"
#include "cache/internal/block_header_layout.h"
#include "cache/internal/little_endian.h"
#include "xxhash.h"

namespace {

void Decode(const std::vector<uint8_t>& bytes) {
  (void)kvblock::DecodeHeader(bytes);
  absl::StatusOr<kvblock::BlockView> view = kvblock::BlockView::Parse(bytes);
  if (!view.ok()) return;
  const kvblock::BlockMeta& m = view->meta();
  std::vector<float> k(kvblock::LayerElements(m)), v(kvblock::LayerElements(m));
  for (uint32_t l = 0; l < m.num_layers; ++l) view->ReadLayerF32(l, k.data(), v.data());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace hl = kvblock::internal::header_layout;
  // Exact-size heap buffer so ASan catches any read past the end.
  std::vector<uint8_t> bytes(data, data + size);
  Decode(bytes);
  if (size >= kvblock::kBlockHeaderBytes && size < (64u << 20)) {
    const uint8_t* body = bytes.data() + kvblock::kBlockHeaderBytes;
    kvblock::internal::StoreLE64(bytes.data() + hl::kOffDataChecksum,
                                 XXH3_64bits(body, size - kvblock::kBlockHeaderBytes));
    kvblock::internal::StoreLE64(bytes.data() + hl::kOffHeaderChecksum,
                                 XXH3_64bits(bytes.data(), hl::kOffHeaderChecksum));
    Decode(bytes);
  }
  return 0;
}
