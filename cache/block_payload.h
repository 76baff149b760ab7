// The block payload: what the cache stores for one block and what moves over the wire.
//
//   [header: kBlockHeaderBytes, little-endian, versioned, own checksum]
//   [layer 0][layer 1]...[layer L-1]          (layer-major: layer 0 can be used while later
//                                              layers are still in flight)
//   layer = [fp8 only: K scales f32[kv_heads], V scales f32[kv_heads]]
//           [K: kv_heads x tokens x head_dim][V: same]
//
// K is stored as the block's own prefill produced it: RoPE applied at block-local positions
// 0..n-1. Decoding is strict: any mismatch is an INVALID_ARGUMENT / DATA_LOSS status naming the
// field, never a crash and never an out-of-bounds read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/block_key.h"
#include "cache/dtype.h"

namespace kvblock {

inline constexpr uint32_t kBlockMagic = 0x4B42564B;  // "KVBK" read little-endian
inline constexpr size_t kBlockHeaderBytes = 96;

// Limits that keep sizes well inside 64-bit arithmetic; a header beyond them is malformed.
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxKvHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 1024;
inline constexpr uint32_t kMaxBlockTokens = 1u << 20;

// Everything the header says about a block.
struct BlockMeta {
  ModelFingerprint model;
  BlockKey key;
  KvDtype dtype = KvDtype::kF32;
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t num_tokens = 0;

  friend bool operator==(const BlockMeta&, const BlockMeta&) = default;
};

// INVALID_ARGUMENT unless every field is inside the limits above and non-zero.
absl::Status ValidateMeta(const BlockMeta& meta);
// Elements of K (or V) in one layer: kv_heads * tokens * head_dim.
uint64_t LayerElements(const BlockMeta& meta);
// Bytes of one layer, scales included. Meta must be valid.
uint64_t LayerBytes(const BlockMeta& meta);
// Bytes after the header. Meta must be valid.
uint64_t DataBytes(const BlockMeta& meta);
inline uint64_t PayloadBytes(const BlockMeta& meta) { return kBlockHeaderBytes + DataBytes(meta); }

// Builds a payload from f32 K and V (each [layers][kv_heads][tokens][head_dim]), converting to
// meta.dtype; fp8 scales are max|x|/448 per (layer, K|V, head).
absl::StatusOr<std::vector<uint8_t>> EncodeBlock(const BlockMeta& meta, absl::Span<const float> k,
                                                 absl::Span<const float> v);
// Builds a payload from data already in the layer-major format (e.g. bf16 straight from a GPU).
absl::StatusOr<std::vector<uint8_t>> EncodeBlockRaw(const BlockMeta& meta,
                                                    absl::Span<const uint8_t> data);

// Decodes a header alone (the first kBlockHeaderBytes bytes): checks magic, version, header
// checksum and limits. Lets a receiver size its buffer before the data arrives.
struct BlockHeader {
  BlockMeta meta;
  uint64_t data_bytes = 0;
  uint64_t data_checksum = 0;
};
absl::StatusOr<BlockHeader> DecodeHeader(absl::Span<const uint8_t> bytes);

// What BlockView::Parse checks of the data section: its checksum (kVerify), or, for bytes already
// verified in this host's memory (BlockBytes::verified), only its size (kTrusted).
enum class DataCheck { kVerify, kTrusted };

// A decoded, verified, non-owning view of a payload. Valid while the bytes are.
class BlockView {
 public:
  // Verifies header, total size and (unless kTrusted) data checksum. DATA_LOSS for checksum
  // mismatches, INVALID_ARGUMENT for everything else malformed.
  static absl::StatusOr<BlockView> Parse(absl::Span<const uint8_t> bytes,
                                         DataCheck check = DataCheck::kVerify);

  const BlockMeta& meta() const { return meta_; }
  // Raw bytes of one layer (scales, K, V). `layer` must be < num_layers.
  absl::Span<const uint8_t> Layer(uint32_t layer) const;
  // Dequantizes one layer into f32 buffers of LayerElements() each.
  void ReadLayerF32(uint32_t layer, float* k, float* v) const;

 private:
  BlockView(BlockMeta meta, absl::Span<const uint8_t> data) : meta_(meta), data_(data) {}
  BlockMeta meta_;
  absl::Span<const uint8_t> data_;
};

}  // namespace kvblock
