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
  // Stream-ordered: taken from `pool` in `stream`'s order (valid for work enqueued there after
  // this call, or ordered after it) and given back to the pool in `free_stream`'s order when the
  // object goes, so every use must be ordered before work enqueued on `free_stream` at that time.
  // No device-wide synchronization either way (cudaFree has one). RESOURCE_EXHAUSTED on failure.
  static absl::StatusOr<DeviceMemory> AllocateFromPool(size_t bytes, cudaMemPool_t pool, cudaStream_t stream,
                                                       cudaStream_t free_stream) {
    DeviceMemory m;
    if (bytes == 0) return m;
    const cudaError_t err = cudaMallocFromPoolAsync(&m.ptr_, bytes, pool, stream);
    if (err != cudaSuccess) {
      m.ptr_ = nullptr;
      return absl::ResourceExhaustedError(CudaStatus(err, "cudaMallocFromPoolAsync").message());
    }
    m.bytes_ = bytes;
    m.pooled_ = true;
    m.free_stream_ = free_stream;
    return m;
  }
  ~DeviceMemory() { Reset(); }
  DeviceMemory(DeviceMemory&& o) noexcept { *this = std::move(o); }
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      pooled_ = std::exchange(o.pooled_, false);
      free_stream_ = std::exchange(o.free_stream_, nullptr);
    }
    return *this;
  }
  void Reset() {
    if (ptr_ != nullptr) pooled_ ? cudaFreeAsync(ptr_, free_stream_) : cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    pooled_ = false;
    free_stream_ = nullptr;
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
  bool pooled_ = false;  // AllocateFromPool: freed with cudaFreeAsync on free_stream_
  cudaStream_t free_stream_ = nullptr;
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
