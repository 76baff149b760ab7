// `kvblock index --worker` (worker/indexer/remote_block_encoder.h) against a real worker: a
// WorkerServer on 127.0.0.1:0 with a bearer token over a random Llama, in this process. The
// Indexer through a RemoteBlockEncoder writes byte-identical store contents to the Indexer with
// its own engine, in calls split at the worker's max_prompt_tokens, loads no weights and leaves
// the worker's own cache untouched; a worker of another model is refused before any work; a
// worker that goes away stops the run with UNAVAILABLE and nothing recorded, and --resume
// completes it; mTLS through the --worker-tls-* credentials; VerifyPayload refuses corrupt or
// foreign payloads; the command's exit codes.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/run_command.h"
#include "tests/tls_certs.h"
#include "tests/worker/fixture_util.h"
#include "worker/demo/random_model.h"
#include "worker/indexer/block_splitter.h"
#include "worker/indexer/index_command.h"
#include "worker/indexer/indexer.h"
#include "worker/indexer/remote_block_encoder.h"
#include "worker/service/runtime.h"
#include "worker/service/worker_server.h"

namespace kvblock {
namespace {

using testing::TempDir;

constexpr char kToken[] = "index-worker-token-7";

class RemoteIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rng_.seed(::testing::UnitTest::GetInstance()->random_seed());
    model_ = WriteModel("model", rng_());
    std::ofstream(dir_ / "token") << kToken << "\n";
    // Passages of 20..400 bytes (the byte tokenizer: as many tokens), 1..4 blocks of <= 128.
    corpus_ = dir_ / "corpus.jsonl";
    std::ofstream out(corpus_);
    std::uniform_int_distribution<int> len(20, 400);
    for (int i = 0; i < 24; ++i) {
      std::string text;
      const int n = len(rng_);
      for (int c = 0; c < n; ++c) text.push_back(static_cast<char>('a' + rng_() % 26));
      texts_.push_back(text);
      out << nlohmann::json{{"id", i}, {"text", text}}.dump() << "\n";
    }
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  std::string WriteModel(const std::string& name, uint64_t seed) {
    RandomLlamaOptions mo;
    mo.hidden_size = 64;
    mo.intermediate_size = 128;
    mo.num_layers = 2;
    mo.num_heads = 4;
    mo.num_kv_heads = 2;
    mo.seed = seed;
    EXPECT_TRUE(WriteRandomLlama(dir_ / name, mo).ok());
    return dir_ / name;
  }

  // A worker over `model` with an embedded store of its own, calls limited to max_prompt_tokens;
  // `tls_dir` (if given) holds server.pem/server.key and the CA clients must be signed by.
  void StartWorker(const std::string& model, int64_t max_prompt_tokens,
                   const std::string& tls_dir = "") {
    RuntimeOptions ro;
    ro.model_dir = model;
    ro.cache_dir = dir_ / absl::StrCat("worker-cache", ++workers_);
    ro.memory_bytes = 16 << 20;
    absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(ro);
    ASSERT_TRUE(rt.ok()) << rt.status();
    worker_runtime_ = *std::move(rt);
    WorkerServerOptions so;
    so.listen = "127.0.0.1:0";
    so.auth_token_file = dir_ / "token";
    so.core.max_prompt_tokens = max_prompt_tokens;
    if (!tls_dir.empty()) {
      so.tls_cert = tls_dir + "/server.pem";
      so.tls_key = tls_dir + "/server.key";
      so.client_ca = tls_dir + "/ca.pem";
    }
    absl::StatusOr<std::unique_ptr<WorkerServer>> server =
        WorkerServer::Start(worker_runtime_.get(), so);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  void StopWorker() {
    server_->Shutdown();
    server_.reset();
    worker_runtime_.reset();
  }

  // The indexer's side: the model's tokenizer, config and fingerprint and an embedded store.
  std::unique_ptr<Runtime> OpenIndexerRuntime(const std::string& store, bool load_engine) {
    RuntimeOptions ro;
    ro.model_dir = model_;
    ro.cache_dir = dir_ / store;
    ro.memory_bytes = 16 << 20;
    ro.load_engine = load_engine;
    absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(ro);
    EXPECT_TRUE(rt.ok()) << rt.status();
    return rt.ok() ? *std::move(rt) : nullptr;
  }

  absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> Connect(const Runtime& rt,
                                                              bool with_token = true,
                                                              ClientCredentials credentials = {}) {
    RemoteEncoderOptions o;
    o.address = server_->grpc_address();
    o.credentials = std::move(credentials);
    if (with_token) o.credentials.auth_token = kToken;
    o.call_timeout = absl::Seconds(30);
    return RemoteBlockEncoder::Connect(o, rt.model.fingerprint, KvDtype::kF32, rt.model.config);
  }

  IndexerOptions Options(const std::string& manifest) {
    IndexerOptions o;
    o.max_block_tokens = 128;
    o.batch_tokens = 1024;
    o.manifest_path = dir_ / manifest;
    return o;
  }

  // Every block of the corpus, by key.
  std::vector<BlockKey> CorpusKeys(const Runtime& rt, const BlockEncoder& encoder) {
    std::vector<BlockKey> keys;
    for (const std::string& t : texts_) {
      auto blocks = SplitIntoBlocks(*rt.tokenizer, t, 128);
      EXPECT_TRUE(blocks.ok());
      for (const auto& b : *blocks) keys.push_back(encoder.KeyOf(b));
    }
    return keys;
  }

  // The local reference: the corpus indexed with the indexer's own engine.
  std::unique_ptr<Runtime> LocalIndex(IndexReport* report) {
    std::unique_ptr<Runtime> rt = OpenIndexerRuntime("local-store", /*load_engine=*/true);
    if (rt == nullptr) return nullptr;
    LocalBlockEncoder encoder(rt->engine.get());
    absl::StatusOr<IndexReport> r =
        Indexer(&encoder, rt->tokenizer.get(), rt->store, Options("local.json")).Run(corpus_);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) *report = *r;
    return rt;
  }

  // Every key holds the same bytes in both stores.
  void ExpectSameContents(absl::Span<const BlockKey> keys, BlockStore& a, BlockStore& b) {
    for (const BlockKey& k : keys) {
      absl::StatusOr<BlockBytes> x = a.Get(k);
      absl::StatusOr<BlockBytes> y = b.Get(k);
      ASSERT_TRUE(x.ok()) << k.ToHex() << ": " << x.status();
      ASSERT_TRUE(y.ok()) << k.ToHex() << ": " << y.status();
      EXPECT_EQ(std::vector<uint8_t>(x->bytes.begin(), x->bytes.end()),
                std::vector<uint8_t>(y->bytes.begin(), y->bytes.end()))
          << k.ToHex();
    }
  }

  TempDir dir_;
  std::mt19937_64 rng_;
  std::string model_;
  std::string corpus_;
  std::vector<std::string> texts_;
  int workers_ = 0;
  std::unique_ptr<Runtime> worker_runtime_;
  std::unique_ptr<WorkerServer> server_;
};

TEST_F(RemoteIndexTest, ByteIdenticalToALocalIndexInCallsWithinTheWorkersLimit) {
  IndexReport local_report;
  std::unique_ptr<Runtime> local = LocalIndex(&local_report);
  ASSERT_NE(local, nullptr);
  ASSERT_GT(local_report.blocks_encoded, 24);

  ASSERT_NO_FATAL_FAILURE(StartWorker(model_, /*max_prompt_tokens=*/300));
  std::unique_ptr<Runtime> rt = OpenIndexerRuntime("remote-store", /*load_engine=*/false);
  ASSERT_NE(rt, nullptr);
  EXPECT_EQ(rt->engine, nullptr);
  EXPECT_EQ(rt->model.weights, nullptr);  // the indexer host loads no weights
  EXPECT_EQ(Connect(*rt, /*with_token=*/false).status().code(), absl::StatusCode::kUnauthenticated);
  absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> encoder = Connect(*rt);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  EXPECT_EQ((*encoder)->max_block_tokens(), 300);
  absl::StatusOr<IndexReport> r =
      Indexer(encoder->get(), rt->tokenizer.get(), rt->store, Options("remote.json")).Run(corpus_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->complete);
  EXPECT_EQ(r->blocks, local_report.blocks);
  EXPECT_EQ(r->blocks_encoded, local_report.blocks_encoded);
  EXPECT_EQ(r->bytes_written, local_report.bytes_written);
  // Batches of ~1024 tokens went out in calls of <= 300 tokens (blocks <= 128 tokens each).
  EXPECT_GE((*encoder)->calls(), (r->tokens + 299) / 300);
  EXPECT_GT((*encoder)->calls(), r->batches);

  const std::vector<BlockKey> keys = CorpusKeys(*rt, **encoder);
  ExpectSameContents(keys, *local->store, *rt->store);
  // The worker returned the payloads and stored none of them.
  std::vector<LookupResult> found(keys.size());
  worker_runtime_->store->Lookup(keys, absl::MakeSpan(found));
  for (const LookupResult& f : found) EXPECT_FALSE(f.present);
}

TEST_F(RemoteIndexTest, AWorkerOfAnotherModelIsRefused) {
  ASSERT_NO_FATAL_FAILURE(StartWorker(WriteModel("other-model", rng_() + 1), 8192));
  std::unique_ptr<Runtime> rt = OpenIndexerRuntime("store", /*load_engine=*/false);
  ASSERT_NE(rt, nullptr);
  absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> encoder = Connect(*rt);
  ASSERT_EQ(encoder.status().code(), absl::StatusCode::kFailedPrecondition) << encoder.status();
  EXPECT_NE(encoder.status().message().find(rt->model.fingerprint.ToHex()), std::string::npos)
      << encoder.status();
  EXPECT_NE(encoder.status().message().find(worker_runtime_->model.fingerprint.ToHex()),
            std::string::npos)
      << encoder.status();
}

TEST_F(RemoteIndexTest, AWorkerThatGoesAwayStopsTheRunAndResumeCompletesIt) {
  IndexReport local_report;
  std::unique_ptr<Runtime> local = LocalIndex(&local_report);
  ASSERT_NE(local, nullptr);
  std::unique_ptr<Runtime> rt = OpenIndexerRuntime("remote-store", /*load_engine=*/false);
  ASSERT_NE(rt, nullptr);
  IndexerOptions o = Options("remote.json");

  ASSERT_NO_FATAL_FAILURE(StartWorker(model_, 8192));
  absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> encoder = Connect(*rt);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  o.max_batches = 1;
  absl::StatusOr<IndexReport> first =
      Indexer(encoder->get(), rt->tokenizer.get(), rt->store, o).Run(corpus_);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_FALSE(first->complete);
  std::ifstream in(o.manifest_path);
  const nlohmann::json recorded = nlohmann::json::parse(in);

  StopWorker();
  o.max_batches = 0;
  o.resume = true;
  Indexer stopped(encoder->get(), rt->tokenizer.get(), rt->store, o);
  absl::StatusOr<IndexReport> second = stopped.Run(corpus_);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_EQ(stopped.failed_stage(), Indexer::Stage::kEncode);
  std::ifstream again(o.manifest_path);
  EXPECT_EQ(nlohmann::json::parse(again), recorded);  // nothing recorded past the first batch

  ASSERT_NO_FATAL_FAILURE(StartWorker(model_, 8192));
  encoder = Connect(*rt);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  absl::StatusOr<IndexReport> third =
      Indexer(encoder->get(), rt->tokenizer.get(), rt->store, o).Run(corpus_);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(third->complete);
  EXPECT_EQ(third->blocks, local_report.blocks);
  EXPECT_EQ(first->blocks_encoded + third->blocks_encoded, local_report.blocks_encoded);
  ExpectSameContents(CorpusKeys(*rt, **encoder), *local->store, *rt->store);
}

TEST_F(RemoteIndexTest, MutualTlsWithTheWorkerCredentialFlags) {
  // A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl now.
  const std::string d = dir_ / "tls";
  std::filesystem::create_directories(d);
  ASSERT_NO_FATAL_FAILURE(testing::MakeTestCertificates(d));
  ASSERT_NO_FATAL_FAILURE(StartWorker(model_, 8192, d));
  std::unique_ptr<Runtime> rt = OpenIndexerRuntime("store", /*load_engine=*/false);
  ASSERT_NE(rt, nullptr);
  // What --worker-tls-ca/--worker-tls-cert/--worker-tls-key give.
  ClientCredentialFlags flags{
      .tls_ca = d + "/ca.pem", .tls_cert = d + "/client.pem", .tls_key = d + "/client.key"};
  absl::StatusOr<ClientCredentials> creds = LoadClientCredentials(flags, "worker-");
  ASSERT_TRUE(creds.ok()) << creds.status();
  absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> encoder = Connect(*rt, true, *creds);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  absl::StatusOr<IndexReport> r =
      Indexer(encoder->get(), rt->tokenizer.get(), rt->store, Options("tls.json")).Run(corpus_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->blocks_encoded, static_cast<int64_t>(CorpusKeys(*rt, **encoder).size()));
  // Without a client certificate, or in plaintext, the worker is not reached.
  flags.tls_cert.clear();
  flags.tls_key.clear();
  creds = LoadClientCredentials(flags, "worker-");
  ASSERT_TRUE(creds.ok()) << creds.status();
  EXPECT_EQ(Connect(*rt, true, *creds).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Connect(*rt, true).status().code(), absl::StatusCode::kUnavailable);
  // A certificate without its key is refused before any connection, naming the flags.
  flags.tls_cert = d + "/client.pem";
  EXPECT_NE(LoadClientCredentials(flags, "worker-").status().message().find("--worker-tls-key"),
            std::string::npos);
}

TEST_F(RemoteIndexTest, VerifyPayloadRefusesCorruptAndForeignPayloads) {
  std::unique_ptr<Runtime> rt = OpenIndexerRuntime("store", /*load_engine=*/true);
  ASSERT_NE(rt, nullptr);
  std::vector<int32_t> tokens(37);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng_() % 256);
  absl::StatusOr<std::vector<uint8_t>> payload = rt->engine->EncodeBlock(tokens);
  ASSERT_TRUE(payload.ok()) << payload.status();
  absl::StatusOr<BlockView> view = BlockView::Parse(*payload);
  ASSERT_TRUE(view.ok());
  const BlockMeta meta = view->meta();
  EXPECT_TRUE(VerifyPayload(*payload, meta).ok());

  std::vector<uint8_t> flipped = *payload;
  flipped[kBlockHeaderBytes + rng_() % (flipped.size() - kBlockHeaderBytes)] ^= 0x10;
  EXPECT_EQ(VerifyPayload(flipped, meta).code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> truncated(payload->begin(), payload->end() - 4);
  EXPECT_EQ(VerifyPayload(truncated, meta).code(), absl::StatusCode::kDataLoss);
  BlockMeta other = meta;
  tokens[0] = (tokens[0] + 1) % 256;
  other.key = rt->engine->KeyOf(tokens);  // another block's key
  absl::Status s = VerifyPayload(*payload, other);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(other.key.ToHex()), std::string::npos) << s;
  other = meta;
  other.model = Hash128{rng_(), rng_()};  // another model
  EXPECT_EQ(VerifyPayload(*payload, other).code(), absl::StatusCode::kDataLoss);
}

TEST_F(RemoteIndexTest, CommandExitCodes) {
  const std::string base =
      absl::StrCat(KVBLOCK_BIN, " index --model ", model_, " --corpus ", corpus_, " --cache-dir ",
                   dir_ / "cli-store", " --memory-mb 16 --worker-auth-token-file ", dir_ / "token");
  // Nobody listens: the worker is unavailable (4), nothing recorded.
  testing::CommandRun r = testing::RunCommand(base + " --worker 127.0.0.1:1 --worker-timeout-s 5");
  EXPECT_EQ(r.exit_code, kIndexExitWorkerUnavailable) << r.output;
  EXPECT_NE(r.output.find("worker 127.0.0.1:1"), std::string::npos) << r.output;
  // A bad address, and a worker of another model, are usage errors (1).
  r = testing::RunCommand(base + " --worker 127.0.0.1:99999");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  ASSERT_NO_FATAL_FAILURE(StartWorker(WriteModel("other-model", rng_() + 1), 8192));
  r = testing::RunCommand(base + " --worker " + server_->grpc_address());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("serves model"), std::string::npos) << r.output;
  // --cache and --cache-dir together are refused.
  r = testing::RunCommand(base + " --cache 127.0.0.1:1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("exactly one of --cache"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kvblock
