#include "worker/demo/demo_model.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

// model.safetensors, included by the assembler (KVBLOCK_DEMO_MODEL_SAFETENSORS is its absolute
// path, set by worker/demo/CMakeLists.txt): 6.5 MB do not belong in a C++ array initialiser.
asm(".section .rodata\n"
    ".balign 64\n"
    "kvblock_demo_model_safetensors_begin:\n"
    ".incbin \"" KVBLOCK_DEMO_MODEL_SAFETENSORS "\"\n"
    "kvblock_demo_model_safetensors_end:\n"
    ".previous\n");
extern "C" const uint8_t kvblock_demo_model_safetensors_begin[];
extern "C" const uint8_t kvblock_demo_model_safetensors_end[];

namespace kvblock {
namespace {

absl::Status WriteAtomically(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out.good()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

std::string_view DemoModelSafetensors() {
  return std::string_view(
      reinterpret_cast<const char*>(kvblock_demo_model_safetensors_begin),
      static_cast<size_t>(kvblock_demo_model_safetensors_end - kvblock_demo_model_safetensors_begin));
}

std::string_view DemoModelSha256() { return KVBLOCK_DEMO_MODEL_SHA256; }

absl::Status WriteDemoModel(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  const std::string config_path = dir + "/config.json";
  {
    std::ifstream in(config_path, std::ios::binary);
    std::stringstream current;
    current << in.rdbuf();
    if (in && current.str() == DemoModelConfigJson() &&
        std::filesystem::file_size(dir + "/model.safetensors", ec) == DemoModelSafetensors().size()) {
      return absl::OkStatus();
    }
  }
  // Weights first: a config.json next to stale weights would look current on the next run.
  if (absl::Status s = WriteAtomically(dir + "/model.safetensors", DemoModelSafetensors()); !s.ok()) {
    return s;
  }
  return WriteAtomically(config_path, DemoModelConfigJson());
}

}  // namespace kvblock
