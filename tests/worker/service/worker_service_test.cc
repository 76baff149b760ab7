// `kvblock worker` end to end in-process: a random tiny Llama, an embedded store, a WorkerServer
// on 127.0.0.1:0 with a bearer token, and the generated C++ client.
#include <atomic>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "kvblock/v1/inference.grpc.pb.h"
#include "services/auth.h"
#include "services/proto_convert.h"
#include "tests/worker/fixture_util.h"
#include "worker/demo/random_model.h"
#include "worker/indexer/block_splitter.h"
#include "worker/service/inference_core.h"
#include "worker/service/runtime.h"
#include "worker/service/worker_server.h"

namespace kvblock {
namespace {

using testing::TempDir;

constexpr char kToken[] = "s3cret-token-123";

struct Streamed {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  int messages = 0;
  std::vector<int> tokens_per_message;
  v1::GenerateResponse final_message;
};

class WorkerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { rng_.seed(std::random_device{}()); }

  void Start(InferenceCoreOptions core = {}) {
    RandomLlamaOptions mo;
    mo.hidden_size = 64;
    mo.intermediate_size = 128;
    mo.num_layers = 2;
    mo.num_heads = 2;
    mo.num_kv_heads = 1;
    mo.max_position_embeddings = 4096;
    mo.seed = rng_();
    ASSERT_TRUE(WriteRandomLlama(dir_ / "model", mo).ok());
    RuntimeOptions ro;
    ro.model_dir = dir_ / "model";
    ro.cache_dir = dir_ / "cache";
    absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(ro);
    ASSERT_TRUE(rt.ok()) << rt.status();
    runtime_ = *std::move(rt);
    std::ofstream(dir_ / "token") << kToken << "\n";
    WorkerServerOptions so;
    so.listen = "127.0.0.1:0";
    so.metrics_listen = "127.0.0.1:0";
    so.auth_token_file = dir_ / "token";
    so.core = core;
    absl::StatusOr<std::unique_ptr<WorkerServer>> server = WorkerServer::Start(runtime_.get(), so);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::InferenceService::NewStub(
        grpc::CreateChannel(server_->grpc_address(), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  // HTTP status of a GET on the metrics endpoint; -1 when it does not answer.
  int HttpStatus(const std::string& path) {
    const std::string& addr = server_->metrics_address();
    httplib::Client http(addr.substr(0, addr.rfind(':')),
                         std::stoi(addr.substr(addr.rfind(':') + 1)));
    httplib::Result r = http.Get(path);
    return r ? r->status : -1;
  }

  // Value of one sample line of /metrics ("name{labels}"); -1 when absent.
  double Metric(const std::string& series) {
    const std::string& addr = server_->metrics_address();
    httplib::Client http(addr.substr(0, addr.rfind(':')),
                         std::stoi(addr.substr(addr.rfind(':') + 1)));
    httplib::Result r = http.Get("/metrics");
    if (!r || r->status != 200) return -2;
    const std::string needle = "\n" + series + " ";
    const size_t at = r->body.find(needle);
    if (at == std::string::npos) return -1;
    return std::stod(r->body.substr(at + needle.size()));
  }

  std::vector<int32_t> RandomIds(int n) {
    std::uniform_int_distribution<int32_t> d(0, 255);
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = d(rng_);
    return ids;
  }

  static void SetIds(v1::Segment* s, const std::vector<int32_t>& ids) {
    s->mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  }

  // One Generate call read to the end; `on_message` (optional) sees each message as it arrives
  // and may cancel the call through the context.
  Streamed Call(const v1::GenerateRequest& req, bool auth = true,
                absl::Duration timeout = absl::Seconds(60),
                const std::function<void(const v1::GenerateResponse&, grpc::ClientContext&)>&
                    on_message = nullptr) {
    grpc::ClientContext ctx;
    if (auth) ctx.AddMetadata(std::string(kAuthMetadataKey), BearerValue(kToken));
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    Streamed out;
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&ctx, req);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      ++out.messages;
      out.tokens_per_message.push_back(msg.token_ids_size());
      out.tokens.insert(out.tokens.end(), msg.token_ids().begin(), msg.token_ids().end());
      out.text += msg.text();
      if (msg.done()) out.final_message = msg;
      if (on_message) on_message(msg, ctx);
    }
    out.status = reader->Finish();
    return out;
  }

  // A token-id request whose greedy continuation (by the runtime's engine) has at least
  // `min_tokens` tokens before any EOS, so a test can count on that many decode steps.
  v1::GenerateRequest LongRequest(int min_tokens, int max_new_tokens) {
    for (int attempt = 0; attempt < 20; ++attempt) {
      GenerateRequest direct;
      direct.blocks = {RandomIds(24)};
      direct.final_block = RandomIds(6);
      direct.max_new_tokens = min_tokens;
      absl::StatusOr<GenerateResult> r = runtime_->engine->Generate(direct);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok() || r->stop_reason != "max_new_tokens") continue;
      v1::GenerateRequest req;
      SetIds(req.add_blocks(), direct.blocks[0]);
      SetIds(req.mutable_final_block(), direct.final_block);
      req.mutable_sampling()->set_max_new_tokens(max_new_tokens);
      return req;
    }
    ADD_FAILURE() << "no prompt of 20 gave " << min_tokens << " tokens before EOS";
    return {};
  }

  std::mt19937_64 rng_;
  TempDir dir_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<WorkerServer> server_;
  std::unique_ptr<v1::InferenceService::Stub> stub_;
};

TEST(InferenceCoreOptionsTest, RefusesNonPositiveLimits) {
  EXPECT_TRUE(InferenceCoreOptions{}.Validate().ok());
  InferenceCoreOptions o;
  o.encode_batch_tokens = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = InferenceCoreOptions{};
  o.max_decode_batch = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WorkerServiceTest, ReadyUntilShutdown) {
  Start();
  EXPECT_EQ(HttpStatus("/healthz"), 200);
  EXPECT_EQ(HttpStatus("/readyz"), 200);  // Kubernetes routes traffic only on 200
}

TEST_F(WorkerServiceTest, GenerateMatchesEngineAndRepeatIsAllHits) {
  Start();
  GenerateRequest direct;
  v1::GenerateRequest req;
  for (int i = 0; i < 3; ++i) {
    direct.blocks.push_back(RandomIds(20 + 7 * i));
    SetIds(req.add_blocks(), direct.blocks.back());
  }
  direct.final_block = RandomIds(12);
  SetIds(req.mutable_final_block(), direct.final_block);
  direct.max_new_tokens = 40;
  req.mutable_sampling()->set_max_new_tokens(40);

  Streamed first = Call(req);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_FALSE(first.tokens.empty());
  EXPECT_TRUE(first.final_message.done());
  EXPECT_EQ(first.final_message.cache().hits(), 0u);
  EXPECT_EQ(first.final_message.cache().misses(), 3u);
  EXPECT_GT(first.final_message.timings().first_token_ms(), 0.0);
  EXPECT_GE(first.final_message.timings().total_ms(),
            first.final_message.timings().first_token_ms());
  // Tokens come in messages of 1 to 8 (stream_chunk_tokens), then the final message alone.
  ASSERT_GE(first.messages, static_cast<int>((first.tokens.size() + 7) / 8) + 1);
  for (int i = 0; i + 1 < first.messages; ++i) {
    EXPECT_GE(first.tokens_per_message[i], 1) << i;
    EXPECT_LE(first.tokens_per_message[i], 8) << i;
  }
  EXPECT_EQ(first.tokens_per_message.back(), 0);
  const std::string& reason = first.final_message.finish_reason();
  EXPECT_TRUE(reason == "length" ? first.tokens.size() == 40u : reason == "eos") << reason;

  Streamed second = Call(req);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.tokens, first.tokens);
  EXPECT_EQ(second.final_message.cache().hits(), 3u);
  EXPECT_EQ(second.final_message.cache().misses(), 0u);
  EXPECT_EQ(second.final_message.cache().gpu_hits(), 3u);  // the embedded store is local
  EXPECT_GT(second.final_message.cache().fetched_bytes(), 0u);

  // The engine directly, over the same store: same tokens, all hits.
  absl::StatusOr<GenerateResult> engine = runtime_->engine->Generate(direct);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ(engine->tokens, first.tokens);
  EXPECT_EQ(engine->cache_hits, 3);
  EXPECT_EQ(first.text, server_->core()->Decode(first.tokens));

  // BYPASS: computes every block again, same tokens.
  req.set_cache_policy(v1::CACHE_POLICY_BYPASS);
  Streamed bypass = Call(req);
  ASSERT_TRUE(bypass.status.ok()) << bypass.status.error_message();
  EXPECT_EQ(bypass.tokens, first.tokens);
  EXPECT_EQ(bypass.final_message.cache().hits(), 0u);
  EXPECT_EQ(bypass.final_message.cache().misses(), 3u);

  // Metrics: three Generate calls, one unauthenticated, TTFT observed per success, block hits
  // and misses as reported.
  EXPECT_EQ(Call(req, /*auth=*/false).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Metric("kvblock_requests_total{method=\"Generate\",code=\"OK\"}"), 3);
  EXPECT_EQ(Metric("kvblock_requests_total{method=\"Generate\",code=\"UNAUTHENTICATED\"}"), 1);
  EXPECT_EQ(Metric("kvblock_worker_ttft_seconds_count"), 3);
  EXPECT_EQ(Metric("kvblock_cache_hits_total{tier=\"memory\"}"), 3);
  EXPECT_EQ(Metric("kvblock_cache_misses_total"), 6);
}

TEST_F(WorkerServiceTest, ReadOnlyDoesNotWriteAndAutoSplitMatchesSplitter) {
  Start();
  std::string text;
  for (int i = 0; i < 4; ++i) {
    for (int32_t id : RandomIds(15)) text.push_back(static_cast<char>('a' + id % 26));
    text += "\n\n";
  }
  v1::GenerateRequest req;
  req.set_auto_split_text(text);
  req.set_auto_split_max_block_tokens(40);
  req.mutable_final_block()->set_text("question?");
  req.mutable_sampling()->set_max_new_tokens(10);
  req.set_cache_policy(v1::CACHE_POLICY_READ_ONLY);
  Streamed ro = Call(req);
  ASSERT_TRUE(ro.status.ok()) << ro.status.error_message();
  absl::StatusOr<std::vector<std::vector<int32_t>>> blocks =
      SplitIntoBlocks(*runtime_->tokenizer, text, 40);
  ASSERT_TRUE(blocks.ok());
  ASSERT_GT(blocks->size(), 1u);
  EXPECT_EQ(ro.final_message.cache().misses(), blocks->size());
  Streamed again = Call(req);  // still all misses: READ_ONLY wrote nothing
  EXPECT_EQ(again.final_message.cache().misses(), blocks->size());
  EXPECT_EQ(again.tokens, ro.tokens);

  GenerateRequest direct;
  direct.blocks = *blocks;
  direct.final_block = *runtime_->tokenizer->Encode("question?");
  direct.max_new_tokens = 10;
  absl::StatusOr<GenerateResult> engine = runtime_->engine->Generate(direct);
  ASSERT_TRUE(engine.ok());
  EXPECT_EQ(engine->tokens, ro.tokens);
}

TEST_F(WorkerServiceTest, BadRequestsAndAuth) {
  InferenceCoreOptions core;
  core.max_prompt_tokens = 100;
  Start(core);
  v1::GenerateRequest good;
  SetIds(good.add_blocks(), RandomIds(30));
  SetIds(good.mutable_final_block(), RandomIds(10));
  good.mutable_sampling()->set_max_new_tokens(4);

  v1::GenerateRequest empty_final = good;
  empty_final.clear_final_block();
  EXPECT_EQ(Call(empty_final).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest bad_id = good;
  bad_id.mutable_final_block()->mutable_tokens()->set_ids(3, kRandomLlamaVocab);
  Streamed r = Call(bad_id);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("vocabulary"), std::string::npos);
  v1::GenerateRequest too_long = good;
  SetIds(too_long.add_blocks(), RandomIds(61));  // 30 + 61 + 10 = 101 > 100
  r = Call(too_long);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("max_prompt_tokens"), std::string::npos);
  v1::GenerateRequest empty_block = good;
  empty_block.add_blocks();
  EXPECT_EQ(Call(empty_block).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  EXPECT_EQ(Call(good, /*auth=*/false).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext wrong;
  wrong.AddMetadata(std::string(kAuthMetadataKey), BearerValue("other-token"));
  v1::HealthResponse health;
  EXPECT_EQ(stub_->Health(&wrong, {}, &health).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext right;
  right.AddMetadata(std::string(kAuthMetadataKey), BearerValue(kToken));
  ASSERT_TRUE(stub_->Health(&right, {}, &health).ok());
  EXPECT_TRUE(health.ready());
  EXPECT_EQ(health.max_prompt_tokens(), 100u);
  EXPECT_EQ(health.model_fingerprint().hi(), runtime_->model.fingerprint.hi);
  EXPECT_EQ(health.backend(), "cpu");
  EXPECT_TRUE(Call(good).status.ok());

  // A deadline already passed: the core refuses before starting.
  absl::StatusOr<GenerateOutcome> late =
      server_->core()->Generate(good, absl::Now() - absl::Milliseconds(1));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(Call(good, true, absl::Milliseconds(-5)).status.error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(WorkerServiceTest, EncodeBlocksWritesAndReportsAlreadyCached) {
  Start();
  std::vector<std::vector<int32_t>> blocks = {RandomIds(17), RandomIds(23)};
  v1::EncodeBlocksRequest req;
  for (const auto& b : blocks) SetIds(req.add_blocks(), b);
  for (int round = 0; round < 2; ++round) {
    grpc::ClientContext ctx;
    ctx.AddMetadata(std::string(kAuthMetadataKey), BearerValue(kToken));
    v1::EncodeBlocksResponse resp;
    ASSERT_TRUE(stub_->EncodeBlocks(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.blocks_size(), 2);
    for (int i = 0; i < 2; ++i) {
      const BlockKey key = runtime_->engine->KeyOf(blocks[i]);
      EXPECT_EQ(resp.blocks(i).key().hi(), key.hi);
      EXPECT_EQ(resp.blocks(i).key().lo(), key.lo);
      EXPECT_EQ(resp.blocks(i).num_tokens(), blocks[i].size());
      EXPECT_EQ(resp.blocks(i).already_cached(), round == 1);
      absl::StatusOr<BlockBytes> got = runtime_->store->Get(key);
      ASSERT_TRUE(got.ok());
      absl::StatusOr<std::vector<uint8_t>> expect = runtime_->engine->EncodeBlock(blocks[i]);
      ASSERT_TRUE(expect.ok());
      EXPECT_TRUE(std::equal(got->bytes.begin(), got->bytes.end(), expect->begin(), expect->end()));
    }
  }
  // Generate over those blocks: all hits.
  v1::GenerateRequest gen;
  for (const auto& b : blocks) SetIds(gen.add_blocks(), b);
  SetIds(gen.mutable_final_block(), RandomIds(5));
  gen.mutable_sampling()->set_max_new_tokens(3);
  Streamed r = Call(gen);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.final_message.cache().hits(), 2u);
}

TEST_F(WorkerServiceTest, EncodeBlocksReturnsPayloadsWithoutCachingThemWithinTheLimit) {
  InferenceCoreOptions core;
  core.max_prompt_tokens = 64;
  Start(core);
  std::vector<std::vector<int32_t>> blocks = {RandomIds(17), RandomIds(23)};
  auto encode = [&](const std::vector<std::vector<int32_t>>& bs, v1::EncodeBlocksResponse* resp) {
    v1::EncodeBlocksRequest req;
    req.set_return_payloads(true);
    for (const auto& b : bs) SetIds(req.add_blocks(), b);
    grpc::ClientContext ctx;
    ctx.AddMetadata(std::string(kAuthMetadataKey), BearerValue(kToken));
    return stub_->EncodeBlocks(&ctx, req, resp);
  };
  v1::EncodeBlocksResponse resp;
  ASSERT_TRUE(encode(blocks, &resp).ok());
  ASSERT_EQ(resp.blocks_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const BlockKey key = runtime_->engine->KeyOf(blocks[i]);
    EXPECT_EQ(FromProto(resp.blocks(i).key()), key);
    EXPECT_FALSE(resp.blocks(i).already_cached());
    absl::StatusOr<std::vector<uint8_t>> expect = runtime_->engine->EncodeBlock(blocks[i]);
    ASSERT_TRUE(expect.ok());
    EXPECT_EQ(resp.blocks(i).payload(), std::string(expect->begin(), expect->end()));
    EXPECT_EQ(runtime_->store->Get(key).status().code(), absl::StatusCode::kNotFound);
  }
  // More tokens than max_prompt_tokens in one call is refused.
  const grpc::Status big = encode({RandomIds(40), RandomIds(30)}, &resp);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(big.error_message().find("64"), std::string::npos) << big.error_message();
}

TEST_F(WorkerServiceTest, OverloadIsResourceExhausted) {
  InferenceCoreOptions core;
  core.max_concurrent = 1;
  core.queue_size = 0;
  Start(core);
  InferenceCore* c = server_->core();
  v1::GenerateRequest req;
  SetIds(req.mutable_final_block(), RandomIds(8));
  req.mutable_sampling()->set_max_new_tokens(2);

  // Deterministic: request A is held on its prefill thread (in its cancellation check) while B
  // comes.
  absl::Notification release, a_done;
  std::atomic<bool> a_ok{false};
  c->GenerateAsync(
      req, absl::Now(), absl::InfiniteFuture(),
      [&] {
        release.WaitForNotification();
        return false;
      },
      nullptr,
      [&](absl::StatusOr<GenerateOutcome> r) {
        a_ok = r.ok();
        a_done.Notify();
      });
  for (int i = 0; i < 2000 && c->pending() != 1; ++i) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_EQ(c->pending(), 1);
  Streamed b = Call(req);
  EXPECT_EQ(b.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << b.status.error_message();
  release.Notify();
  a_done.WaitForNotification();
  EXPECT_TRUE(a_ok);

  // Two real concurrent slow requests over gRPC: while the first runs, the second is refused.
  v1::GenerateRequest slow;
  SetIds(slow.mutable_final_block(), RandomIds(1500));
  slow.set_mode(v1::ATTENTION_MODE_FULL);
  slow.mutable_sampling()->set_max_new_tokens(64);
  int exhausted = 0;
  for (int attempt = 0; attempt < 5 && exhausted == 0; ++attempt) {
    Streamed first;
    std::thread t([&] { first = Call(slow); });
    for (int i = 0; i < 5000 && c->pending() == 0; ++i) absl::SleepFor(absl::Microseconds(200));
    Streamed second = Call(slow);
    t.join();
    EXPECT_TRUE(first.status.ok()) << first.status.error_message();
    if (second.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++exhausted;
    } else {
      EXPECT_TRUE(second.status.ok()) << second.status.error_message();  // A finished first
    }
  }
  EXPECT_EQ(exhausted, 1);
}

// Tokens reach the client while generation goes on: the decode thread is held after its first
// step (by the step hook) until the client has read a message with a token, which only streaming
// can deliver; the rest follows in further messages.
TEST_F(WorkerServiceTest, TokensStreamWhileDecoding) {
  absl::Notification client_has_token;
  std::atomic<bool> hook_timed_out{false};
  std::atomic<int> steps{0};
  InferenceCoreOptions core;
  core.decode_step_hook = [&](int) {
    if (steps.fetch_add(1) == 0 &&
        !client_has_token.WaitForNotificationWithTimeout(absl::Seconds(30))) {
      hook_timed_out = true;
    }
  };
  Start(core);
  v1::GenerateRequest req = LongRequest(24, 24);
  int steps_when_first_read = -1;
  Streamed r = Call(req, true, absl::Seconds(60),
                    [&](const v1::GenerateResponse& msg, grpc::ClientContext&) {
                      if (msg.token_ids_size() > 0 && !client_has_token.HasBeenNotified()) {
                        steps_when_first_read = steps.load();
                        client_has_token.Notify();
                      }
                    });
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_FALSE(hook_timed_out) << "the first token reached the client only after generation";
  EXPECT_LE(steps_when_first_read, 1);  // at most the first step had run (and was held)
  EXPECT_EQ(r.tokens.size(), 24u);
  EXPECT_EQ(steps.load(), 23);  // one token from the prefill, one per step
  int token_messages = 0;
  for (int n : r.tokens_per_message) token_messages += n > 0;
  EXPECT_GE(token_messages, 2);
  EXPECT_EQ(r.final_message.finish_reason(), "length");
  EXPECT_EQ(r.text, server_->core()->Decode(r.tokens));
}

// A request cancelled mid-decode stops at the next step: the hook cancels after step 5, so the
// request ends with exactly the prefill's token and five more. A passed deadline does the same;
// over gRPC, a client that cancels after its first message frees the worker long before
// max_new_tokens.
TEST_F(WorkerServiceTest, CancellationAndDeadlineStopDecodingWithinAStep) {
  std::atomic<int> steps{0};
  std::atomic<bool> cancel{false};
  std::atomic<int> cancel_after{-1};
  std::atomic<int64_t> late_until_us{0};
  InferenceCoreOptions core;
  core.decode_step_hook = [&](int) {
    const int n = steps.fetch_add(1) + 1;
    if (n == cancel_after.load()) cancel = true;
    // Deadline case: this step runs past the request's deadline.
    while (absl::ToUnixMicros(absl::Now()) < late_until_us.load()) {
      absl::SleepFor(absl::Milliseconds(1));
    }
  };
  Start(core);
  InferenceCore* c = server_->core();
  v1::GenerateRequest req = LongRequest(8, 4000);

  auto run = [&](absl::Time deadline) {
    std::vector<int32_t> streamed;
    absl::StatusOr<GenerateOutcome> result = absl::UnknownError("not run");
    absl::Notification finished;
    c->GenerateAsync(
        req, absl::Now(), deadline, [&] { return cancel.load(); },
        [&](absl::Span<const int32_t> t) { streamed.insert(streamed.end(), t.begin(), t.end()); },
        [&](absl::StatusOr<GenerateOutcome> r) {
          result = std::move(r);
          finished.Notify();
        });
    EXPECT_TRUE(finished.WaitForNotificationWithTimeout(absl::Seconds(60)));
    return std::make_pair(result.status(), streamed.size());
  };
  steps = 0;
  cancel_after = 5;
  auto [cancelled, cancelled_tokens] = run(absl::InfiniteFuture());
  EXPECT_EQ(cancelled.code(), absl::StatusCode::kCancelled) << cancelled;
  EXPECT_EQ(cancelled_tokens, 6u);
  EXPECT_EQ(steps.load(), 5);

  cancel = false;
  cancel_after = -1;
  steps = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(3);
  late_until_us = absl::ToUnixMicros(deadline) + 1000;  // the first step ends past the deadline
  auto [late, late_tokens] = run(deadline);
  late_until_us = 0;
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded) << late;
  EXPECT_LE(late_tokens, 2u);  // the prefill's token and at most the first step's
  EXPECT_LE(steps.load(), 1);

  steps = 0;
  Streamed r = Call(req, true, absl::Seconds(60),
                    [](const v1::GenerateResponse&, grpc::ClientContext& ctx) { ctx.TryCancel(); });
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 10000 && c->pending() != 0; ++i) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(c->pending(), 0);
  EXPECT_LT(steps.load(), 3999);
  const std::string series = "kvblock_requests_total{method=\"Generate\",code=\"CANCELLED\"}";
  for (int i = 0; i < 1000 && Metric(series) != 1; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(Metric(series), 1);
}

// Concurrent requests of different lengths, sampling settings and arrival times are decoded in
// shared steps (batches of up to max_decode_batch, round robin beyond it) and each gets exactly
// the tokens it gets alone (batches of 3 stay below CpuBackendOptions::gemm_min_rows, so every
// row is computed as it is alone).
TEST_F(WorkerServiceTest, ConcurrentRequestsAreBatchedAndMatchRunningAlone) {
  constexpr int kRequests = 5;
  std::atomic<int> steps{0};
  std::atomic<int> max_batch{0};
  std::atomic<bool> hold_first_step{true};
  InferenceCore* c = nullptr;
  InferenceCoreOptions core;
  core.max_concurrent = 8;
  core.max_decode_batch = 3;
  core.decode_step_hook = [&](int batch) {
    steps.fetch_add(1);
    int seen = max_batch.load();
    while (batch > seen && !max_batch.compare_exchange_weak(seen, batch)) {
    }
    // The first step waits (bounded) until a second request is decoding, so batching is certain.
    for (int i = 0; hold_first_step && i < 20000 && c->decoding() < 2; ++i) {
      absl::SleepFor(absl::Microseconds(500));
    }
    hold_first_step = false;
  };
  Start(core);
  c = server_->core();
  std::vector<v1::GenerateRequest> reqs;
  std::vector<GenerateRequest> direct(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    v1::GenerateRequest req = LongRequest(4, 12 + 9 * i);
    direct[i].blocks = {std::vector<int32_t>(req.blocks(0).tokens().ids().begin(),
                                             req.blocks(0).tokens().ids().end())};
    if (i % 2 == 1) {  // a second, longer block: different prompt lengths
      direct[i].blocks.push_back(RandomIds(10 + 13 * i));
      SetIds(req.add_blocks(), direct[i].blocks.back());
    }
    direct[i].final_block.assign(req.final_block().tokens().ids().begin(),
                                 req.final_block().tokens().ids().end());
    direct[i].max_new_tokens = static_cast<int32_t>(req.sampling().max_new_tokens());
    if (i >= 2) {  // seeded sampling for some
      req.mutable_sampling()->set_temperature(0.9f);
      req.mutable_sampling()->set_top_k(40);
      req.mutable_sampling()->set_seed(1000 + i);
      direct[i].sampling = {
          .temperature = 0.9f, .top_k = 40, .top_p = 1.0f, .seed = static_cast<uint64_t>(1000 + i)};
    }
    reqs.push_back(req);
  }
  std::vector<absl::StatusOr<GenerateOutcome>> results(kRequests, absl::UnknownError("not run"));
  std::vector<std::vector<int32_t>> streamed(kRequests);
  std::vector<absl::Notification> finished(kRequests);
  auto submit = [&](int i) {
    c->GenerateAsync(
        reqs[i], absl::Now(), absl::InfiniteFuture(), nullptr,
        [&, i](absl::Span<const int32_t> t) {
          streamed[i].insert(streamed[i].end(), t.begin(), t.end());
        },
        [&, i](absl::StatusOr<GenerateOutcome> r) {
          results[i] = std::move(r);
          finished[i].Notify();
        });
  };
  // Two at once, the others as decoding goes on.
  submit(0);
  submit(1);
  for (int i = 2; i < kRequests; ++i) {
    const int at = steps.load() + 3;
    for (int w = 0; w < 20000 && steps.load() < at && c->pending() > 0; ++w) {
      absl::SleepFor(absl::Microseconds(500));
    }
    submit(i);
  }
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(finished[i].WaitForNotificationWithTimeout(absl::Seconds(60))) << i;
    ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
    absl::StatusOr<GenerateResult> alone = runtime_->engine->Generate(direct[i]);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ(results[i]->tokens, alone->tokens) << "request " << i;
    EXPECT_EQ(streamed[i], results[i]->tokens) << "request " << i;
  }
  EXPECT_GE(max_batch.load(), 2);
  EXPECT_LE(max_batch.load(), 3);
}

}  // namespace
}  // namespace kvblock
