// Reading Hugging Face safetensors checkpoints by memory-mapping them: a file is an 8-byte
// little-endian header length, a JSON header (tensor name -> dtype, shape, data_offsets) and
// the raw tensor bytes. Tensors are views into the mapping (no copy). Parsing is strict and
// never trusts the file: any malformed header, out-of-range or overlapping tensor is an
// INVALID_ARGUMENT naming the file and the tensor, never a crash. A Checkpoint is a model
// directory: model.safetensors, or shards listed in model.safetensors.index.json.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvblock {

// Element types a safetensors header may name. Only kF32, kBF16 and kF16 can be loaded as
// weights; the others are parsed so that offsets can be verified.
enum class TensorDtype : uint8_t {
  kF32, kBF16, kF16, kF64, kI64, kI32, kI16, kI8, kU8, kU64, kU32, kU16, kBool, kF8E4M3, kF8E5M2
};
std::string_view TensorDtypeName(TensorDtype dtype);  // the header's spelling: "F32", ...
size_t TensorDtypeSize(TensorDtype dtype);

struct TensorInfo {
  std::string name;
  TensorDtype dtype = TensorDtype::kF32;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> bytes;  // inside the file's mapping; valid while the file is open

  int64_t NumElements() const;
};

// Header limits; a larger header is treated as malformed (safetensors itself caps it at 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

class SafetensorsFile {
 public:
  // Maps `path` read-only and parses its header. NOT_FOUND if it does not exist,
  // INVALID_ARGUMENT (naming the file) if it is malformed. The result is immutable and
  // thread-safe; tensor views stay valid until it is destroyed.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses bytes the caller keeps alive (tests, fuzzing). `name` is used in messages.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBuffer(
      absl::Span<const uint8_t> bytes, std::string name);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // nullptr if the file holds no tensor of that name.
  const TensorInfo* Find(std::string_view name) const;
  // Every tensor, sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }
  uint64_t file_bytes() const { return bytes_.size(); }

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  std::string path_;
  absl::Span<const uint8_t> bytes_;
  void* mapping_ = nullptr;  // non-null when this object owns an mmap of bytes_
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;
};

// Writes a safetensors file (tests, benchmarks, --dump-logits): tensors in the given order,
// header padded to 8 bytes. Written to `path`.tmp and renamed, so readers never see a partial
// file. INVALID_ARGUMENT if a tensor's byte count does not match its dtype and shape.
struct TensorToWrite {
  std::string name;
  TensorDtype dtype = TensorDtype::kF32;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> bytes;
};
absl::Status WriteSafetensors(const std::string& path, absl::Span<const TensorToWrite> tensors);

// A Hugging Face model directory's weights: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` (its weight_map decides which shard holds which tensor).
// Immutable and thread-safe after Open.
class Checkpoint {
 public:
  // NOT_FOUND if the directory has neither file; INVALID_ARGUMENT for a malformed index, a
  // shard that is missing or does not hold a tensor the index assigns to it.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  // nullptr if no shard holds `name`.
  const TensorInfo* Find(std::string_view name) const;
  // Every tensor of the checkpoint, sorted by name.
  std::vector<const TensorInfo*> AllTensors() const;
  // The files, in name order.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, const TensorInfo*> tensors_;
};

}  // namespace kvblock
