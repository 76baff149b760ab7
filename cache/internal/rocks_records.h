// How RocksTier lays blocks out inside RocksDB (internal to cache/; tests use it to plant and
// find records). One column family per model fingerprint, named kModelCfPrefix + hex. Each block
// is two records written in one atomic batch:
//   'm' + key (16 bytes, Hash128::ToBytes) -> the payload's 96-byte header (small, stays in the
//                                             SST: presence and size without touching the data)
//   'd' + key                              -> the whole payload (large: lands in a blob file)
#pragma once

#include <string>
#include <string_view>

#include "cache/block_key.h"

namespace kvblock::internal {

inline constexpr std::string_view kModelCfPrefix = "kvblock-model-";
inline constexpr char kMetaRecord = 'm';
inline constexpr char kDataRecord = 'd';
// The marker file naming the data dir's format, and the version this build writes and reads.
inline constexpr std::string_view kFormatMarkerFile = "KVBLOCK_FORMAT";
inline constexpr std::string_view kFormatMarkerName = "kvblock-rocks-tier";
inline constexpr int kRocksFormatVersion = 1;

inline std::string ModelCfName(const ModelFingerprint& model) {
  return std::string(kModelCfPrefix) + model.ToHex();
}

inline std::string RecordKey(char kind, const BlockKey& key) {
  std::string out(17, '\0');
  out[0] = kind;
  key.ToBytes(reinterpret_cast<uint8_t*>(out.data() + 1));
  return out;
}

}  // namespace kvblock::internal
