#include "kernels/cpu/attention.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace kvblock::kernels {
namespace {

absl::Status CheckShapes(View3<const float> q, View3<const float> k, View3<const float> v,
                         int64_t num_cached, View3<float> out, absl::Span<float> workspace) {
  for (auto [view, name] : {std::pair{q, "q"}, std::pair{k, "k"}, std::pair{v, "v"}}) {
    if (absl::Status s = CheckView(view, name); !s.ok()) return s;
  }
  if (absl::Status s = CheckView(out, "attention output"); !s.ok()) return s;
  const int64_t n = q.d0;
  if (k.d0 <= 0 || q.d1 % k.d0 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention: ", q.d1,
                                                   " query heads are not a multiple of ", k.d0,
                                                   " kv heads"));
  }
  if (v.d0 != k.d0 || v.d1 != k.d1 || v.d2 != k.d2 || k.d2 != q.d2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention: k [", k.d0, "][", k.d1, "][", k.d2, "], v [", v.d0, "][", v.d1, "][", v.d2,
        "] and q head_dim ", q.d2, " disagree"));
  }
  if (num_cached < 0 || k.d1 != num_cached + n) {
    return absl::InvalidArgumentError(absl::StrCat("attention: kv holds ", k.d1,
                                                   " tokens, expected ", num_cached, " cached + ",
                                                   n, " new"));
  }
  if (out.d0 != n || out.d1 != q.d1 || out.d2 != q.d2) {
    return absl::InvalidArgumentError("attention: output shape != query shape");
  }
  if (static_cast<int64_t>(workspace.size()) < AttentionWorkspaceFloats(k.d1)) {
    return absl::InvalidArgumentError(absl::StrCat("attention: workspace of ", workspace.size(),
                                                   " floats, need ", k.d1));
  }
  return absl::OkStatus();
}

// One query row against KV tokens [0, visible) of one KV head.
void AttendOne(const float* qrow, View3<const float> k, View3<const float> v, int64_t kvh,
               int64_t visible, float scale, float* scores, float* orow) {
  const int64_t d = k.d2;
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < visible; ++j) {
    const float* krow = k.Row(kvh, j);
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < d; ++i) dot += qrow[i] * krow[i];
    scores[j] = dot * scale;
    max_score = std::max(max_score, scores[j]);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < visible; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < d; ++i) orow[i] = 0.0f;
  for (int64_t j = 0; j < visible; ++j) {
    const float p = scores[j] * inv;
    const float* vrow = v.Row(kvh, j);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) orow[i] += p * vrow[i];
  }
}

absl::Status Attend(View3<const float> q, View3<const float> k, View3<const float> v,
                    int64_t num_cached, float scale, View3<float> out,
                    absl::Span<float> workspace) {
  if (absl::Status s = CheckShapes(q, k, v, num_cached, out, workspace); !s.ok()) return s;
  const int64_t group = q.d1 / k.d0;
  for (int64_t t = 0; t < q.d0; ++t) {
    for (int64_t h = 0; h < q.d1; ++h) {
      AttendOne(q.Row(t, h), k, v, h / group, num_cached + t + 1, scale, workspace.data(),
                out.Row(t, h));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status BlockAttention(View3<const float> q, View3<const float> k, View3<const float> v,
                            int64_t num_cached, float scale, View3<float> out,
                            absl::Span<float> workspace) {
  return Attend(q, k, v, num_cached, scale, out, workspace);
}

absl::Status CausalPrefillAttention(View3<const float> q, View3<const float> k,
                                    View3<const float> v, float scale, View3<float> out,
                                    absl::Span<float> workspace) {
  return Attend(q, k, v, /*num_cached=*/0, scale, out, workspace);
}

absl::Status DecodeAttention(View3<const float> q, View3<const float> k, View3<const float> v,
                             float scale, View3<float> out, absl::Span<float> workspace) {
  if (q.d0 != 1) {
    return absl::InvalidArgumentError(absl::StrCat("decode attention: one query token, got ", q.d0));
  }
  return Attend(q, k, v, /*num_cached=*/k.d1 - 1, scale, out, workspace);
}

}  // namespace kvblock::kernels
