// Random inputs for the kernel tests (never zeros: a kernel that ignores its input must fail).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace kvblock::kernels::testing {

inline std::vector<float> RandomVector(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

}  // namespace kvblock::kernels::testing
