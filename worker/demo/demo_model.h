// kvblock demo's model: the block-fine-tuned checkpoint committed under models/kvblock-demo-qa/
// (training/ made it; its README.md is the model card), compiled into the binary so that the
// demo runs from the binary alone.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace kvblock {

// The embedded files.
std::string_view DemoModelConfigJson();
std::string_view DemoModelSafetensors();
// SHA-256 (hex) of the embedded model.safetensors.
std::string_view DemoModelSha256();

// Name of the embedded model (its folder under models/).
inline constexpr std::string_view kDemoModelName = "kvblock-demo-qa";

// Writes config.json and model.safetensors into `dir` (created if missing), each through a
// temporary file and rename, unless `dir` already holds exactly this config.json (then nothing
// is written, so the model's fingerprint record stays valid). INTERNAL for I/O errors.
absl::Status WriteDemoModel(const std::string& dir);

}  // namespace kvblock
