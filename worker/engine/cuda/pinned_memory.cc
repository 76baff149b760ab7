// PinnedHostAllocator and CreatePinnedBufferPool; see pinned_memory.h.
#include "worker/engine/cuda/pinned_memory.h"

#include <cuda_runtime_api.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/kernels.h"

namespace kvblock::cuda {

HostBufferAllocator PinnedHostAllocator() {
  return {
      .allocate = [](uint64_t bytes) -> absl::StatusOr<void*> {
        void* p = nullptr;
        const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
        if (err != cudaSuccess) {
          return absl::ResourceExhaustedError(
              CudaStatus(err, absl::StrCat("cudaHostAlloc of ", bytes, " bytes")).message());
        }
        return p;
      },
      .deallocate = [](void* p) { return CudaStatus(cudaFreeHost(p), "cudaFreeHost"); },
  };
}

absl::StatusOr<std::unique_ptr<HostBufferPool>> CreatePinnedBufferPool(
    const HostBufferPoolOptions& options) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pinned host buffers need a CUDA device: ",
        err != cudaSuccess ? std::string(cudaGetErrorString(err)) : std::string("none found")));
  }
  return HostBufferPool::Create(options, PinnedHostAllocator());
}

}  // namespace kvblock::cuda
