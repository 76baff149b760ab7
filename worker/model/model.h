// LoadModel: everything the engine needs from a Hugging Face model directory in one step
// (config, mapped checkpoint, f32 weights, fingerprint).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cache/block_key.h"
#include "worker/model/config.h"
#include "worker/model/fingerprint.h"
#include "worker/model/safetensors.h"
#include "worker/model/weights.h"

namespace kvblock {

struct ModelLoadOptions {
  // Explicit model id replacing the weight hash (see FingerprintFromModelId). Default: empty.
  std::string model_id;
  // Where fingerprints of read-only checkpoints are kept, and whether to recompute.
  FingerprintOptions fingerprint;
  // Convert the weights to f32 (LoadedModel::weights). False maps the checkpoint only, for what
  // needs the config and fingerprint but computes nothing (an indexer encoding on a remote
  // worker). Default: true.
  bool load_weights = true;

  absl::Status Validate() const { return fingerprint.Validate(); }
};

struct LoadedModel {
  std::string dir;
  ModelConfig config;
  std::shared_ptr<const Checkpoint> checkpoint;
  std::shared_ptr<const ModelWeights> weights;  // null unless ModelLoadOptions::load_weights
  ModelFingerprint fingerprint;
  bool fingerprint_computed = false;  // hashed during this load (no current record)
};

// NOT_FOUND for a missing directory / config.json / weights; INVALID_ARGUMENT or UNIMPLEMENTED
// (naming the file, key or tensor) for anything malformed or unsupported.
absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, const ModelLoadOptions& options = {});

}  // namespace kvblock
