// Helpers of the GPU kernel tests: device buffers, random bf16-representable data, relative error
// with NaN failing, and the exit-77 skip when no GPU is present.
#pragma once

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cache/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cuda/layouts.h"

namespace kvblock::cuda::testing {

#define CUDA_OK(expr)                                                              \
  do {                                                                             \
    cudaError_t e_ = (expr);                                                       \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(e_);         \
  } while (0)

// Owns a cudaMalloc allocation, poisoned with 0xFF bytes (NaN in f32 and bf16) so an element a
// kernel failed to write shows up as NaN in the comparison.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
    if (cudaMalloc(&ptr_, bytes) != cudaSuccess) {
      ptr_ = nullptr;
      return;
    }
    cudaMemset(ptr_, 0xFF, bytes);
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
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

inline std::mt19937_64& Rng() {
  static std::mt19937_64 rng = [] {
    const uint64_t seed = std::random_device{}();
    std::printf("random seed %llu\n", static_cast<unsigned long long>(seed));
    return std::mt19937_64(seed);
  }();
  return rng;
}

// Fresh uniform values in [-scale, scale), rounded to bf16 when `dtype` is bf16 so the CPU twin
// sees exactly what the GPU reads.
inline std::vector<float> RandomValues(size_t n, DType dtype, float scale = 1.f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) {
    x = dist(Rng());
    if (dtype == DType::kBF16) x = Bf16ToFloat(FloatToBf16(x));
  }
  return v;
}

// Copies host floats to a new device buffer in `dtype`.
inline DeviceBuffer Upload(const std::vector<float>& host, DType dtype) {
  DeviceBuffer buf(host.size() * DTypeBytes(dtype));
  if (dtype == DType::kF32) {
    cudaMemcpy(buf.get(), host.data(), host.size() * 4, cudaMemcpyHostToDevice);
  } else {
    std::vector<uint16_t> bits(host.size());
    for (size_t i = 0; i < host.size(); ++i) bits[i] = FloatToBf16(host[i]);
    cudaMemcpy(buf.get(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice);
  }
  return buf;
}

inline std::vector<float> Download(const void* dev, size_t n, DType dtype) {
  std::vector<float> out(n);
  if (dtype == DType::kF32) {
    cudaMemcpy(out.data(), dev, n * 4, cudaMemcpyDeviceToHost);
  } else {
    std::vector<uint16_t> bits(n);
    cudaMemcpy(bits.data(), dev, n * 2, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; ++i) out[i] = Bf16ToFloat(bits[i]);
  }
  return out;
}

template <typename T>
DeviceBuffer UploadRaw(const std::vector<T>& host) {
  DeviceBuffer buf(host.size() * sizeof(T));
  cudaMemcpy(buf.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return buf;
}

// ||out - ref|| / ||ref||; NaN if any element of out is NaN (so `<= tol` fails).
inline double RelErr(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return NAN;
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (std::isnan(out[i])) return NAN;
    const double d = double{out[i]} - ref[i];
    num += d * d;
    den += double{ref[i]} * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : NAN;
}

inline double Tolerance(DType dtype) { return dtype == DType::kF32 ? 2e-5 : 1e-2; }
inline const char* Name(DType dtype) { return dtype == DType::kF32 ? "f32" : "bf16"; }

}  // namespace kvblock::cuda::testing
