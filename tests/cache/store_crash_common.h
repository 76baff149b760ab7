// The blocks store_crash_writer writes and store_crash_test checks: deterministic in their index,
// 512 B to ~512 KiB (inline records and blob files both).
#pragma once

#include "tests/cache/store_test_util.h"

namespace kvblock::testing {

inline TestBlock CrashBlock(uint64_t i) {
  static const ModelFingerprint kModels[2] = {RandomModel(101), RandomModel(102)};
  const uint32_t tokens = i % 5 == 0 ? 2 : static_cast<uint32_t>(16 + (i * 7919) % 2000);
  return MakeBlock(kModels[i % 2], i, tokens);
}

}  // namespace kvblock::testing
