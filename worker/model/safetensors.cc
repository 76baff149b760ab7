#include "worker/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace kvblock {
namespace {

using json = nlohmann::json;

struct DtypeEntry {
  TensorDtype dtype;
  const char* name;
  size_t size;
};
constexpr DtypeEntry kDtypes[] = {
    {TensorDtype::kF32, "F32", 4},       {TensorDtype::kBF16, "BF16", 2},
    {TensorDtype::kF16, "F16", 2},       {TensorDtype::kF64, "F64", 8},
    {TensorDtype::kI64, "I64", 8},       {TensorDtype::kI32, "I32", 4},
    {TensorDtype::kI16, "I16", 2},       {TensorDtype::kI8, "I8", 1},
    {TensorDtype::kU8, "U8", 1},         {TensorDtype::kU64, "U64", 8},
    {TensorDtype::kU32, "U32", 4},       {TensorDtype::kU16, "U16", 2},
    {TensorDtype::kBool, "BOOL", 1},     {TensorDtype::kF8E4M3, "F8_E4M3", 1},
    {TensorDtype::kF8E5M2, "F8_E5M2", 1},
};

// Elements are capped so that element counts times 8 bytes stay far inside int64.
constexpr int64_t kMaxElements = int64_t{1} << 56;

absl::Status Malformed(const std::string& file, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors ", file, ": ", std::string(what)));
}

std::string Quote(const std::string& s) {
  std::string q = s.size() > 200 ? s.substr(0, 200) + "..." : s;
  return absl::StrCat("\"", q, "\"");
}

}  // namespace

std::string_view TensorDtypeName(TensorDtype dtype) {
  for (const DtypeEntry& e : kDtypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

size_t TensorDtypeSize(TensorDtype dtype) {
  for (const DtypeEntry& e : kDtypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat("safetensors ", path, ": no such file"));
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors ", path, ": cannot open: ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Malformed(path, "not a regular file");
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const size_t size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return Malformed(path, absl::StrCat("mmap failed: ", std::strerror(err)));
    }
    file->mapping_ = p;
    file->bytes_ = absl::Span<const uint8_t>(static_cast<const uint8_t*>(p), size);
  }
  ::close(fd);  // the mapping stays valid
  if (absl::Status s = file->Parse(); !s.ok()) return s;
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBuffer(
    absl::Span<const uint8_t> bytes, std::string name) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::move(name);
  file->bytes_ = bytes;
  if (absl::Status s = file->Parse(); !s.ok()) return s;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, bytes_.size());
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status SafetensorsFile::Parse() {
  if (bytes_.size() < 8) {
    return Malformed(path_, absl::StrCat("file of ", bytes_.size(), " bytes is shorter than the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes_[i];
  if (header_len > kMaxSafetensorsHeaderBytes || header_len > bytes_.size() - 8) {
    return Malformed(path_, absl::StrCat("header length ", header_len, " exceeds the file (",
                                         bytes_.size(), " bytes) or the 100 MB limit"));
  }
  const char* header = reinterpret_cast<const char*>(bytes_.data() + 8);
  json root = json::parse(header, header + header_len, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Malformed(path_, "header is not valid JSON");
  if (!root.is_object()) return Malformed(path_, "header is not a JSON object");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = bytes_.size() - data_start;
  const uint8_t* data = bytes_.data() + data_start;

  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // (begin, end) for the overlap check
  tensors_.reserve(root.size());
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it.value().is_object()) return Malformed(path_, "__metadata__ is not an object");
      continue;
    }
    const json& t = it.value();
    const std::string where = absl::StrCat("tensor ", Quote(name));
    if (!t.is_object()) return Malformed(path_, absl::StrCat(where, " is not an object"));
    auto dt = t.find("dtype");
    auto sh = t.find("shape");
    auto off = t.find("data_offsets");
    if (dt == t.end() || !dt->is_string()) {
      return Malformed(path_, absl::StrCat(where, ": \"dtype\" missing or not a string"));
    }
    TensorInfo info;
    info.name = name;
    const std::string& dname = dt->get_ref<const std::string&>();
    const DtypeEntry* entry = nullptr;
    for (const DtypeEntry& e : kDtypes) {
      if (dname == e.name) entry = &e;
    }
    if (entry == nullptr) {
      return Malformed(path_, absl::StrCat(where, ": unknown dtype ", Quote(dname)));
    }
    info.dtype = entry->dtype;
    if (sh == t.end() || !sh->is_array()) {
      return Malformed(path_, absl::StrCat(where, ": \"shape\" missing or not an array"));
    }
    int64_t elements = 1;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned()) {
        return Malformed(path_, absl::StrCat(where, ": shape entries must be non-negative integers"));
      }
      const uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(kMaxElements) ||
          (v > 0 && elements > kMaxElements / static_cast<int64_t>(v))) {
        return Malformed(path_, absl::StrCat(where, ": shape is too large"));
      }
      elements *= static_cast<int64_t>(v);
      info.shape.push_back(static_cast<int64_t>(v));
    }
    if (off == t.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return Malformed(path_, absl::StrCat(where, ": \"data_offsets\" must be two non-negative integers"));
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Malformed(path_, absl::StrCat(where, ": data_offsets [", begin, ", ", end,
                                           "] outside the data section of ", data_size, " bytes"));
    }
    const uint64_t want = static_cast<uint64_t>(elements) * entry->size;
    if (end - begin != want) {
      return Malformed(path_, absl::StrCat(where, ": ", end - begin, " bytes for ", elements,
                                           " elements of ", dname, " (expected ", want, ")"));
    }
    info.bytes = absl::Span<const uint8_t>(data + begin, end - begin);
    if (end > begin) ranges.emplace_back(begin, end);
    tensors_.push_back(std::move(info));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return Malformed(path_, absl::StrCat("tensors overlap at data offset ", ranges[i].first));
    }
  }
  std::sort(tensors_.begin(), tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, absl::Span<const TensorToWrite> tensors) {
  json header = json::object();
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    const uint64_t want = static_cast<uint64_t>(n) * TensorDtypeSize(t.dtype);
    if (t.bytes.size() != want) {
      return absl::InvalidArgumentError(absl::StrCat("write safetensors: tensor ", t.name, " has ",
                                                     t.bytes.size(), " bytes, shape needs ", want));
    }
    header[t.name] = {{"dtype", std::string(TensorDtypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + want}}};
    offset += want;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot write ", tmp));
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(h.size() >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const TensorToWrite& t : tensors) {
      out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    }
    out.flush();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      return absl::InvalidArgumentError(absl::StrCat("cannot write ", tmp, " (disk full?)"));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return absl::InvalidArgumentError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist or is not a directory"));
  }
  auto ckpt = std::make_unique<Checkpoint>();
  ckpt->dir_ = dir;
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(single, ec)) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(single.string());
    if (!f.ok()) return f.status();
    for (const TensorInfo& t : (*f)->tensors()) ckpt->tensors_[t.name] = &t;
    ckpt->files_.push_back(std::move(*f));
    return ckpt;
  }
  if (!fs::exists(index, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir,
                                            " has neither model.safetensors nor model.safetensors.index.json"));
  }
  std::ifstream in(index, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  const std::string iname = index.string();
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(iname, ": not a JSON object"));
  }
  auto wm = root.find("weight_map");
  if (wm == root.end() || !wm->is_object() || wm->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(iname, ": \"weight_map\" missing, empty or not an object"));
  }
  std::set<std::string> shard_names;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(iname, ": weight_map entry for ", Quote(it.key()),
                                                     " is not a file name"));
    }
    const std::string& shard = it.value().get_ref<const std::string&>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      return absl::InvalidArgumentError(absl::StrCat(iname, ": bad shard name ", Quote(shard)));
    }
    shard_names.insert(shard);
  }
  absl::flat_hash_map<std::string, const SafetensorsFile*> by_name;
  for (const std::string& shard : shard_names) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
        SafetensorsFile::Open((fs::path(dir) / shard).string());
    if (!f.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(iname, " names shard ", shard, ": ",
                                                     f.status().message()));
    }
    by_name[shard] = f->get();
    ckpt->files_.push_back(std::move(*f));
  }
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    const std::string& shard = it.value().get_ref<const std::string&>();
    const TensorInfo* t = by_name[shard]->Find(it.key());
    if (t == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(iname, " places tensor ", Quote(it.key()), " in ",
                                                     shard, ", which does not contain it"));
    }
    ckpt->tensors_[it.key()] = t;
  }
  return ckpt;
}

const TensorInfo* Checkpoint::Find(std::string_view name) const {
  auto it = tensors_.find(std::string(name));
  return it == tensors_.end() ? nullptr : it->second;
}

std::vector<const TensorInfo*> Checkpoint::AllTensors() const {
  std::vector<const TensorInfo*> all;
  all.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) all.push_back(t);
  std::sort(all.begin(), all.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->name < b->name; });
  return all;
}

}  // namespace kvblock
