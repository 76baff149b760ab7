// Block identity: a 128-bit key over (model fingerprint, layout version, KV dtype, token ids).
// The same passage has the same key in any prompt and at any position; nothing about its
// neighbours enters the key. The key function is frozen: tests pin golden values, and changing
// it would orphan every stored block (bump kBlockLayoutVersion instead).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/dtype.h"

namespace kvblock {

// A 128-bit hash value: block keys and model fingerprints. Printed as 32 lowercase hex digits,
// high half first.
struct Hash128 {
  uint64_t hi = 0;
  uint64_t lo = 0;

  std::string ToHex() const;
  static absl::StatusOr<Hash128> FromHex(std::string_view hex);
  // 16 bytes, little-endian lo then hi (the on-disk and wire form).
  void ToBytes(uint8_t out[16]) const;
  static Hash128 FromBytes(const uint8_t in[16]);

  friend bool operator==(const Hash128&, const Hash128&) = default;
  friend auto operator<=>(const Hash128&, const Hash128&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Hash128& v) {
    return H::combine(std::move(h), v.hi, v.lo);
  }
};

using BlockKey = Hash128;
using ModelFingerprint = Hash128;

// Version of the KV layout (RoPE convention, payload layout). Part of every key and header.
inline constexpr uint16_t kBlockLayoutVersion = 1;

BlockKey ComputeBlockKey(const ModelFingerprint& model, KvDtype dtype,
                         absl::Span<const int32_t> token_ids);

// XXH3-128 of arbitrary bytes (used for model fingerprints).
Hash128 HashBytes128(const void* data, size_t size);

}  // namespace kvblock
