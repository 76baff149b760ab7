#include "cache/block_payload.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cache/internal/block_header_layout.h"
#include "cache/internal/little_endian.h"
#include "xxhash.h"
#if defined(__x86_64__)
// Runtime-dispatched XXH3 (AVX2 / AVX-512 where the CPU has them): Debian's libxxhash is built
// for baseline x86-64, whose SSE2 XXH3 was the largest cost of a verified Get (same hash values).
#include "xxh_x86dispatch.h"
#endif

namespace kvblock {
namespace {

using namespace internal::header_layout;  // NOLINT: field offsets
using internal::LoadLE16;
using internal::LoadLE32;
using internal::LoadLE64;
using internal::StoreLE16;
using internal::StoreLE32;
using internal::StoreLE64;


bool IsZero(const uint8_t* p, size_t n) {
  return std::all_of(p, p + n, [](uint8_t b) { return b == 0; });
}

uint64_t ScaleBytes(const BlockMeta& m) {
  return m.dtype == KvDtype::kFP8E4M3 ? 2ull * m.num_kv_heads * sizeof(float) : 0;
}

void WriteHeader(const BlockMeta& m, uint64_t data_checksum, uint8_t* h) {
  std::memset(h, 0, kBlockHeaderBytes);
  StoreLE32(h + kOffMagic, kBlockMagic);
  StoreLE16(h + kOffVersion, kBlockLayoutVersion);
  StoreLE16(h + kOffHeaderSize, kBlockHeaderBytes);
  m.model.ToBytes(h + kOffModel);
  m.key.ToBytes(h + kOffKey);
  h[kOffDtype] = static_cast<uint8_t>(m.dtype);
  StoreLE32(h + kOffLayers, m.num_layers);
  StoreLE32(h + kOffKvHeads, m.num_kv_heads);
  StoreLE32(h + kOffHeadDim, m.head_dim);
  StoreLE32(h + kOffTokens, m.num_tokens);
  StoreLE64(h + kOffDataBytes, DataBytes(m));
  StoreLE64(h + kOffDataChecksum, data_checksum);
  StoreLE64(h + kOffHeaderChecksum, XXH3_64bits(h, kOffHeaderChecksum));
}

void EncodeValues(KvDtype dtype, const float* src, uint64_t n, float inv_scale, uint8_t* dst) {
  switch (dtype) {
    case KvDtype::kF32:
      std::memcpy(dst, src, n * 4);
      break;
    case KvDtype::kBF16:
      for (uint64_t i = 0; i < n; ++i) StoreLE16(dst + 2 * i, FloatToBf16(src[i]));
      break;
    case KvDtype::kF16:
      for (uint64_t i = 0; i < n; ++i) StoreLE16(dst + 2 * i, FloatToF16(src[i]));
      break;
    case KvDtype::kFP8E4M3:
      for (uint64_t i = 0; i < n; ++i) dst[i] = FloatToFp8E4M3(src[i] * inv_scale);
      break;
  }
}

void DecodeValues(KvDtype dtype, const uint8_t* src, uint64_t n, float scale, float* dst) {
  switch (dtype) {
    case KvDtype::kF32:
      std::memcpy(dst, src, n * 4);
      break;
    case KvDtype::kBF16:
      for (uint64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(LoadLE16(src + 2 * i));
      break;
    case KvDtype::kF16:
      for (uint64_t i = 0; i < n; ++i) dst[i] = F16ToFloat(LoadLE16(src + 2 * i));
      break;
    case KvDtype::kFP8E4M3:
      for (uint64_t i = 0; i < n; ++i) dst[i] = Fp8E4M3ToFloat(src[i]) * scale;
      break;
  }
}

float Fp8Scale(const float* x, uint64_t n) {
  float m = 0;
  for (uint64_t i = 0; i < n; ++i) {
    if (std::isfinite(x[i])) m = std::max(m, std::fabs(x[i]));
  }
  return m > 0 ? m / kFp8E4M3Max : 1.0f;
}

absl::StatusOr<std::vector<uint8_t>> AllocatePayload(const BlockMeta& meta) {
  if (absl::Status s = ValidateMeta(meta); !s.ok()) return s;
  return std::vector<uint8_t>(PayloadBytes(meta));
}

void Seal(const BlockMeta& meta, std::vector<uint8_t>& out) {
  uint64_t checksum = XXH3_64bits(out.data() + kBlockHeaderBytes, out.size() - kBlockHeaderBytes);
  WriteHeader(meta, checksum, out.data());
}

}  // namespace

absl::Status ValidateMeta(const BlockMeta& m) {
  if (DtypeSize(m.dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block dtype ", static_cast<int>(m.dtype), " is not a KV dtype"));
  }
  auto check = [](const char* name, uint32_t v, uint32_t max) -> absl::Status {
    if (v == 0 || v > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", name, " = ", v, " is outside [1, ", max, "]"));
    }
    return absl::OkStatus();
  };
  if (auto s = check("num_layers", m.num_layers, kMaxLayers); !s.ok()) return s;
  if (auto s = check("num_kv_heads", m.num_kv_heads, kMaxKvHeads); !s.ok()) return s;
  if (auto s = check("head_dim", m.head_dim, kMaxHeadDim); !s.ok()) return s;
  return check("num_tokens", m.num_tokens, kMaxBlockTokens);
}

uint64_t LayerElements(const BlockMeta& m) {
  return uint64_t{m.num_kv_heads} * m.num_tokens * m.head_dim;
}

uint64_t LayerBytes(const BlockMeta& m) {
  return ScaleBytes(m) + 2 * LayerElements(m) * DtypeSize(m.dtype);
}

uint64_t DataBytes(const BlockMeta& m) { return uint64_t{m.num_layers} * LayerBytes(m); }

absl::StatusOr<std::vector<uint8_t>> EncodeBlock(const BlockMeta& meta, absl::Span<const float> k,
                                                 absl::Span<const float> v) {
  absl::StatusOr<std::vector<uint8_t>> out = AllocatePayload(meta);
  if (!out.ok()) return out.status();
  const uint64_t per_layer = LayerElements(meta);
  const uint64_t want = per_layer * meta.num_layers;
  if (k.size() != want || v.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("EncodeBlock: K has ", k.size(), " and V ",
                                                   v.size(), " elements; the shape needs ", want));
  }
  const uint64_t per_head = uint64_t{meta.num_tokens} * meta.head_dim;
  const size_t esize = DtypeSize(meta.dtype);
  const bool fp8 = meta.dtype == KvDtype::kFP8E4M3;
  uint8_t* p = out->data() + kBlockHeaderBytes;
  for (uint32_t l = 0; l < meta.num_layers; ++l) {
    uint8_t* scales = p;
    uint8_t* kdst = p + ScaleBytes(meta);
    uint8_t* vdst = kdst + per_layer * esize;
    for (int kv = 0; kv < 2; ++kv) {
      const float* src = (kv == 0 ? k.data() : v.data()) + l * per_layer;
      uint8_t* dst = kv == 0 ? kdst : vdst;
      for (uint32_t h = 0; h < meta.num_kv_heads; ++h) {
        float scale = fp8 ? Fp8Scale(src + h * per_head, per_head) : 1.0f;
        if (fp8) {
          StoreLE32(scales + 4 * (kv * meta.num_kv_heads + h), std::bit_cast<uint32_t>(scale));
        }
        EncodeValues(meta.dtype, src + h * per_head, per_head, 1.0f / scale,
                     dst + h * per_head * esize);
      }
    }
    p += LayerBytes(meta);
  }
  Seal(meta, *out);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> EncodeBlockRaw(const BlockMeta& meta,
                                                    absl::Span<const uint8_t> data) {
  absl::StatusOr<std::vector<uint8_t>> out = AllocatePayload(meta);
  if (!out.ok()) return out.status();
  if (data.size() != DataBytes(meta)) {
    return absl::InvalidArgumentError(absl::StrCat("EncodeBlockRaw: got ", data.size(),
                                                   " data bytes; the shape needs ",
                                                   DataBytes(meta)));
  }
  std::memcpy(out->data() + kBlockHeaderBytes, data.data(), data.size());
  Seal(meta, *out);
  return out;
}

absl::StatusOr<BlockHeader> DecodeHeader(absl::Span<const uint8_t> bytes) {
  if (bytes.size() < kBlockHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("block payload of ", bytes.size(),
                                                   " bytes is shorter than its header (",
                                                   kBlockHeaderBytes, ")"));
  }
  const uint8_t* h = bytes.data();
  if (LoadLE32(h + kOffMagic) != kBlockMagic) {
    return absl::InvalidArgumentError("block payload has a bad magic number (not a kvblock block)");
  }
  if (uint16_t v = LoadLE16(h + kOffVersion); v != kBlockLayoutVersion) {
    return absl::InvalidArgumentError(absl::StrCat("block layout version ", v,
                                                   " is not supported (this build reads ",
                                                   kBlockLayoutVersion, ")"));
  }
  if (LoadLE16(h + kOffHeaderSize) != kBlockHeaderBytes) {
    return absl::InvalidArgumentError("block header size field is wrong");
  }
  if (XXH3_64bits(h, kOffHeaderChecksum) != LoadLE64(h + kOffHeaderChecksum)) {
    return absl::DataLossError("block header checksum mismatch");
  }
  if (!IsZero(h + kOffDtype + 1, 3) || !IsZero(h + kOffTokens + 4, 4) ||
      !IsZero(h + kOffDataChecksum + 8, 8)) {
    return absl::InvalidArgumentError("block header reserved bytes are not zero");
  }
  if (!IsValidDtype(h[kOffDtype])) {
    return absl::InvalidArgumentError(
        absl::StrCat("block header dtype ", static_cast<int>(h[kOffDtype]), " is unknown"));
  }
  BlockHeader out;
  out.meta.model = Hash128::FromBytes(h + kOffModel);
  out.meta.key = Hash128::FromBytes(h + kOffKey);
  out.meta.dtype = static_cast<KvDtype>(h[kOffDtype]);
  out.meta.num_layers = LoadLE32(h + kOffLayers);
  out.meta.num_kv_heads = LoadLE32(h + kOffKvHeads);
  out.meta.head_dim = LoadLE32(h + kOffHeadDim);
  out.meta.num_tokens = LoadLE32(h + kOffTokens);
  if (absl::Status s = ValidateMeta(out.meta); !s.ok()) return s;
  out.data_bytes = LoadLE64(h + kOffDataBytes);
  out.data_checksum = LoadLE64(h + kOffDataChecksum);
  if (out.data_bytes != DataBytes(out.meta)) {
    return absl::InvalidArgumentError(absl::StrCat("block header says ", out.data_bytes,
                                                   " data bytes; its shape needs ",
                                                   DataBytes(out.meta)));
  }
  return out;
}

absl::StatusOr<BlockView> BlockView::Parse(absl::Span<const uint8_t> bytes, DataCheck check) {
  absl::StatusOr<BlockHeader> header = DecodeHeader(bytes);
  if (!header.ok()) return header.status();
  if (bytes.size() - kBlockHeaderBytes != header->data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("block payload has ",
                                                   bytes.size() - kBlockHeaderBytes,
                                                   " data bytes; its header says ",
                                                   header->data_bytes));
  }
  absl::Span<const uint8_t> data = bytes.subspan(kBlockHeaderBytes);
  if (check == DataCheck::kVerify && XXH3_64bits(data.data(), data.size()) != header->data_checksum) {
    return absl::DataLossError("block data checksum mismatch");
  }
  return BlockView(header->meta, data);
}

absl::Span<const uint8_t> BlockView::Layer(uint32_t layer) const {
  const uint64_t n = LayerBytes(meta_);
  return data_.subspan(layer * n, n);
}

void BlockView::ReadLayerF32(uint32_t layer, float* k, float* v) const {
  absl::Span<const uint8_t> bytes = Layer(layer);
  const uint64_t per_layer = LayerElements(meta_);
  const uint64_t per_head = uint64_t{meta_.num_tokens} * meta_.head_dim;
  const size_t esize = DtypeSize(meta_.dtype);
  const uint8_t* kdata = bytes.data() + ScaleBytes(meta_);
  for (int kv = 0; kv < 2; ++kv) {
    const uint8_t* src = kdata + kv * per_layer * esize;
    float* dst = kv == 0 ? k : v;
    for (uint32_t h = 0; h < meta_.num_kv_heads; ++h) {
      float scale = 1.0f;
      if (meta_.dtype == KvDtype::kFP8E4M3) {
        scale = std::bit_cast<float>(LoadLE32(bytes.data() + 4 * (kv * meta_.num_kv_heads + h)));
      }
      DecodeValues(meta_.dtype, src + h * per_head * esize, per_head, scale, dst + h * per_head);
    }
  }
}

}  // namespace kvblock
