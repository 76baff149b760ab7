// main() of the external-tool tests: exits 77 (ctest SKIP_RETURN_CODE) when one of the test's
// kRequiredTools is not installed, else runs every test.
#include <cstdio>

#include "gtest/gtest.h"
#include "tests/services/metrics/external_tools.h"

namespace kvblock::metrics::testing {
namespace {

int ExternalToolsMain(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (const std::string& tool : kRequiredTools) {
    if (!FindTool(tool)) {
      std::printf("SKIP: '%s' is not installed (scripts/install-deps.sh installs it)\n",
                  tool.c_str());
      return 77;
    }
  }
  return RUN_ALL_TESTS();
}

}  // namespace
}  // namespace kvblock::metrics::testing

int main(int argc, char** argv) { return kvblock::metrics::testing::ExternalToolsMain(argc, argv); }
