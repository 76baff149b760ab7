#include "worker/model/fingerprint.h"

#include <sys/stat.h>

#include <filesystem>

#include "gtest/gtest.h"
#include "tests/worker/fixture_util.h"
#include "worker/model/model.h"

namespace kvblock {
namespace {

using testing::TempDir;

TEST(FingerprintTest, StoredBesideCheckpointAndChangesWithAnyWeightByte) {
  TempDir dir;
  const std::string model = dir / "m";
  testing::CopyCheckpoint(std::string(KVBLOCK_SHARED_DIR) + "/fixtures/llama-tiny", model);
  ModelLoadOptions options;
  options.fingerprint.fallback_dir = dir / "fallback";
  auto first = LoadModel(model, options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->fingerprint_computed);
  EXPECT_TRUE(std::filesystem::exists(model + "/" + kFingerprintFileName));
  auto second = LoadModel(model, options);
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->fingerprint_computed);  // read from the record
  EXPECT_EQ(second->fingerprint, first->fingerprint);
  // The record is a cache, not the truth: the hash itself matches a fresh computation.
  EXPECT_EQ(ComputeModelFingerprint(*second->checkpoint, second->config), first->fingerprint);

  // Change one weight byte (the file is rewritten, so its record goes stale).
  {
    std::fstream f(model + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    char c;
    f.get(c);
    f.seekp(-3, std::ios::end);
    f.put(static_cast<char>(c ^ 0x01));
  }
  auto changed = LoadModel(model, options);
  ASSERT_TRUE(changed.ok());
  EXPECT_TRUE(changed->fingerprint_computed);
  EXPECT_NE(changed->fingerprint, first->fingerprint);
  // Another model (architecture and weights) differs too.
  auto qwen = LoadModel(std::string(KVBLOCK_SHARED_DIR) + "/fixtures/qwen2-tiny", options);
  ASSERT_TRUE(qwen.ok());
  EXPECT_NE(qwen->fingerprint, first->fingerprint);
}

TEST(FingerprintTest, ReadOnlyModelDirUsesTheFallbackRecord) {
  TempDir dir;
  const std::string model = dir / "ro";
  testing::CopyCheckpoint(std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures/mistral-tiny", model);
  ::chmod(model.c_str(), 0555);
  ModelLoadOptions options;
  options.fingerprint.fallback_dir = dir / "fallback";
  auto first = LoadModel(model, options);
  ASSERT_TRUE(first.ok()) << first.status();
  const bool root = ::geteuid() == 0;  // root writes anyway; then the record is beside the model
  EXPECT_EQ(std::filesystem::exists(model + "/" + kFingerprintFileName), root);
  if (!root) EXPECT_FALSE(std::filesystem::is_empty(dir / "fallback"));
  auto second = LoadModel(model, options);
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->fingerprint_computed);
  EXPECT_EQ(second->fingerprint, first->fingerprint);
  ::chmod(model.c_str(), 0755);
}

TEST(FingerprintTest, ModelIdOverrides) {
  auto hex = FingerprintFromModelId("0123456789abcdef0123456789abcdef");
  ASSERT_TRUE(hex.ok());
  EXPECT_EQ(hex->ToHex(), "0123456789abcdef0123456789abcdef");
  auto a = FingerprintFromModelId("llama-3.1-8b@rev1");
  auto b = FingerprintFromModelId("llama-3.1-8b@rev2");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(*a, *FingerprintFromModelId("llama-3.1-8b@rev1"));
  EXPECT_FALSE(FingerprintFromModelId("").ok());
  TempDir dir;
  ModelLoadOptions options;
  options.model_id = "llama-3.1-8b@rev1";
  auto m = LoadModel(std::string(KVBLOCK_SHARED_DIR) + "/fixtures/llama-tiny", options);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->fingerprint, *a);
  EXPECT_FALSE(m->fingerprint_computed);
}

}  // namespace
}  // namespace kvblock
