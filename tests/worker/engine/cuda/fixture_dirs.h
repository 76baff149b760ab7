// The golden-fixture folders the GPU engine tests run on: KVBLOCK_TEST_FIXTURES (colon-separated
// roots; the GPU machine's packed copy) or ../shared/fixtures and tests/fixtures.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"

namespace kvblock::testing {

inline std::vector<std::string> FixtureDirs() {
  std::vector<std::string> roots;
  if (const char* env = std::getenv("KVBLOCK_TEST_FIXTURES")) {
    for (absl::string_view p : absl::StrSplit(env, ':', absl::SkipEmpty())) roots.emplace_back(p);
  } else {
    roots = {std::string(KVBLOCK_SHARED_DIR) + "/fixtures", std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures"};
  }
  std::vector<std::string> dirs;
  for (const auto& root : roots) {
    if (!std::filesystem::is_directory(root)) continue;
    for (const auto& e : std::filesystem::directory_iterator(root)) {
      if (std::filesystem::exists(e.path() / "reference.json")) dirs.push_back(e.path().string());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

}  // namespace kvblock::testing
