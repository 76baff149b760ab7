// Interop: Python grpcio (stubs generated from proto/ by grpcio-tools at test time,
// tests/worker/service/worker_interop.py) calls Generate on an in-process WorkerServer; its
// tokens must equal Engine::Generate's over the same store, the repeat must be all hits, and a
// call without the token must be UNAUTHENTICATED. Skips (exit 77, ctest SKIP_RETURN_CODE) only
// when scripts/python-env.sh reports PyPI unreachable.

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/run_command.h"
#include "tests/worker/fixture_util.h"
#include "worker/demo/random_model.h"
#include "worker/service/runtime.h"
#include "worker/service/worker_server.h"

namespace kvblock {
namespace {

TEST(WorkerPythonInteropTest, GrpcioGenerateMatchesEngine) {
  std::string python;
  ASSERT_NO_FATAL_FAILURE(testing::ProjectPython(KVBLOCK_SOURCE_DIR, &python));

  testing::TempDir dir;
  std::mt19937_64 rng(std::random_device{}());
  RandomLlamaOptions mo;
  mo.hidden_size = 64;
  mo.intermediate_size = 128;
  mo.num_layers = 2;
  mo.num_heads = 2;
  mo.num_kv_heads = 1;
  mo.max_position_embeddings = 1024;
  mo.seed = rng();
  ASSERT_TRUE(WriteRandomLlama(dir / "model", mo).ok());
  RuntimeOptions ro;
  ro.model_dir = dir / "model";
  ro.cache_dir = dir / "cache";
  absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(ro);
  ASSERT_TRUE(rt.ok()) << rt.status();
  const std::string token = "py-worker-token";
  std::ofstream(dir / "token") << token << "\n";
  WorkerServerOptions so;
  so.listen = "127.0.0.1:0";
  so.auth_token_file = dir / "token";
  absl::StatusOr<std::unique_ptr<WorkerServer>> server = WorkerServer::Start(rt->get(), so);
  ASSERT_TRUE(server.ok()) << server.status();

  std::uniform_int_distribution<int32_t> id(0, 255);
  GenerateRequest direct;
  for (int b = 0; b < 2; ++b) {
    direct.blocks.emplace_back(25 + b * 9);
    for (int32_t& t : direct.blocks.back()) t = id(rng);
  }
  direct.final_block.resize(9);
  for (int32_t& t : direct.final_block) t = id(rng);
  direct.max_new_tokens = 20;
  nlohmann::json spec = {{"blocks", direct.blocks},
                         {"final_block", direct.final_block},
                         {"max_new_tokens", direct.max_new_tokens}};
  std::ofstream(dir / "request.json") << spec.dump();

  const testing::CommandRun run = testing::RunCommand(
      absl::StrCat(python, " ", KVBLOCK_SOURCE_DIR, "/tests/worker/service/worker_interop.py --address ",
                   (*server)->grpc_address(), " --token ", token, " --proto-dir ", KVBLOCK_SOURCE_DIR,
                   "/proto --request ", dir / "request.json"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const std::string& out = run.output;
  const nlohmann::json result = nlohmann::json::parse(out.substr(out.rfind("{\"runs\"")));
  absl::StatusOr<GenerateResult> engine = (*rt)->engine->Generate(direct);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_EQ(result["runs"].size(), 2u);
  EXPECT_EQ(result["runs"][0]["tokens"].get<std::vector<int32_t>>(), engine->tokens);
  EXPECT_EQ(result["runs"][1]["tokens"].get<std::vector<int32_t>>(), engine->tokens);
  EXPECT_EQ(result["runs"][0]["misses"].get<int>(), 2);
  EXPECT_EQ(result["runs"][1]["hits"].get<int>(), 2);
  EXPECT_EQ(engine->cache_hits, 2);
  (*server)->Shutdown();
}

}  // namespace
}  // namespace kvblock
