#include "cache/dtype.h"

#include <bit>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvblock {

size_t DtypeSize(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32: return 4;
    case KvDtype::kBF16: return 2;
    case KvDtype::kF16: return 2;
    case KvDtype::kFP8E4M3: return 1;
  }
  return 0;
}

bool IsValidDtype(uint8_t v) { return v >= 1 && v <= 4; }

std::string_view DtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32: return "f32";
    case KvDtype::kBF16: return "bf16";
    case KvDtype::kF16: return "f16";
    case KvDtype::kFP8E4M3: return "fp8-e4m3";
  }
  return "invalid";
}

absl::StatusOr<KvDtype> ParseDtype(std::string_view name) {
  for (KvDtype d : {KvDtype::kF32, KvDtype::kBF16, KvDtype::kF16, KvDtype::kFP8E4M3}) {
    if (name == DtypeName(d)) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KV dtype '", std::string(name), "' (expected f32, bf16, f16 or fp8-e4m3)"));
}

uint16_t FloatToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);  // keep it a quiet NaN
  uint32_t rounding = 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float Bf16ToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t FloatToF16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  uint32_t abs = u & 0x7FFFFFFF;
  if (abs > 0x7F800000) return sign | 0x7E00;              // NaN
  if (abs >= 0x477FF000) return sign | 0x7C00;             // rounds to >= 65520: inf
  if (abs < 0x38800000) {                                  // result is subnormal or zero
    // Scale so that the half subnormal unit (2^-24) becomes 1, then round to nearest even.
    float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // exact: power of two
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t mant_round = abs + 0xFFF + ((abs >> 13) & 1);   // round to nearest even at bit 13
  return sign | static_cast<uint16_t>((mant_round - 0x38000000) >> 13);
}

float F16ToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    float v = static_cast<float>(mant) / 16777216.0f;  // mant * 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000 | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

float Fp8E4M3ToFloat(uint8_t b) {
  uint32_t sign = b >> 7;
  uint32_t exp = (b >> 3) & 0xF;
  uint32_t mant = b & 0x7;
  float v;
  if (exp == 0xF && mant == 0x7) {
    v = std::nanf("");
  } else if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant/8 * 2^-6
  } else {
    v = std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, static_cast<int>(exp) - 7);
  }
  return sign ? -v : v;
}

uint8_t FloatToFp8E4M3(float f) {
  if (std::isnan(f)) return 0x7F;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= kFp8E4M3Max) return sign | 0x7E;  // saturate to 448
  if (a < std::ldexp(1.0f, -6)) {
    // Subnormal range: multiples of 2^-9.
    int q = static_cast<int>(std::nearbyint(a * 512.0f));  // 0..8; 8 is the smallest normal
    return sign | static_cast<uint8_t>(q);
  }
  int e;
  float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  // Normal: a = (1 + k/8) * 2^(e-1); round the 3-bit mantissa to nearest even.
  float frac = (m * 2.0f - 1.0f) * 8.0f;
  int k = static_cast<int>(std::nearbyint(frac));
  int exp = e - 1 + 7;
  if (k == 8) {
    k = 0;
    ++exp;
  }
  if (exp > 15 || (exp == 15 && k == 7)) return sign | 0x7E;
  return sign | static_cast<uint8_t>((exp << 3) | k);
}

}  // namespace kvblock
