#include "kernels/cpu/rope.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"

namespace kvblock::kernels {

absl::Status RopeParams::Validate() const {
  if (!(theta > 0.0) || !std::isfinite(theta)) {
    return absl::InvalidArgumentError(absl::StrCat("rope: theta must be > 0, got ", theta));
  }
  if (type != RopeType::kDefault && (!(factor > 0.0) || !std::isfinite(factor))) {
    return absl::InvalidArgumentError(absl::StrCat("rope: factor must be > 0, got ", factor));
  }
  if (type == RopeType::kLlama3) {
    if (!(low_freq_factor > 0.0) || !(high_freq_factor > low_freq_factor)) {
      return absl::InvalidArgumentError(
          absl::StrCat("rope llama3: need 0 < low_freq_factor < high_freq_factor, got ",
                       low_freq_factor, " and ", high_freq_factor));
    }
    if (original_max_position_embeddings <= 0) {
      return absl::InvalidArgumentError("rope llama3: original_max_position_embeddings must be > 0");
    }
  }
  if (type == RopeType::kDynamic && max_position_embeddings <= 0) {
    return absl::InvalidArgumentError("rope dynamic: max_position_embeddings must be > 0");
  }
  return absl::OkStatus();
}

absl::Status ComputeRopeInvFreq(const RopeParams& params, int head_dim, int64_t seq_len,
                                absl::Span<float> inv_freq) {
  if (absl::Status s = params.Validate(); !s.ok()) return s;
  if (head_dim <= 0 || head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("rope: head_dim must be even and > 0, got ",
                                                   head_dim));
  }
  const int half = head_dim / 2;
  if (static_cast<int64_t>(inv_freq.size()) != half) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope: inv_freq holds ", inv_freq.size(), " values, need ", half));
  }
  double base = params.theta;
  if (params.type == RopeType::kDynamic) {
    const double max_pos = static_cast<double>(params.max_position_embeddings);
    const double len = std::max(static_cast<double>(seq_len), max_pos);
    base *= std::pow(params.factor * len / max_pos - (params.factor - 1.0),
                     static_cast<double>(head_dim) / (head_dim - 2));
  }
  // Single precision throughout, in the order transformers evaluates it, so the tables agree
  // with the reference to the last bit or two.
  const float kTwoPi = static_cast<float>(2.0 * std::numbers::pi);
  const float base_f = static_cast<float>(base);
  const float factor = static_cast<float>(params.factor);
  for (int i = 0; i < half; ++i) {
    float f = 1.0f / std::pow(base_f, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    switch (params.type) {
      case RopeType::kDefault:
      case RopeType::kDynamic:
        break;
      case RopeType::kLinear:
        f /= factor;
        break;
      case RopeType::kLlama3: {
        const float old_len = static_cast<float>(params.original_max_position_embeddings);
        const float low = static_cast<float>(params.low_freq_factor);
        const float high = static_cast<float>(params.high_freq_factor);
        const float low_wavelen = old_len / low;
        const float high_wavelen = old_len / high;
        const float wavelen = kTwoPi / f;
        if (wavelen > low_wavelen) {
          f /= factor;  // long wavelengths: fully interpolated
        } else if (wavelen >= high_wavelen) {  // medium band: smooth blend
          const float smooth = (old_len / wavelen - low) / (high - low);
          f = (1.0f - smooth) * f / factor + smooth * f;
        }
        break;
      }
    }
    inv_freq[i] = f;
  }
  return absl::OkStatus();
}

absl::Status BuildRopeTable(absl::Span<const float> inv_freq, absl::Span<const int64_t> positions,
                            absl::Span<float> cos, absl::Span<float> sin) {
  const size_t half = inv_freq.size();
  if (cos.size() != positions.size() * half || sin.size() != cos.size()) {
    return absl::InvalidArgumentError(absl::StrCat("rope table: need ", positions.size() * half,
                                                   " floats, got cos ", cos.size(), " sin ",
                                                   sin.size()));
  }
  for (size_t t = 0; t < positions.size(); ++t) {
    if (positions[t] < 0) return absl::InvalidArgumentError("rope table: negative position");
    const float p = static_cast<float>(positions[t]);
    for (size_t i = 0; i < half; ++i) {
      const float angle = p * inv_freq[i];  // f32 product, as transformers computes it
      cos[t * half + i] = std::cos(angle);
      sin[t * half + i] = std::sin(angle);
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyRope(View3<float> x, absl::Span<const float> cos, absl::Span<const float> sin) {
  if (absl::Status s = CheckView(x, "rope input"); !s.ok()) return s;
  if (x.d2 % 2 != 0) return absl::InvalidArgumentError("rope: odd head_dim");
  const int64_t half = x.d2 / 2;
  if (static_cast<int64_t>(cos.size()) != x.d0 * half ||
      static_cast<int64_t>(sin.size()) != x.d0 * half) {
    return absl::InvalidArgumentError(absl::StrCat("rope: table holds ", cos.size(),
                                                   " values, need ", x.d0 * half));
  }
  for (int64_t t = 0; t < x.d0; ++t) {
    const float* c = cos.data() + t * half;
    const float* s = sin.data() + t * half;
    for (int64_t h = 0; h < x.d1; ++h) {
      float* v = x.Row(t, h);
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i];
        const float b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ReencodeK(View3<float> k, int64_t offset, absl::Span<const float> inv_freq) {
  if (absl::Status s = CheckView(k, "re-encode K"); !s.ok()) return s;
  if (offset < 0) return absl::InvalidArgumentError("re-encode: negative offset");
  if (k.d2 != 2 * static_cast<int64_t>(inv_freq.size())) {
    return absl::InvalidArgumentError(absl::StrCat("re-encode: head_dim ", k.d2, " but ",
                                                   inv_freq.size(), " frequencies"));
  }
  if (offset == 0) return absl::OkStatus();
  const int64_t half = k.d2 / 2;
  // One rotation per frequency, shared by every row: computed once, in double.
  constexpr int64_t kChunk = 256;
  float c[kChunk];
  float s[kChunk];
  for (int64_t i0 = 0; i0 < half; i0 += kChunk) {
    const int64_t n = std::min(kChunk, half - i0);
    for (int64_t i = 0; i < n; ++i) {
      const double angle = static_cast<double>(offset) * static_cast<double>(inv_freq[i0 + i]);
      c[i] = static_cast<float>(std::cos(angle));
      s[i] = static_cast<float>(std::sin(angle));
    }
    for (int64_t h = 0; h < k.d0; ++h) {
      for (int64_t t = 0; t < k.d1; ++t) {
        float* v = k.Row(h, t) + i0;
        for (int64_t i = 0; i < n; ++i) {
          const float a = v[i];
          const float b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvblock::kernels
