#include "worker/model/weights.h"

#include <cstring>

#include "cache/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/rope.h"
#include "tests/worker/fixture_util.h"
#include "worker/model/config.h"

namespace kvblock {
namespace {

using testing::TempDir;

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadDir(const std::string& dir) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
  if (!c.ok()) return c.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir);
  if (!ck.ok()) return ck.status();
  return ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ck)), *c);
}

TEST(ModelWeightsTest, LoadsEveryFixtureInItsDtype) {
  for (const testing::FixtureSpec& f : testing::AllFixtures()) {
    auto w = LoadDir(f.dir);
    ASSERT_TRUE(w.ok()) << f.name << ": " << w.status();
    auto c = LoadModelConfig(f.dir);
    EXPECT_EQ((*w)->layers().size(), static_cast<size_t>(c->num_layers));
    EXPECT_NE((*w)->layers()[0].q.weight, nullptr);
    EXPECT_EQ((*w)->layers()[0].q.bias != nullptr, c->qkv_bias) << f.name;
    if (c->tie_word_embeddings) EXPECT_EQ((*w)->lm_head().weight, (*w)->embed()) << f.name;
    else EXPECT_NE((*w)->lm_head().weight, (*w)->embed()) << f.name;
    // F32 checkpoints are used in place; BF16/F16 ones converted once.
    auto ck = Checkpoint::Open(f.dir);
    const TensorInfo* e = (*ck)->Find("model.embed_tokens.weight");
    if (e->dtype == TensorDtype::kF32) {
      EXPECT_EQ((*w)->converted_bytes(), 0) << f.name;
    } else {
      EXPECT_GT((*w)->converted_bytes(), 0) << f.name;
      // Spot-check the conversion against the raw 16-bit values.
      for (int64_t i : {int64_t{0}, int64_t{7}, e->NumElements() - 1}) {
        const uint16_t h = static_cast<uint16_t>(e->bytes[2 * i] | (e->bytes[2 * i + 1] << 8));
        const float want = e->dtype == TensorDtype::kBF16 ? Bf16ToFloat(h) : F16ToFloat(h);
        EXPECT_EQ((*w)->embed()[i], want) << f.name << " " << i;
        EXPECT_NE(want, 0.0f);
      }
    }
  }
}

// Rewrites a fixture's checkpoint with one tensor changed by `edit` (nullptr: dropped).
void RewriteWith(const std::string& src, const std::string& dst, const std::string& tensor,
                 std::vector<int64_t> new_shape, bool drop) {
  testing::CopyCheckpoint(src, dst);
  auto file = SafetensorsFile::Open(src + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  std::vector<TensorToWrite> out;
  for (const TensorInfo& t : (*file)->tensors()) {
    if (t.name == tensor && drop) continue;
    TensorToWrite w{t.name, t.dtype, t.shape, t.bytes};
    if (t.name == tensor) {
      w.shape = new_shape;
      int64_t n = 1;
      for (int64_t d : new_shape) n *= d;
      w.bytes = t.bytes.subspan(0, n * TensorDtypeSize(t.dtype));
    }
    out.push_back(w);
  }
  ASSERT_TRUE(WriteSafetensors(dst + "/model.safetensors", out).ok());
}

TEST(ModelWeightsTest, MissingTensorAndWrongShapeNameTheTensor) {
  TempDir dir;
  const std::string src = std::string(KVBLOCK_SHARED_DIR) + "/fixtures/llama-tiny";
  RewriteWith(src, dir / "missing", "model.layers.1.mlp.up_proj.weight", {}, /*drop=*/true);
  auto missing = LoadDir(dir / "missing");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("missing tensor \"model.layers.1.mlp.up_proj.weight\""),
            std::string::npos)
      << missing.status();
  RewriteWith(src, dir / "shape", "model.layers.0.self_attn.k_proj.weight", {16, 64}, false);
  auto shape = LoadDir(dir / "shape");
  ASSERT_FALSE(shape.ok());
  EXPECT_NE(shape.status().message().find("\"model.layers.0.self_attn.k_proj.weight\" has shape [16, 64], expected [32, 64]"),
            std::string::npos)
      << shape.status();
  // Qwen2 needs q/k/v biases.
  RewriteWith(std::string(KVBLOCK_SHARED_DIR) + "/fixtures/qwen2-tiny", dir / "bias",
              "model.layers.2.self_attn.v_proj.bias", {}, true);
  auto bias = LoadDir(dir / "bias");
  EXPECT_NE(bias.status().message().find("model.layers.2.self_attn.v_proj.bias"), std::string::npos)
      << bias.status();
}

// The RoPE tables match transformers' own inv_freq, dumped by make_fixtures.py.
TEST(RopeAgainstTransformersTest, InvFreqOfEveryVariant) {
  for (const char* name : {"llama3-tiny", "mistral-tiny", "llama-linear", "llama-dynamic"}) {
    const std::string dir = std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures/" + name;
    auto c = LoadModelConfig(dir);
    ASSERT_TRUE(c.ok()) << c.status();
    testing::Reference ref = testing::LoadReference(dir);
    std::vector<std::pair<std::string, int64_t>> tables = {{"inv_freq", 0}};
    if (c->rope.type == kernels::RopeType::kDynamic) {
      tables.push_back({"inv_freq_seq8192", 8192});
      tables.push_back({"inv_freq_seq20000", 20000});
    }
    for (const auto& [tensor, seq_len] : tables) {
      std::vector<float> want = ref.Tensor(tensor);
      std::vector<float> got(c->head_dim / 2);
      ASSERT_TRUE(kernels::ComputeRopeInvFreq(c->rope, c->head_dim, seq_len, absl::MakeSpan(got)).ok());
      ASSERT_EQ(got.size(), want.size()) << name;
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_NEAR(got[i], want[i], 2e-7 * std::abs(want[i])) << name << " " << tensor << " " << i;
      }
    }
  }
}

}  // namespace
}  // namespace kvblock
