// RAII owners of CUDA allocations (device and pinned host) for the CUDA engine. Move-only.
// Thread safety: an object is used by one thread at a time; distinct objects are independent.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "absl/status/statusor.h"
#include "kernels/cuda/kernels.h"

namespace kvblock::cuda {

class DeviceMemory {
 public:
  DeviceMemory() = default;
  // RESOURCE_EXHAUSTED when cudaMalloc fails (the CUDA error is in the message).
  static absl::StatusOr<DeviceMemory> Allocate(size_t bytes) {
    DeviceMemory m;
    if (bytes == 0) return m;
    const cudaError_t err = cudaMalloc(&m.ptr_, bytes);
    if (err != cudaSuccess) {
      m.ptr_ = nullptr;
      return absl::ResourceExhaustedError(CudaStatus(err, "cudaMalloc").message());
    }
    m.bytes_ = bytes;
    return m;
  }
  ~DeviceMemory() { Reset(); }
  DeviceMemory(DeviceMemory&& o) noexcept { *this = std::move(o); }
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaMallocHost): the source/target of truly asynchronous copies.
class PinnedMemory {
 public:
  PinnedMemory() = default;
  static absl::StatusOr<PinnedMemory> Allocate(size_t bytes) {
    PinnedMemory m;
    if (bytes == 0) return m;
    const cudaError_t err = cudaMallocHost(&m.ptr_, bytes);
    if (err != cudaSuccess) {
      m.ptr_ = nullptr;
      return absl::ResourceExhaustedError(CudaStatus(err, "cudaMallocHost").message());
    }
    m.bytes_ = bytes;
    return m;
  }
  ~PinnedMemory() { Reset(); }
  PinnedMemory(PinnedMemory&& o) noexcept { *this = std::move(o); }
  PinnedMemory& operator=(PinnedMemory&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  void Reset() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace kvblock::cuda
