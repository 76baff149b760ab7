// The model fingerprint (DESIGN.md "Block identity"): a 128-bit hash over the architecture and
// every weight byte, so two fine-tunes of one base never share cached KV. Hashing a large
// checkpoint takes a while, so the result is kept beside the checkpoint in
// `kvblock-fingerprint.json` together with the size and modification time of every file it
// covers; a stale record is recomputed. When the model directory is read-only the record goes
// to a per-user cache directory instead. An explicit model id (`--model-id`) replaces all this.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "cache/block_key.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"

namespace kvblock {

inline constexpr char kFingerprintFileName[] = "kvblock-fingerprint.json";

struct FingerprintOptions {
  // Where records of read-only checkpoints go, one file per model directory. Default: empty =
  // DefaultFingerprintCacheDir().
  std::string fallback_dir;
  // Ignore (and overwrite) any stored record. Default: false.
  bool recompute = false;

  absl::Status Validate() const { return absl::OkStatus(); }
};

// $XDG_CACHE_HOME/kvblock/fingerprints, else $HOME/.cache/kvblock/fingerprints, else
// /tmp/kvblock-fingerprints.
std::string DefaultFingerprintCacheDir();

// Hashes the architecture fields of `config` and, in name order, every tensor's name, dtype,
// shape and bytes. Pure function of its inputs; thread-safe.
ModelFingerprint ComputeModelFingerprint(const Checkpoint& checkpoint, const ModelConfig& config);

// The stored fingerprint of the checkpoint in `model_dir` if its record is current, else
// computes and stores it (beside the checkpoint, or in the fallback directory when that fails).
// `computed` (optional) says whether it was computed now. A record that cannot be written
// anywhere is not an error (the fingerprint is still returned).
absl::StatusOr<ModelFingerprint> LoadOrComputeModelFingerprint(const std::string& model_dir,
                                                               const Checkpoint& checkpoint,
                                                               const ModelConfig& config,
                                                               const FingerprintOptions& options,
                                                               bool* computed = nullptr);

// The fingerprint for an explicit model id: 32 hex digits are taken as the fingerprint itself,
// anything else is hashed. INVALID_ARGUMENT for an empty id.
absl::StatusOr<ModelFingerprint> FingerprintFromModelId(std::string_view model_id);

}  // namespace kvblock
