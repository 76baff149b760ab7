// KV element types stored in block payloads, and scalar conversions to and from f32.
// The conversions are the CPU reference that CUDA kernels are checked against: round to nearest
// even, NaN preserved, fp8-e4m3 saturating at ±448 (the OCP "FN" variant: no infinities).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace kvblock {

// Wire values are part of the block format: never renumber.
enum class KvDtype : uint8_t {
  kF32 = 1,
  kBF16 = 2,
  kF16 = 3,
  kFP8E4M3 = 4,  // one f32 scale per (layer, K|V, kv_head), stored in the payload
};

// Bytes per element; 0 for a value that is not a KvDtype.
size_t DtypeSize(KvDtype dtype);
bool IsValidDtype(uint8_t wire_value);
std::string_view DtypeName(KvDtype dtype);  // "f32", "bf16", "f16", "fp8-e4m3"
// Accepts the names above; INVALID_ARGUMENT otherwise.
absl::StatusOr<KvDtype> ParseDtype(std::string_view name);

uint16_t FloatToBf16(float f);
float Bf16ToFloat(uint16_t h);
uint16_t FloatToF16(float f);
float F16ToFloat(uint16_t h);
uint8_t FloatToFp8E4M3(float f);  // saturates; NaN stays NaN
float Fp8E4M3ToFloat(uint8_t b);
inline constexpr float kFp8E4M3Max = 448.0f;

}  // namespace kvblock
