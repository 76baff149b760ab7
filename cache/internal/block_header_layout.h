// Byte offsets of the block header fields (internal to cache/; the fuzzer uses them to reseal
// mutated payloads). Reserved bytes must be zero. Changing any of these is a layout version bump.
#pragma once

#include <cstddef>

namespace kvblock::internal::header_layout {

constexpr size_t kOffMagic = 0;         // u32
constexpr size_t kOffVersion = 4;       // u16
constexpr size_t kOffHeaderSize = 6;    // u16
constexpr size_t kOffModel = 8;         // 16 bytes
constexpr size_t kOffKey = 24;          // 16 bytes
constexpr size_t kOffDtype = 40;        // u8, then u8 + u16 reserved
constexpr size_t kOffLayers = 44;       // u32
constexpr size_t kOffKvHeads = 48;      // u32
constexpr size_t kOffHeadDim = 52;      // u32
constexpr size_t kOffTokens = 56;       // u32, then u32 reserved
constexpr size_t kOffDataBytes = 64;    // u64
constexpr size_t kOffDataChecksum = 72; // u64, then u64 reserved
constexpr size_t kOffHeaderChecksum = 88;

}  // namespace kvblock::internal::header_layout
