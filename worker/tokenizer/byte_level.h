// GPT-2's byte-level alphabet (bytes_to_unicode): each byte maps to one printable character, so
// byte-level BPE vocabularies are made of ordinary strings. Used by the ByteLevel pre-tokenizer
// (bytes -> characters) and the ByteLevel decoder (characters -> bytes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kvblock::tokenizer {

// UTF-8 of the character that stands for `byte`.
const std::string& ByteLevelChar(uint8_t byte);
// Appends the byte-level characters of every byte of `text` to `out`.
void AppendByteLevel(std::string_view text, std::string* out);
// The byte a byte-level character stands for; -1 for any other character.
int ByteLevelByte(char32_t cp);

}  // namespace kvblock::tokenizer
