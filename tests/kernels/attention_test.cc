#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "tests/kernels/test_util.h"

namespace kvblock::kernels {
namespace {

using testing::RandomVector;

// Direct double-precision attention with an explicit mask: query t (of n new tokens after
// `cached` cached ones) sees kv j iff j <= cached + t.
std::vector<double> RefAttention(const std::vector<float>& q, const std::vector<float>& k,
                                 const std::vector<float>& v, int n, int heads, int kv_heads,
                                 int ctx, int d, int cached, double scale) {
  std::vector<double> out(n * heads * d, 0.0);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      const int kvh = h / (heads / kv_heads);
      std::vector<double> s(ctx, -std::numeric_limits<double>::infinity());
      double mx = -1e300;
      for (int j = 0; j <= cached + t; ++j) {
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += double(q[(t * heads + h) * d + i]) * k[(kvh * ctx + j) * d + i];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j <= cached + t; ++j) sum += std::exp(s[j] - mx);
      for (int j = 0; j <= cached + t; ++j) {
        const double p = std::exp(s[j] - mx) / sum;
        for (int i = 0; i < d; ++i) out[(t * heads + h) * d + i] += p * v[(kvh * ctx + j) * d + i];
      }
    }
  }
  return out;
}

struct Case {
  int n, heads, kv_heads, cached, d;
};

TEST(BlockAttentionTest, MatchesMaskedReferenceForGqaShapes) {
  for (Case c : {Case{23, 4, 2, 226, 16}, Case{5, 6, 2, 0, 16}, Case{7, 4, 1, 33, 32},
                 Case{3, 2, 2, 10, 128}, Case{1, 8, 8, 50, 64}}) {
    const int ctx = c.cached + c.n;
    std::vector<float> q = RandomVector(c.n * c.heads * c.d, 1 + c.d, -2, 2);
    std::vector<float> k = RandomVector(c.kv_heads * ctx * c.d, 2 + c.d, -2, 2);
    std::vector<float> v = RandomVector(c.kv_heads * ctx * c.d, 3 + c.d, -2, 2);
    std::vector<float> out(q.size()), ws(ctx);
    const float scale = 1.0f / std::sqrt(float(c.d));
    ASSERT_TRUE(BlockAttention(Contiguous3<const float>(q.data(), c.n, c.heads, c.d),
                               Contiguous3<const float>(k.data(), c.kv_heads, ctx, c.d),
                               Contiguous3<const float>(v.data(), c.kv_heads, ctx, c.d), c.cached,
                               scale, Contiguous3(out.data(), c.n, c.heads, c.d),
                               absl::MakeSpan(ws))
                    .ok());
    std::vector<double> ref =
        RefAttention(q, k, v, c.n, c.heads, c.kv_heads, ctx, c.d, c.cached, scale);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-5) << i;
  }
}

TEST(BlockAttentionTest, CachedTokensAllVisibleFutureFinalTokensHidden) {
  const int n = 6, heads = 2, kvh = 1, cached = 9, d = 16, ctx = cached + n;
  std::vector<float> q = RandomVector(n * heads * d, 5), k = RandomVector(kvh * ctx * d, 6),
                     v = RandomVector(kvh * ctx * d, 7);
  auto run = [&](const std::vector<float>& kk, const std::vector<float>& vv) {
    std::vector<float> out(q.size()), ws(ctx);
    EXPECT_TRUE(BlockAttention(Contiguous3<const float>(q.data(), n, heads, d),
                               Contiguous3<const float>(kk.data(), kvh, ctx, d),
                               Contiguous3<const float>(vv.data(), kvh, ctx, d), cached,
                               0.25f, Contiguous3(out.data(), n, heads, d), absl::MakeSpan(ws))
                    .ok());
    return out;
  };
  std::vector<float> base = run(k, v);
  // Changing the last final-block token's V changes only the last query row.
  std::vector<float> v2 = v;
  for (int i = 0; i < d; ++i) v2[(ctx - 1) * d + i] += 1.0f;
  std::vector<float> changed = run(k, v2);
  for (int t = 0; t < n; ++t) {
    double diff = 0;
    for (int i = 0; i < heads * d; ++i) diff += std::abs(changed[t * heads * d + i] - base[t * heads * d + i]);
    if (t < n - 1) EXPECT_EQ(diff, 0.0) << t;
    else EXPECT_GT(diff, 1e-3);
  }
  // Changing the first cached token changes every row.
  std::vector<float> v3 = v;
  for (int i = 0; i < d; ++i) v3[i] -= 1.0f;
  changed = run(k, v3);
  for (int t = 0; t < n; ++t) {
    double diff = 0;
    for (int i = 0; i < heads * d; ++i) diff += std::abs(changed[t * heads * d + i] - base[t * heads * d + i]);
    EXPECT_GT(diff, 1e-4) << t;
  }
}

TEST(AttentionTest, CausalPrefillAndDecodeAgreeWithBlockAttention) {
  const int n = 12, heads = 4, kvh = 2, d = 32;
  std::vector<float> q = RandomVector(n * heads * d, 8), k = RandomVector(kvh * n * d, 9),
                     v = RandomVector(kvh * n * d, 10);
  std::vector<float> causal(q.size()), block(q.size()), ws(n);
  auto K = Contiguous3<const float>(k.data(), kvh, n, d);
  auto V = Contiguous3<const float>(v.data(), kvh, n, d);
  ASSERT_TRUE(CausalPrefillAttention(Contiguous3<const float>(q.data(), n, heads, d), K, V, 0.2f,
                                     Contiguous3(causal.data(), n, heads, d), absl::MakeSpan(ws))
                  .ok());
  std::vector<double> ref = RefAttention(q, k, v, n, heads, kvh, n, d, 0, 0.2);
  for (size_t i = 0; i < causal.size(); ++i) ASSERT_NEAR(causal[i], ref[i], 1e-5);
  // Decode of the last token (its KV already appended) == the last causal row.
  std::vector<float> dec(heads * d);
  ASSERT_TRUE(DecodeAttention(Contiguous3<const float>(q.data() + (n - 1) * heads * d, 1, heads, d),
                              K, V, 0.2f, Contiguous3(dec.data(), 1, heads, d), absl::MakeSpan(ws))
                  .ok());
  for (int i = 0; i < heads * d; ++i) EXPECT_FLOAT_EQ(dec[i], causal[(n - 1) * heads * d + i]);
  // A KV cache with spare capacity: the view's token stride stays the capacity.
  const int cap = 20;
  std::vector<float> kc(kvh * cap * d, 99.0f), vc(kvh * cap * d, -99.0f);
  for (int h = 0; h < kvh; ++h) {
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < d; ++i) {
        kc[(h * cap + t) * d + i] = k[(h * n + t) * d + i];
        vc[(h * cap + t) * d + i] = v[(h * n + t) * d + i];
      }
    }
  }
  ASSERT_TRUE(DecodeAttention(Contiguous3<const float>(q.data() + (n - 1) * heads * d, 1, heads, d),
                              View3<const float>{kc.data(), kvh, n, d, cap * d, d},
                              View3<const float>{vc.data(), kvh, n, d, cap * d, d}, 0.2f,
                              Contiguous3(dec.data(), 1, heads, d), absl::MakeSpan(ws))
                  .ok());
  for (int i = 0; i < heads * d; ++i) EXPECT_FLOAT_EQ(dec[i], causal[(n - 1) * heads * d + i]);
}

TEST(AttentionTest, RejectsBadShapes) {
  std::vector<float> q(3 * 4 * 8, 1.0f), k(3 * 10 * 8, 1.0f), v(3 * 10 * 8, 1.0f), out(q.size()),
      ws(10);
  auto Q = Contiguous3<const float>(q.data(), 3, 4, 8);
  auto O = Contiguous3(out.data(), 3, 4, 8);
  // 4 query heads over 3 kv heads.
  EXPECT_EQ(BlockAttention(Q, Contiguous3<const float>(k.data(), 3, 10, 8),
                           Contiguous3<const float>(v.data(), 3, 10, 8), 7, 1.0f, O,
                           absl::MakeSpan(ws))
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto K = Contiguous3<const float>(k.data(), 2, 10, 8);
  auto V = Contiguous3<const float>(v.data(), 2, 10, 8);
  EXPECT_TRUE(BlockAttention(Q, K, V, 7, 1.0f, O, absl::MakeSpan(ws)).ok());
  EXPECT_FALSE(BlockAttention(Q, K, V, 6, 1.0f, O, absl::MakeSpan(ws)).ok());  // 6 + 3 != 10
  EXPECT_FALSE(BlockAttention(Q, K, V, 7, 1.0f, O, absl::MakeSpan(ws).subspan(0, 9)).ok());
  EXPECT_FALSE(DecodeAttention(Q, K, V, 1.0f, O, absl::MakeSpan(ws)).ok());  // 3 query tokens
}

}  // namespace
}  // namespace kvblock::kernels
