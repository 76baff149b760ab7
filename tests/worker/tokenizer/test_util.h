// Helpers shared by the tokenizer tests: random text from a varied pool of characters.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "worker/tokenizer/unicode.h"

namespace kvblock::testing_util {

// A random string of `chars` characters drawn from ASCII, Latin-1/Latin Extended, Greek,
// Cyrillic, CJK, Hangul, emoji, combining marks, digits and whitespace (spaces, tabs, CR, LF,
// NBSP, U+3000), so that every pre-tokenizer branch is exercised.
inline std::string RandomText(std::mt19937_64& rng, size_t chars) {
  static const char32_t kRanges[][2] = {
      {0x20, 0x7E}, {0x20, 0x7E}, {0x20, 0x7E}, {'a', 'z'},     {'0', '9'},     {0xA0, 0x17F},
      {0x391, 0x3C9}, {0x410, 0x44F}, {0x4E00, 0x4FFF}, {0xAC00, 0xAC80}, {0x1F600, 0x1F64F},
      {0x300, 0x36F}, {0x3000, 0x3000}, {'\t', '\n'}, {'\r', '\r'}, {' ', ' '}, {0x1F1E6, 0x1F1FF}};
  std::uniform_int_distribution<size_t> pick(0, std::size(kRanges) - 1);
  std::string out;
  for (size_t i = 0; i < chars; ++i) {
    const auto& r = kRanges[pick(rng)];
    std::uniform_int_distribution<uint32_t> cp(r[0], r[1]);
    tokenizer::AppendUtf8(static_cast<char32_t>(cp(rng)), &out);
  }
  return out;
}

// A seed that differs per run; tests print it so that a failure can be replayed.
inline uint64_t FreshSeed() { return (static_cast<uint64_t>(std::random_device()()) << 32) ^ std::random_device()(); }

}  // namespace kvblock::testing_util
