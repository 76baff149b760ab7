// Interop: a client not written in C++ (Python grpcio, stubs generated from proto/ by
// grpcio-tools at test time, tests/python/cache_interop.py) drives a real cache node: Put,
// Lookup, Get round trip byte-exact in both directions (blocks written by the C++ client are read
// by Python and vice versa). Skips (exit 77, ctest SKIP_RETURN_CODE) only when
// scripts/python-env.sh reports PyPI unreachable.
#include <sys/wait.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "services/cache_client.h"
#include "services/cache_server.h"
#include "tests/services/cluster_test_util.h"

namespace kvblock {
namespace {

using namespace kvblock::testing;  // NOLINT

int RunShell(const std::string& cmd, std::string* out) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(PythonInteropTest, GrpcioPutLookupGetRoundTrip) {
  std::string env_out;
  const int env_rc = RunShell(absl::StrCat("bash ", KVBLOCK_SOURCE_DIR, "/scripts/python-env.sh"),
                         &env_out);
  if (env_rc == 77) {
    std::fprintf(stderr, "SKIP: PyPI unreachable, cannot install grpcio: %s\n", env_out.c_str());
    std::exit(77);
  }
  ASSERT_EQ(env_rc, 0) << env_out;
  const char* venv = std::getenv("KVBLOCK_VENV");
  const std::string python =
      absl::StrCat(venv != nullptr ? venv : absl::StrCat(KVBLOCK_SOURCE_DIR, "/.venv"),
                   "/bin/python");

  TempDir dir;
  const std::string token = "py-interop-token";
  WriteFile(dir.Sub("token"), token);
  CacheServerOptions o;
  o.listen = "127.0.0.1:0";
  o.data_dir = dir.Sub("data");
  o.memory_bytes = 32 << 20;
  o.auth_token_file = dir.Sub("token");
  o.sync = "none";
  o.service.max_block_bytes = 8 << 20;
  auto server = CacheServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();

  std::mt19937_64 rng(std::random_device{}());
  std::filesystem::create_directory(dir.Sub("payloads"));
  std::vector<TestBlock> blocks;
  for (int i = 0; i < 6; ++i) {
    blocks.push_back(RandomBlock(rng, 2 + i, 16 + 50 * i));  // up to ~1.3 MiB: several chunks
    WriteFile(dir.Sub("payloads/" + blocks.back().key.ToHex() + ".bin"),
              std::string(blocks.back().payload.begin(), blocks.back().payload.end()));
  }
  // The first two are written by the C++ client; Python writes the rest and reads all.
  CacheClientOptions co;
  co.members = {(*server)->grpc_address()};
  co.replication = 1;
  co.auth_token = token;
  co.use_data_plane = false;
  auto client = CacheClient::Create(co);
  ASSERT_TRUE(client.ok());
  std::vector<std::string> cxx_keys;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE((*client)->Put(blocks[i].key, blocks[i].payload).ok());
    cxx_keys.push_back(blocks[i].key.ToHex());
  }

  std::string out;
  const int rc = RunShell(absl::StrCat(python, " ", KVBLOCK_SOURCE_DIR,
                                  "/tests/python/cache_interop.py --address ",
                                  (*server)->grpc_address(), " --token ", token, " --proto-dir ",
                                  KVBLOCK_SOURCE_DIR, "/proto --payload-dir ", dir.Sub("payloads"),
                                  " --cxx-keys ", absl::StrJoin(cxx_keys, ",")),
                     &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"read_back\": 6"), std::string::npos) << out;
  std::printf("%s", out.c_str());
  // And C++ reads what Python wrote, byte for byte.
  for (size_t i = 2; i < blocks.size(); ++i) {
    auto got = (*client)->Get(blocks[i].key);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(std::equal(got->bytes.begin(), got->bytes.end(), blocks[i].payload.begin(),
                           blocks[i].payload.end()));
  }
}

}  // namespace
}  // namespace kvblock
