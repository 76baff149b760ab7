// CreateBackend; see backend_factory.h.
#include "worker/engine/backend_factory.h"

#include "absl/strings/str_cat.h"
#include "worker/engine/cpu_backend.h"
#ifdef KVBLOCK_WITH_CUDA
#include "worker/engine/cuda/cuda_backend.h"
#endif

namespace kvblock {

absl::Status BackendOptions::Validate() const {
  if (name == "cpu") {
    if (!dtype.empty() && dtype != "f32") {
      return absl::InvalidArgumentError(absl::StrCat("the cpu backend computes in f32 only, not ", dtype));
    }
    return absl::OkStatus();
  }
  if (name == "cuda") {
    if (!dtype.empty() && dtype != "f32" && dtype != "bf16") {
      return absl::InvalidArgumentError(absl::StrCat("the cuda backend computes in f32 or bf16, not ", dtype));
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", name, "' (available: ", AvailableBackends(), ")"));
}

std::string AvailableBackends() {
#ifdef KVBLOCK_WITH_CUDA
  return "cpu, cuda";
#else
  return "cpu";
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const LoadedModel& model,
                                                       const BackendOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (options.name == "cpu") return CreateCpuBackend(model.weights, model.config);
#ifdef KVBLOCK_WITH_CUDA
  CudaBackendOptions co;
  co.dtype = options.dtype == "f32" ? KvDtype::kF32 : KvDtype::kBF16;
  absl::StatusOr<std::unique_ptr<CudaBackend>> b = CreateCudaBackend(*model.weights, model.config, co);
  if (!b.ok()) return b.status();
  return std::unique_ptr<Backend>(std::move(*b));
#else
  return absl::FailedPreconditionError(
      "the cuda backend is unavailable: this kvblock was built without CUDA (KVBLOCK_WITH_CUDA=OFF)");
#endif
}

}  // namespace kvblock
