// The uniform draw used by sampling, shared by the CUDA kernel and its CPU twin so both pick the
// same token for the same (seed, step, row).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KVBLOCK_HD __host__ __device__
#else
#define KVBLOCK_HD
#endif

namespace kvblock::cuda {

KVBLOCK_HD inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) with 24 random bits (exact in f32).
KVBLOCK_HD inline float UniformDraw(uint64_t seed, uint64_t step, uint64_t row) {
  uint64_t h = SplitMix64(seed ^ SplitMix64(step ^ SplitMix64(row)));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

}  // namespace kvblock::cuda
