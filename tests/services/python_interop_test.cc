// Interop: a client not written in C++ (Python grpcio, stubs generated from proto/ by
// grpcio-tools at test time, tests/python/cache_interop.py) drives a real cache node: Put,
// Lookup, Get round trip byte-exact in both directions (blocks written by the C++ client are read
// by Python and vice versa). Skips (exit 77, ctest SKIP_RETURN_CODE) only when
// scripts/python-env.sh reports PyPI unreachable.

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "services/cache_client.h"
#include "services/cache_server.h"
#include "tests/run_command.h"
#include "tests/services/cluster_test_util.h"

namespace kvblock {
namespace {

using namespace kvblock::testing;  // NOLINT

TEST(PythonInteropTest, GrpcioPutLookupGetRoundTrip) {
  std::string python;
  ASSERT_NO_FATAL_FAILURE(ProjectPython(KVBLOCK_SOURCE_DIR, &python));

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

  const CommandRun run = RunCommand(absl::StrCat(python, " ", KVBLOCK_SOURCE_DIR,
                                  "/tests/python/cache_interop.py --address ",
                                  (*server)->grpc_address(), " --token ", token, " --proto-dir ",
                                  KVBLOCK_SOURCE_DIR, "/proto --payload-dir ", dir.Sub("payloads"),
                                  " --cxx-keys ", absl::StrJoin(cxx_keys, ",")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const std::string& out = run.output;
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
