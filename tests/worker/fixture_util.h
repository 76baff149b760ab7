// Helpers shared by the worker tests: where the golden fixtures are (the two shared ones and
// those made by tests/fixtures/make_fixtures.py), reading their reference.json and
// reference.safetensors, and temporary directories.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/model/safetensors.h"

namespace kvblock::testing {

struct FixtureSpec {
  std::string name;
  std::string dir;
};

// Every golden fixture: ../shared/fixtures (llama-tiny, qwen2-tiny) and tests/fixtures.
inline std::vector<FixtureSpec> AllFixtures() {
  const std::string shared = std::string(KVBLOCK_SHARED_DIR) + "/fixtures/";
  const std::string own = std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures/";
  return {{"llama-tiny", shared + "llama-tiny"},     {"qwen2-tiny", shared + "qwen2-tiny"},
          {"llama3-tiny", own + "llama3-tiny"},      {"mistral-tiny", own + "mistral-tiny"},
          {"llama-linear", own + "llama-linear"},    {"llama-dynamic", own + "llama-dynamic"}};
}

struct Reference {
  std::vector<std::vector<int32_t>> blocks;
  std::vector<int32_t> final_block;
  std::vector<int32_t> greedy_block;
  std::vector<int32_t> greedy_full;
  std::unique_ptr<SafetensorsFile> tensors;

  // The f32 tensor `name` (fails the test if absent).
  std::vector<float> Tensor(const std::string& name, std::vector<int64_t>* shape = nullptr) const {
    const TensorInfo* t = tensors->Find(name);
    EXPECT_NE(t, nullptr) << name;
    if (t == nullptr) return {};
    EXPECT_EQ(t->dtype, TensorDtype::kF32);
    if (shape != nullptr) *shape = t->shape;
    std::vector<float> v(t->NumElements());
    std::memcpy(v.data(), t->bytes.data(), t->bytes.size());
    return v;
  }
};

inline Reference LoadReference(const std::string& dir) {
  Reference r;
  std::ifstream in(dir + "/reference.json");
  nlohmann::json j = nlohmann::json::parse(in);
  r.blocks = j["blocks"].get<std::vector<std::vector<int32_t>>>();
  r.final_block = j["final_block"].get<std::vector<int32_t>>();
  r.greedy_block = j["greedy_block_mode"].get<std::vector<int32_t>>();
  r.greedy_full = j["greedy_full_mode"].get<std::vector<int32_t>>();
  auto f = SafetensorsFile::Open(dir + "/reference.safetensors");
  EXPECT_TRUE(f.ok()) << f.status();
  if (f.ok()) r.tensors = std::move(*f);
  return r;
}

// A fresh directory under the test temp dir, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("kvblock-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Copies a fixture's checkpoint files (not the references) into `dst`.
inline void CopyCheckpoint(const std::string& src, const std::string& dst) {
  namespace fs = std::filesystem;
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("reference", 0) == 0 || name == "kvblock-fingerprint.json") continue;
    fs::copy_file(e.path(), fs::path(dst) / name, fs::copy_options::overwrite_existing);
    fs::permissions(fs::path(dst) / name, fs::perms::owner_read | fs::perms::owner_write,
                    fs::perm_options::add);
  }
}

// max |a - b| / max(1, max |b|): the "relative" error used for logits.
inline double MaxRelError(const std::vector<float>& a, const std::vector<float>& b) {
  double max_diff = 0, max_ref = 1;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(double(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::abs(double(b[i])));
  }
  return a.size() == b.size() ? max_diff / max_ref : 1e30;
}

inline double MaxAbsError(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

}  // namespace kvblock::testing
