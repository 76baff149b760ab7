#include "cache/block_key.h"

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/internal/little_endian.h"
#include "xxhash.h"

namespace kvblock {

std::string Hash128::ToHex() const { return absl::StrFormat("%016x%016x", hi, lo); }

absl::StatusOr<Hash128> Hash128::FromHex(std::string_view hex) {
  if (hex.size() != 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("a 128-bit hash is 32 hex digits, got ", hex.size(), " characters"));
  }
  Hash128 h;
  for (size_t i = 0; i < 32; ++i) {
    char c = hex[i];
    uint64_t d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("not a hex digit in hash: '", std::string(hex), "'"));
    }
    uint64_t& half = i < 16 ? h.hi : h.lo;
    half = (half << 4) | d;
  }
  return h;
}

void Hash128::ToBytes(uint8_t out[16]) const {
  internal::StoreLE64(out, lo);
  internal::StoreLE64(out + 8, hi);
}

Hash128 Hash128::FromBytes(const uint8_t in[16]) {
  return Hash128{internal::LoadLE64(in + 8), internal::LoadLE64(in)};
}

Hash128 HashBytes128(const void* data, size_t size) {
  XXH128_hash_t h = XXH3_128bits(data, size);
  return Hash128{h.high64, h.low64};
}

BlockKey ComputeBlockKey(const ModelFingerprint& model, KvDtype dtype,
                         absl::Span<const int32_t> token_ids) {
  // Canonical little-endian byte string, so the key is the same on any host.
  std::vector<uint8_t> buf(16 + 2 + 1 + 8 + 4 * token_ids.size());
  uint8_t* p = buf.data();
  model.ToBytes(p);
  p += 16;
  internal::StoreLE16(p, kBlockLayoutVersion);
  p += 2;
  *p++ = static_cast<uint8_t>(dtype);
  internal::StoreLE64(p, token_ids.size());
  p += 8;
  for (int32_t t : token_ids) {
    internal::StoreLE32(p, static_cast<uint32_t>(t));
    p += 4;
  }
  return HashBytes128(buf.data(), buf.size());
}

}  // namespace kvblock
