// Chooses and creates a Backend by name ("cpu", "cuda") for the commands that open a model
// (`kvblock worker`, `kvblock generate`, the runtime), so each does not repeat the choice and a
// build without CUDA says so in one place.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/backend.h"
#include "worker/model/model.h"

namespace kvblock {

struct BackendOptions {
  // "cpu" (f32, OpenBLAS) or "cuda" (one GPU). Default: cpu.
  std::string name = "cpu";
  // Compute dtype: "f32" or "bf16" (cuda only); empty = the backend's own (cpu f32, cuda bf16).
  // Default: empty.
  std::string dtype;

  // INVALID_ARGUMENT for an unknown backend or a dtype the backend does not have.
  absl::Status Validate() const;
};

// The backends this build has, e.g. "cpu, cuda".
std::string AvailableBackends();

// INVALID_ARGUMENT for bad options; FAILED_PRECONDITION for "cuda" in a build without CUDA or on
// a machine without a GPU; the backend's own errors otherwise.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const LoadedModel& model,
                                                       const BackendOptions& options);

}  // namespace kvblock
