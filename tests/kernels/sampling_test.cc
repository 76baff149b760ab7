#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/sampling.h"
#include "tests/kernels/test_util.h"

namespace kvblock::kernels {
namespace {

using testing::RandomVector;

struct Ws {
  explicit Ws(size_t n) : probs(n), order(n) {}
  SamplingWorkspace Get() { return {absl::MakeSpan(probs), absl::MakeSpan(order)}; }
  std::vector<float> probs;
  std::vector<int32_t> order;
};

TEST(SamplingTest, ArgMaxTakesFirstOfTies) {
  EXPECT_EQ(ArgMax(std::vector<float>{0.5f, 2.0f, -1.0f, 2.0f}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{}), -1);
  std::vector<float> logits = RandomVector(1000, 3, -5, 5);
  logits[617] = 9.0f;
  EXPECT_EQ(ArgMax(logits), 617);
}

TEST(SamplingTest, GreedyWhenTemperatureIsZeroAndTopKOneOrTinyTopP) {
  std::vector<float> logits = RandomVector(300, 4, -3, 3);
  const int32_t best = ArgMax(logits);
  Ws ws(300);
  SamplingRng rng(1);
  SamplingParams greedy;
  EXPECT_EQ(*SampleToken(logits, greedy, rng, ws.Get()), best);
  SamplingParams k1{.temperature = 1.0f, .top_k = 1};
  SamplingParams p0{.temperature = 1.0f, .top_p = 1e-6f};
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(*SampleToken(logits, k1, rng, ws.Get()), best);
    EXPECT_EQ(*SampleToken(logits, p0, rng, ws.Get()), best);
  }
}

TEST(SamplingTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> logits = RandomVector(50, 5, -1, 1);
  Ws ws(50);
  SamplingParams p{.temperature = 1.0f};
  auto draw = [&](uint64_t seed) {
    SamplingRng rng(seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 40; ++i) out.push_back(*SampleToken(logits, p, rng, ws.Get()));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(SamplingTest, FrequenciesFollowSoftmaxAtTemperature) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f};
  const float temp = 0.7f;
  std::vector<float> probs(logits.size());
  ASSERT_TRUE(Softmax(logits, temp, absl::MakeSpan(probs)).ok());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    EXPECT_NEAR(probs[i] / probs[0], std::exp((logits[i] - logits[0]) / temp), 1e-5) << i;
    total += probs[i];
  }
  EXPECT_NEAR(total, 1.0, 1e-6);
  Ws ws(logits.size());
  SamplingRng rng(7);
  SamplingParams p{.temperature = temp};
  const int draws = 40000;
  std::vector<int> count(logits.size());
  for (int i = 0; i < draws; ++i) ++count[*SampleToken(logits, p, rng, ws.Get())];
  for (size_t i = 0; i < logits.size(); ++i) {
    const double sd = std::sqrt(draws * probs[i] * (1 - probs[i]));
    EXPECT_NEAR(count[i], draws * probs[i], 5 * sd + 1) << i;
  }
}

TEST(SamplingTest, TopKAndTopPRestrictTheSupport) {
  // softmax at T=1 of these gives probabilities ~ {0.5, 0.25, 0.125, 0.0625, ...} by design.
  std::vector<float> logits = {std::log(0.5f), std::log(0.25f), std::log(0.125f),
                               std::log(0.0625f), std::log(0.03125f), std::log(0.03125f)};
  Ws ws(logits.size());
  SamplingRng rng(9);
  std::map<int, int> seen_k, seen_p;
  SamplingParams k2{.temperature = 1.0f, .top_k = 2};
  SamplingParams p70{.temperature = 1.0f, .top_p = 0.7f};  // 0.5 + 0.25 reaches 0.7
  for (int i = 0; i < 4000; ++i) {
    ++seen_k[*SampleToken(logits, k2, rng, ws.Get())];
    ++seen_p[*SampleToken(logits, p70, rng, ws.Get())];
  }
  EXPECT_EQ(seen_k.size(), 2u);
  EXPECT_EQ(seen_p.size(), 2u);
  EXPECT_TRUE(seen_k.count(0) && seen_k.count(1));
  EXPECT_TRUE(seen_p.count(0) && seen_p.count(1));
  // Renormalised within the kept set: token 0 about twice as often as token 1.
  EXPECT_NEAR(double(seen_k[0]) / 4000, 2.0 / 3, 0.04);
}

TEST(SamplingTest, RejectsBadParams) {
  std::vector<float> logits = {1, 2, 3};
  Ws ws(3);
  Ws small(2);
  SamplingRng rng(1);
  EXPECT_FALSE(SampleToken(logits, {.temperature = 1, .top_k = -1}, rng, ws.Get()).ok());
  EXPECT_FALSE(SampleToken(logits, {.temperature = 1, .top_p = 0}, rng, ws.Get()).ok());
  EXPECT_FALSE(SampleToken(logits, {.temperature = 1, .top_p = 1.5f}, rng, ws.Get()).ok());
  EXPECT_FALSE(SampleToken(logits, {.temperature = 1}, rng, small.Get()).ok());
  EXPECT_FALSE(SampleToken(std::vector<float>{}, {}, rng, ws.Get()).ok());
}

}  // namespace
}  // namespace kvblock::kernels
