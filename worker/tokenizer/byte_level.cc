#include "worker/tokenizer/byte_level.h"

#include <array>

#include "worker/tokenizer/unicode.h"

namespace kvblock::tokenizer {

namespace {

struct Tables {
  std::array<std::string, 256> chars;
  std::array<char32_t, 256> code_points;
  Tables() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      code_points[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      AppendUtf8(code_points[b], &chars[b]);
    }
  }
};

const Tables& GetTables() {
  static const Tables* tables = new Tables();
  return *tables;
}

}  // namespace

const std::string& ByteLevelChar(uint8_t byte) { return GetTables().chars[byte]; }

void AppendByteLevel(std::string_view text, std::string* out) {
  const Tables& t = GetTables();
  for (char c : text) out->append(t.chars[static_cast<uint8_t>(c)]);
}

int ByteLevelByte(char32_t cp) {
  // The inverse of the table: printable bytes map to themselves, the others to 256 + k in order.
  static const std::array<int, 324> inverse = [] {
    std::array<int, 324> inv;
    inv.fill(-1);
    const Tables& t = GetTables();
    for (int b = 0; b < 256; ++b) inv[t.code_points[b]] = b;
    return inv;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

}  // namespace kvblock::tokenizer
