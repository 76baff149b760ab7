// Unicode helpers for the tokenizers: UTF-8 decoding and validation, the character classes that
// Hugging Face tokenizers takes from Rust's `char` (whitespace, numeric, punctuation), lowercase,
// normalization forms (through utf8proc) and Rust's lossy UTF-8 conversion.
// All functions are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvblock::tokenizer {

// Decodes the code point at `text[pos]` into `*cp` and returns its length in bytes (1-4), or 0
// where the bytes there are not well-formed UTF-8 (or `pos` is at the end).
size_t DecodeUtf8(std::string_view text, size_t pos, char32_t* cp);

// Length in bytes of the (well-formed) UTF-8 character starting at `text[pos]`; 1 for a stray byte.
size_t Utf8CharLength(std::string_view text, size_t pos);

// Whether `text` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool IsValidUtf8(std::string_view text);

// Appends the UTF-8 encoding of `cp` to `out`.
void AppendUtf8(char32_t cp, std::string* out);

// Rust's String::from_utf8_lossy: well-formed sequences are kept, each maximal ill-formed
// subpart becomes one U+FFFD.
std::string LossyUtf8(std::string_view bytes);

// Rust's char::is_whitespace (the Unicode White_Space property).
bool IsWhitespace(char32_t cp);
// Rust's char::is_numeric (general categories Nd, Nl, No).
bool IsNumeric(char32_t cp);
// Letters or numbers (Rust's char::is_alphanumeric, without Other_Alphabetic marks).
bool IsAlphanumeric(char32_t cp);
// ASCII punctuation or a Unicode punctuation category (Pc Pd Ps Pe Pi Pf Po), as the
// Punctuation and Bert pre-tokenizers define it.
bool IsPunctuation(char32_t cp);
// General category Mn (what StripAccents removes).
bool IsNonspacingMark(char32_t cp);

enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };
// Normalizes well-formed UTF-8 `text` to `form`.
std::string NormalizeUnicode(std::string_view text, NormalizationForm form);

// Rust's char::to_lowercase applied to each character (full mappings, no context rules).
std::string Lowercase(std::string_view text);

}  // namespace kvblock::tokenizer
