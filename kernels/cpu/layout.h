// Plain memory-layout descriptions that the kernels take instead of tensor objects: a pointer,
// dimensions and strides (in elements). The innermost dimension is always contiguous. Views do
// not own memory; the CUDA twins take the same structs with device pointers.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvblock::kernels {

// A [rows][cols] matrix; row r starts at data + r * row_stride.
template <typename T>
struct View2 {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;

  T* Row(int64_t r) const { return data + r * row_stride; }
  // A view of the same memory as const.
  operator View2<const T>() const { return {data, rows, cols, row_stride}; }
};

// A [d0][d1][d2] tensor; element (i, j, k) is at data + i * stride0 + j * stride1 + k.
template <typename T>
struct View3 {
  T* data = nullptr;
  int64_t d0 = 0;
  int64_t d1 = 0;
  int64_t d2 = 0;
  int64_t stride0 = 0;
  int64_t stride1 = 0;

  T* Row(int64_t i, int64_t j) const { return data + i * stride0 + j * stride1; }
  operator View3<const T>() const { return {data, d0, d1, d2, stride0, stride1}; }
};

template <typename T>
View2<T> Contiguous2(T* data, int64_t rows, int64_t cols) {
  return {data, rows, cols, cols};
}
template <typename T>
View3<T> Contiguous3(T* data, int64_t d0, int64_t d1, int64_t d2) {
  return {data, d0, d1, d2, d1 * d2, d2};
}

// INVALID_ARGUMENT naming `what` unless the view has a non-null pointer (when non-empty),
// non-negative dims and strides that keep rows from overlapping the contiguous inner dimension.
template <typename T>
absl::Status CheckView(const View2<T>& v, const char* what) {
  if (v.rows < 0 || v.cols < 0 || (v.rows > 1 && v.row_stride < v.cols) ||
      (v.data == nullptr && v.rows * v.cols > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": bad 2-d view [", v.rows, "][", v.cols,
                                                   "] row_stride ", v.row_stride));
  }
  return absl::OkStatus();
}
template <typename T>
absl::Status CheckView(const View3<T>& v, const char* what) {
  if (v.d0 < 0 || v.d1 < 0 || v.d2 < 0 || (v.d1 > 1 && v.stride1 < v.d2) ||
      (v.d0 > 1 && v.stride0 < 1) || (v.data == nullptr && v.d0 * v.d1 * v.d2 > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": bad 3-d view [", v.d0, "][", v.d1,
                                                   "][", v.d2, "] strides ", v.stride0, ",",
                                                   v.stride1));
  }
  return absl::OkStatus();
}

}  // namespace kvblock::kernels
