#include "worker/model/fingerprint.h"

#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace kvblock {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kRecordVersion = 1;

// Size and modification time of every file the fingerprint covers, as stored in the record.
absl::StatusOr<json> FileStamps(const std::string& model_dir, const Checkpoint& checkpoint) {
  json files = json::array();
  std::vector<std::string> paths = {(fs::path(model_dir) / "config.json").string()};
  for (const auto& f : checkpoint.files()) paths.push_back(f->path());
  for (const std::string& p : paths) {
    struct stat st;
    if (::stat(p.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("fingerprint: cannot stat ", p));
    }
    files.push_back({{"name", fs::path(p).filename().string()},
                     {"size", static_cast<uint64_t>(st.st_size)},
                     {"mtime_ns", static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
                                      st.st_mtim.tv_nsec}});
  }
  return files;
}

std::string FallbackPath(const std::string& model_dir, const FingerprintOptions& options) {
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(fs::absolute(model_dir, ec), ec);
  const std::string key = abs.string();
  const std::string dir = options.fallback_dir.empty() ? DefaultFingerprintCacheDir()
                                                       : options.fallback_dir;
  return (fs::path(dir) / absl::StrCat(HashBytes128(key.data(), key.size()).ToHex(), ".json"))
      .string();
}

// The fingerprint in `path` if the record is readable and its stamps equal `stamps`.
std::optional<ModelFingerprint> ReadRecord(const std::string& path, const json& stamps) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json r = json::parse(text, nullptr, false);
  if (r.is_discarded() || !r.is_object()) return std::nullopt;
  auto v = r.find("version");
  auto fp = r.find("fingerprint");
  auto files = r.find("files");
  if (v == r.end() || *v != kRecordVersion || fp == r.end() || !fp->is_string() ||
      files == r.end() || *files != stamps) {
    return std::nullopt;
  }
  absl::StatusOr<Hash128> h = Hash128::FromHex(fp->get<std::string>());
  if (!h.ok()) return std::nullopt;
  return *h;
}

bool WriteRecord(const std::string& path, const json& record) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return false;
    out << record.dump(2) << "\n";
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      return false;
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) fs::remove(tmp, ec);
  return !ec;
}

void Update(XXH3_state_t* st, std::string_view s) {
  const uint64_t n = s.size();
  XXH3_128bits_update(st, &n, sizeof(n));
  XXH3_128bits_update(st, s.data(), s.size());
}

}  // namespace

std::string DefaultFingerprintCacheDir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && xdg[0] == '/') {
    return (fs::path(xdg) / "kvblock" / "fingerprints").string();
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && home[0] == '/') {
    return (fs::path(home) / ".cache" / "kvblock" / "fingerprints").string();
  }
  return "/tmp/kvblock-fingerprints";
}

ModelFingerprint ComputeModelFingerprint(const Checkpoint& checkpoint, const ModelConfig& c) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  Update(st, "kvblock-model-fingerprint-v1");
  const kernels::RopeParams& r = c.rope;
  // The architecture: everything that changes what the weights compute.
  Update(st, absl::StrFormat(
                 "%s|%d|%d|%d|%d|%d|%d|%d|%a|%d%d%d%d|rope %d %a %a %a %a %d %d|window %d",
                 c.architecture_name, c.vocab_size, c.hidden_size, c.intermediate_size,
                 c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
                 static_cast<double>(c.rms_norm_eps), int{c.tie_word_embeddings},
                 int{c.qkv_bias}, int{c.o_bias}, int{c.mlp_bias}, static_cast<int>(r.type),
                 r.theta, r.factor, r.low_freq_factor, r.high_freq_factor,
                 r.original_max_position_embeddings, r.max_position_embeddings,
                 c.sliding_window));
  for (const TensorInfo* t : checkpoint.AllTensors()) {
    Update(st, t->name);
    Update(st, TensorDtypeName(t->dtype));
    for (int64_t d : t->shape) XXH3_128bits_update(st, &d, sizeof(d));
    XXH3_128bits_update(st, t->bytes.data(), t->bytes.size());
  }
  const XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  return Hash128{h.high64, h.low64};
}

absl::StatusOr<ModelFingerprint> LoadOrComputeModelFingerprint(const std::string& model_dir,
                                                               const Checkpoint& checkpoint,
                                                               const ModelConfig& config,
                                                               const FingerprintOptions& options,
                                                               bool* computed) {
  if (computed != nullptr) *computed = false;
  absl::StatusOr<json> stamps = FileStamps(model_dir, checkpoint);
  if (!stamps.ok()) return stamps.status();
  const std::string beside = (fs::path(model_dir) / kFingerprintFileName).string();
  const std::string fallback = FallbackPath(model_dir, options);
  if (!options.recompute) {
    for (const std::string& path : {beside, fallback}) {
      if (std::optional<ModelFingerprint> fp = ReadRecord(path, *stamps); fp.has_value()) {
        return *fp;
      }
    }
  }
  const ModelFingerprint fp = ComputeModelFingerprint(checkpoint, config);
  if (computed != nullptr) *computed = true;
  const json record = {{"version", kRecordVersion},
                       {"fingerprint", fp.ToHex()},
                       {"model_dir", model_dir},
                       {"files", *stamps}};
  if (!WriteRecord(beside, record)) WriteRecord(fallback, record);
  return fp;
}

absl::StatusOr<ModelFingerprint> FingerprintFromModelId(std::string_view model_id) {
  if (model_id.empty()) return absl::InvalidArgumentError("--model-id is empty");
  if (model_id.size() == 32) {
    absl::StatusOr<Hash128> h = Hash128::FromHex(model_id);
    if (h.ok()) return *h;
  }
  const std::string tagged = absl::StrCat("kvblock-model-id:", std::string(model_id));
  return HashBytes128(tagged.data(), tagged.size());
}

}  // namespace kvblock
