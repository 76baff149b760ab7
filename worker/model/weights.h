// A model's weights as f32 arrays in Hugging Face's layout ([out][in] row-major linear weights),
// loaded from a Checkpoint. F32 tensors are used in place inside the file mapping (no copy);
// BF16/F16 tensors are converted once into owned f32 arrays. A missing tensor, a wrong shape or
// an unsupported dtype is an INVALID_ARGUMENT naming the tensor.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"

namespace kvblock {

// y = x W^T + b with W [out][in].
struct LinearWeights {
  const float* weight = nullptr;
  const float* bias = nullptr;  // nullptr when the layer has none
  int64_t out = 0;
  int64_t in = 0;
};

struct LayerWeights {
  const float* input_norm = nullptr;           // [hidden]
  const float* post_attention_norm = nullptr;  // [hidden]
  LinearWeights q, k, v, o;
  LinearWeights gate, up, down;
};

class ModelWeights {
 public:
  // Keeps `checkpoint` alive (F32 tensors point into its mapping). Thread-safe after Load:
  // everything is read-only.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(
      std::shared_ptr<const Checkpoint> checkpoint, const ModelConfig& config);

  const float* embed() const { return embed_; }  // [vocab][hidden]
  const float* final_norm() const { return final_norm_; }
  const LinearWeights& lm_head() const { return lm_head_; }  // the embedding when tied
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // Parameters counted once (a tied head is not counted twice).
  int64_t num_parameters() const { return num_parameters_; }
  // Bytes converted into owned f32 arrays (0 for an all-F32 checkpoint).
  int64_t converted_bytes() const { return converted_bytes_; }

 private:
  ModelWeights() = default;
  absl::StatusOr<const float*> Tensor(const std::string& name, std::vector<int64_t> shape);
  absl::StatusOr<LinearWeights> Linear(const std::string& prefix, int64_t out, int64_t in,
                                       bool bias);

  std::shared_ptr<const Checkpoint> checkpoint_;
  std::vector<std::unique_ptr<float[]>> owned_;
  const float* embed_ = nullptr;
  const float* final_norm_ = nullptr;
  LinearWeights lm_head_;
  std::vector<LayerWeights> layers_;
  int64_t num_parameters_ = 0;
  int64_t converted_bytes_ = 0;
};

}  // namespace kvblock
