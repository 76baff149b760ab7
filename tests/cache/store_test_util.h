// Helpers shared by the storage tier tests and benchmarks: random, real block payloads (random
// tokens -> real key, random KV bytes -> real checksums), scratch directories, and a store that
// forwards to a real one (for tests that change one call).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "cache/block_key.h"
#include "cache/block_payload.h"
#include "cache/block_store.h"

namespace kvblock::testing {

struct TestBlock {
  BlockKey key;
  BlockMeta meta;
  std::vector<uint8_t> payload;
};

// A block of `num_tokens` random tokens with random KV data of shape
// layers x heads x tokens x head_dim (bf16). Deterministic in (model, seed).
inline TestBlock MakeBlock(const ModelFingerprint& model, uint64_t seed, uint32_t num_tokens = 8,
                           uint32_t num_layers = 2, uint32_t num_kv_heads = 2,
                           uint32_t head_dim = 16) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + model.lo + 1);
  std::vector<int32_t> tokens(num_tokens);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 128000);
  TestBlock b;
  b.meta.model = model;
  b.meta.dtype = KvDtype::kBF16;
  b.meta.num_layers = num_layers;
  b.meta.num_kv_heads = num_kv_heads;
  b.meta.head_dim = head_dim;
  b.meta.num_tokens = num_tokens;
  b.meta.key = ComputeBlockKey(model, b.meta.dtype, tokens);
  b.key = b.meta.key;
  std::vector<uint8_t> data(DataBytes(b.meta));
  for (size_t i = 0; i < data.size(); i += 8) {
    uint64_t r = rng();
    for (size_t j = 0; j < 8 && i + j < data.size(); ++j) data[i + j] = uint8_t(r >> (8 * j));
  }
  b.payload = EncodeBlockRaw(b.meta, data).value();
  return b;
}

// A payload of roughly `bytes` bytes (bf16, 8 layers x 8 heads x 64 head_dim per token).
inline TestBlock MakeBlockOfSize(const ModelFingerprint& model, uint64_t seed, uint64_t bytes) {
  const uint64_t per_token = 8ull * 8 * 64 * 2 * 2;
  uint32_t tokens = static_cast<uint32_t>(std::max<uint64_t>(1, bytes / per_token));
  return MakeBlock(model, seed, tokens, 8, 8, 64);
}

inline ModelFingerprint RandomModel(uint64_t seed) {
  std::mt19937_64 rng(seed + 17);
  return Hash128{rng(), rng()};
}

// A fresh directory under $TMPDIR (or /tmp), removed by the destructor.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/kvblock-test-XXXXXX";
    path_ = mkdtemp(tmpl.data()) != nullptr ? tmpl : std::string();
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A store passing every call to `inner`; tests override the calls they change.
class ForwardingStore : public BlockStore {
 public:
  explicit ForwardingStore(BlockStore* inner) : inner_(inner) {}
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override {
    return inner_->Put(key, payload);
  }
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override { return inner_->Get(key); }
  void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) override {
    inner_->Lookup(keys, out);
  }
  absl::Status Delete(const BlockKey& key) override { return inner_->Delete(key); }
  absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) override {
    return inner_->DeleteModel(model);
  }
  std::vector<TierStats> Stats() const override { return inner_->Stats(); }

 protected:
  BlockStore* inner_;
};

}  // namespace kvblock::testing
