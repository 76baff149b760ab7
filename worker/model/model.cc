#include "worker/model/model.h"

namespace kvblock {

absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, const ModelLoadOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  LoadedModel m;
  m.dir = dir;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  m.config = std::move(*config);
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  m.checkpoint = std::move(*ckpt);
  if (options.load_weights) {
    absl::StatusOr<std::unique_ptr<ModelWeights>> weights =
        ModelWeights::Load(m.checkpoint, m.config);
    if (!weights.ok()) return weights.status();
    m.weights = std::move(*weights);
  }
  if (!options.model_id.empty()) {
    absl::StatusOr<ModelFingerprint> fp = FingerprintFromModelId(options.model_id);
    if (!fp.ok()) return fp.status();
    m.fingerprint = *fp;
  } else {
    absl::StatusOr<ModelFingerprint> fp = LoadOrComputeModelFingerprint(
        dir, *m.checkpoint, m.config, options.fingerprint, &m.fingerprint_computed);
    if (!fp.ok()) return fp.status();
    m.fingerprint = *fp;
  }
  return m;
}

}  // namespace kvblock
