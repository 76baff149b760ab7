// End to end with real processes on 127.0.0.1, as users run kvblock (issue 6's proof):
//  - ClusterFlowTest.WholeFlow: two `kvblock cache-server` nodes (R=2), `kvblock worker --cache
//    <both>`, `kvblock index --worker` of a generated corpus into them (the worker encodes, the
//    indexer writes); Generate from the C++ gRPC client and from Python grpcio equals `kvblock
//    generate` over an embedded store token for token (greedy; block mode, and full mode once);
//    a second pass is all hits; SIGKILL of one node while requests run loses none; a real
//    Prometheus scrapes the worker's /metrics and answers the TTFT histogram and the hit ratio.
//  - ClusterFlowTest.ErrorCodesThroughWorkerProcess: a `kvblock worker` with tight limits:
//    empty final block, unknown token ids and a too long prompt are INVALID_ARGUMENT, a passed
//    deadline DEADLINE_EXCEEDED, a full worker RESOURCE_EXHAUSTED, cancelled calls CANCELLED
//    (a queued one never runs, a decoding one stops long before it would have ended), each also
//    counted by the worker itself (its /metrics).
// Every wait is bounded. The Python part is skipped (and the test reported SKIPPED) only when
// scripts/python-env.sh finds PyPI unreachable, so grpcio cannot be installed.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvblock/v1/inference.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/auth.h"
#include "tests/services/metrics/external_tools.h"
#include "worker/demo/random_model.h"

namespace kvblock {
namespace {

using json = nlohmann::json;
using metrics::testing::HttpGet;
using metrics::testing::HttpResponse;
using metrics::testing::MakeTempDir;
using metrics::testing::PickFreePort;
using metrics::testing::PrometheusProcess;
using metrics::testing::PrometheusQuery;
using metrics::testing::PrometheusScalar;
using metrics::testing::ReadFileOrEmpty;
using metrics::testing::RunResult;
using metrics::testing::RunTool;
using metrics::testing::StartPrometheus;
using metrics::testing::Subprocess;
using metrics::testing::WaitFor;

constexpr char kToken[] = "e2e-bearer-token-31";

// One prompt: blocks as text (the worker and `kvblock generate` tokenize them), a final block.
struct Prompt {
  std::vector<std::string> blocks;
  std::string final_block;
  int max_new_tokens = 12;
  bool full = false;

  // The request format `kvblock generate` and tests/python/inference_client.py read.
  json Json() const {
    return {{"blocks", blocks},
            {"final_block", final_block},
            {"max_new_tokens", max_new_tokens},
            {"mode", full ? "full" : "block"}};
  }
  v1::GenerateRequest Proto() const {
    v1::GenerateRequest r;
    for (const std::string& b : blocks) r.add_blocks()->set_text(b);
    r.mutable_final_block()->set_text(final_block);
    r.mutable_sampling()->set_max_new_tokens(max_new_tokens);
    r.set_mode(full ? v1::ATTENTION_MODE_FULL : v1::ATTENTION_MODE_BLOCK);
    return r;
  }
};

// What one streamed Generate call returned (tokens of all messages concatenated).
struct Streamed {
  grpc::Status status;
  std::vector<int32_t> tokens;
  v1::GenerateResponse final_message;
  absl::Duration elapsed;
};

// Calls Generate with the bearer token. `on_first_message` (optional) runs after the first
// streamed message with the context, e.g. to cancel the call.
Streamed Generate(v1::InferenceService::Stub& stub, const v1::GenerateRequest& req,
                  absl::Duration timeout = absl::Seconds(60),
                  const std::function<void(grpc::ClientContext&)>& on_first_message = nullptr) {
  grpc::ClientContext ctx;
  ctx.AddMetadata(std::string(kAuthMetadataKey), BearerValue(kToken));
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  const absl::Time t0 = absl::Now();
  Streamed out;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(&ctx, req);
  v1::GenerateResponse msg;
  int messages = 0;
  while (reader->Read(&msg)) {
    out.tokens.insert(out.tokens.end(), msg.token_ids().begin(), msg.token_ids().end());
    if (msg.done()) out.final_message = msg;
    if (++messages == 1 && on_first_message) on_first_message(ctx);
  }
  out.status = reader->Finish();
  out.elapsed = absl::Now() - t0;
  return out;
}

// The value of the sample `series` (e.g. `name{a="b"}`) in a Prometheus text exposition; -1 when
// absent.
double SampleValue(const std::string& exposition, const std::string& series) {
  const std::string needle = "\n" + series + " ";
  const size_t at = exposition.find(needle);
  if (at == std::string::npos) return -1;
  return std::stod(exposition.substr(at + needle.size()));
}

int PortOf(const std::string& address) { return std::stoi(address.substr(address.rfind(':') + 1)); }

// A `kvblock` server process (cache-server or worker) that reports its addresses in a ready file.
struct ServerProcess {
  std::optional<Subprocess> process;
  json ready;

  // Starts `kvblock args... --ready-file DIR/NAME.ready` (log DIR/NAME.log) and waits (bounded)
  // until the ready file appears.
  absl::Status Start(const std::string& dir, const std::string& name,
                     std::vector<std::string> args) {
    const std::string ready_file = absl::StrCat(dir, "/", name, ".ready");
    std::remove(ready_file.c_str());
    args.insert(args.begin(), KVBLOCK_BIN);
    args.push_back("--ready-file");
    args.push_back(ready_file);
    absl::StatusOr<Subprocess> p = Subprocess::Start(args, absl::StrCat(dir, "/", name, ".log"));
    if (!p.ok()) return p.status();
    process.emplace(std::move(*p));
    const bool up = WaitFor(
        [&] {
          const std::string text = ReadFileOrEmpty(ready_file);
          if (text.empty()) return !process->Running();
          ready = json::parse(text, nullptr, /*allow_exceptions=*/false);
          return true;
        },
        absl::Seconds(60));
    if (!up || ready.is_discarded() || !ready.contains("grpc")) {
      return absl::UnavailableError(
          absl::StrCat("kvblock ", name, " did not become ready: ", process->Log()));
    }
    return absl::OkStatus();
  }
  std::string grpc() const { return ready["grpc"].get<std::string>(); }
  int metrics_port() const { return PortOf(ready["metrics"].get<std::string>()); }

  // The worker's own /metrics text ("" when it does not answer).
  std::string Metrics() const {
    absl::StatusOr<HttpResponse> r = HttpGet(metrics_port(), "/metrics");
    return r.ok() && r->status == 200 ? r->body : "";
  }
  double Metric(const std::string& series) const { return SampleValue(Metrics(), series); }

  std::unique_ptr<v1::InferenceService::Stub> Stub() const {
    return v1::InferenceService::NewStub(
        grpc::CreateChannel(grpc(), grpc::InsecureChannelCredentials()));
  }
};

// Random English-like words (no paper delimiters, so a passage is one block).
std::string RandomSentence(std::mt19937_64& rng, int words) {
  static const char* kWords[] = {
      "river",  "harbor", "mill",  "bridge", "market", "castle", "valley", "station", "school",
      "winter", "summer", "north", "south",  "old",    "new",    "built",  "founded", "town",
      "people", "trade",  "salt",  "wool",   "church", "road",   "hill",   "forest",  "lake",
      "the",    "of",     "in",    "and",    "was",    "by",     "near",   "famous",  "small"};
  std::string s;
  for (int i = 0; i < words; ++i) {
    absl::StrAppend(&s, i == 0 ? "" : " ", kWords[rng() % (sizeof(kWords) / sizeof(kWords[0]))]);
  }
  return s;
}

std::string Question(std::mt19937_64& rng) {
  return absl::StrCat("\nQuestion: which ", RandomSentence(rng, 3), "?\nAnswer:");
}

class ClusterFlowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const uint64_t seed = std::random_device{}();
    std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
    rng_.seed(seed);
    dir_ = MakeTempDir("e2e-cluster-flow");
    std::ofstream(dir_ + "/token") << kToken << "\n";
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);  // logs stay for a failed run
  }

  // A small random Llama (byte-level tokenizer) in DIR/NAME.
  std::string WriteModel(const std::string& name, RandomLlamaOptions o) {
    o.seed = rng_();
    const std::string path = absl::StrCat(dir_, "/", name);
    const absl::Status s = WriteRandomLlama(path, o);
    EXPECT_TRUE(s.ok()) << s;
    return path;
  }

  RunResult Kvblock(const std::vector<std::string>& args, absl::Duration timeout) {
    std::vector<std::string> argv = {KVBLOCK_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    absl::StatusOr<RunResult> r = RunTool(argv, timeout);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : RunResult{};
  }

  // Tokens `kvblock generate` produces for `p` with an embedded store of its own.
  std::vector<int32_t> Reference(const std::string& model, const Prompt& p) {
    const std::string base = absl::StrCat(dir_, "/ref", next_file_++);
    std::ofstream(base + ".json") << p.Json().dump();
    RunResult r = Kvblock(
        {"generate", "--model", model, "--request", base + ".json", "--output", base + ".out",
         "--cache-dir", dir_ + "/reference-store", "--cache-memory-mb", "64"},
        absl::Seconds(60));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    const json out = json::parse(ReadFileOrEmpty(base + ".out"), nullptr, false);
    if (out.is_discarded() || !out.contains("tokens")) {
      ADD_FAILURE() << "kvblock generate wrote no result: " << r.output;
      return {};
    }
    return out["tokens"].get<std::vector<int32_t>>();
  }

  std::mt19937_64 rng_;
  std::string dir_;
  int next_file_ = 0;
};

TEST_F(ClusterFlowTest, WholeFlow) {
  // grpcio for the Python client: installed (cached) by scripts/python-env.sh.
  absl::StatusOr<RunResult> env = RunTool(
      {"/bin/bash", absl::StrCat(KVBLOCK_SOURCE_DIR, "/scripts/python-env.sh")}, absl::Minutes(20));
  ASSERT_TRUE(env.ok()) << env.status();
  const bool have_python = env->exit_code == 0;
  ASSERT_TRUE(have_python || env->exit_code == 77) << env->output;
  const char* venv = std::getenv("KVBLOCK_VENV");
  const std::string python = absl::StrCat(
      venv != nullptr ? venv : absl::StrCat(KVBLOCK_SOURCE_DIR, "/.venv"), "/bin/python");

  RandomLlamaOptions mo;
  mo.hidden_size = 64;
  mo.intermediate_size = 160;
  mo.num_layers = 2;
  mo.num_heads = 4;
  mo.num_kv_heads = 2;
  mo.max_position_embeddings = 2048;
  const std::string model = WriteModel("model", mo);

  // Two cache nodes; R=2 puts every block on both.
  ServerProcess nodes[2];
  for (int i = 0; i < 2; ++i) {
    const absl::Status s =
        nodes[i].Start(dir_, absl::StrCat("node", i),
                       {"cache-server", "--listen", "127.0.0.1:0", "--ucx-listen",
                        absl::StrCat("127.0.0.1:", PickFreePort()), "--data-dir",
                        absl::StrCat(dir_, "/node", i), "--memory-bytes", "64MiB",
                        "--auth-token-file", dir_ + "/token", "--sync", "group-commit"});
    ASSERT_TRUE(s.ok()) << s;
  }
  const std::string members = absl::StrCat(nodes[0].grpc(), ",", nodes[1].grpc());

  // The corpus: passages short enough to be one block each.
  constexpr int kPassages = 48;
  std::vector<std::string> passages;
  {
    std::ofstream corpus(dir_ + "/corpus.jsonl");
    for (int i = 0; i < kPassages; ++i) {
      passages.push_back(absl::StrCat("Passage ", i, ": ", RandomSentence(rng_, 12 + i % 9), "."));
      corpus << json{{"id", absl::StrCat("p", i)}, {"text", passages.back()}}.dump() << "\n";
    }
  }
  ServerProcess worker;
  const absl::Status up =
      worker.Start(dir_, "worker",
                   {"worker", "--model", model, "--cache", members, "--replication", "2",
                    "--cache-auth-token-file", dir_ + "/token", "--listen", "127.0.0.1:0",
                    "--metrics-listen", "127.0.0.1:0", "--auth-token-file", dir_ + "/token",
                    "--max-concurrent", "2", "--queue-size", "16", "--encode-batch-tokens", "512"});
  ASSERT_TRUE(up.ok()) << up;
  std::unique_ptr<v1::InferenceService::Stub> stub = worker.Stub();

  // The indexer borrows the worker's backend (EncodeBlocks) and writes to the cluster itself.
  RunResult index = Kvblock(
      {"index", "--model", model, "--corpus", dir_ + "/corpus.jsonl", "--cache", members,
       "--replication", "2", "--auth-token-file", dir_ + "/token", "--batch-tokens", "1024",
       "--worker", worker.grpc(), "--worker-auth-token-file", dir_ + "/token",
       // No progress lines (they carry the same "blocks N (encoded N" text): only the report.
       "--progress-interval-s", "1e9"},
      absl::Seconds(120));
  ASSERT_EQ(index.exit_code, 0) << index.output;
  EXPECT_NE(index.output.find("encoding on worker " + worker.grpc()), std::string::npos)
      << index.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(index.output, m, std::regex(R"(blocks (\d+) \(encoded (\d+))")))
      << index.output;
  EXPECT_EQ(std::stoi(m[1]), kPassages);
  EXPECT_EQ(std::stoi(m[2]), kPassages);

  // Prometheus scrapes the worker from now on. (Started from this thread: its child dies with
  // the thread that forked it.)
  std::filesystem::create_directories(dir_ + "/prometheus");
  absl::StatusOr<PrometheusProcess> prometheus = StartPrometheus(
      {{"worker", worker.ready["metrics"].get<std::string>()}}, dir_ + "/prometheus");
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();

  // Prompts of the two passes: an instruction block (not indexed: the first use misses), three
  // passages 0..14, a question. One prompt in full mode.
  const std::string instruction = "You answer questions about towns. Use the passages below.\n";
  std::vector<Prompt> pass;
  for (int i = 0; i < 5; ++i) {
    pass.push_back(
        {{instruction, passages[3 * i], passages[3 * i + 1], passages[3 * i + 2]}, Question(rng_)});
  }
  pass.push_back({{instruction, passages[1], passages[4]}, Question(rng_), 12, /*full=*/true});
  // Prompts run while a node is killed: passages 15..47, each with its own new instruction.
  std::vector<Prompt> under_kill;
  for (int i = 15; i + 2 < kPassages; i += 3) {
    under_kill.push_back({{absl::StrCat("Instruction ", i, ": answer briefly.\n"), passages[i],
                           passages[i + 1], passages[i + 2]},
                          Question(rng_)});
  }
  std::vector<std::vector<int32_t>> pass_ref, kill_ref;
  for (const Prompt& p : pass) pass_ref.push_back(Reference(model, p));
  for (const Prompt& p : under_kill) kill_ref.push_back(Reference(model, p));

  // Pass 1 (C++ client): passages come from the cluster (none is on the worker yet), the
  // instruction is computed once; equal to `kvblock generate` token for token.
  int64_t hits = 0, misses = 0, generated_ok = 0;
  for (size_t i = 0; i < pass.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("pass 1, prompt ", i));
    Streamed r = Generate(*stub, pass[i].Proto());
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ++generated_ok;
    ASSERT_FALSE(pass_ref[i].empty());
    EXPECT_EQ(r.tokens, pass_ref[i]);
    const v1::CacheReport& c = r.final_message.cache();
    hits += c.hits();
    misses += c.misses();
    if (pass[i].full) {
      EXPECT_EQ(c.hits() + c.misses(), 0u);  // full mode uses no block cache
    } else {
      EXPECT_EQ(c.misses(), i == 0 ? 1u : 0u);  // the instruction, the first time only
      EXPECT_EQ(c.hits(), i == 0 ? 3u : 4u);
    }
    if (i == 0) EXPECT_EQ(c.gpu_hits(), 0u);  // the passages came from the cache nodes
  }
  // Pass 2: all hits, same tokens.
  for (size_t i = 0; i < pass.size(); ++i) {
    if (pass[i].full) continue;
    SCOPED_TRACE(absl::StrCat("pass 2, prompt ", i));
    Streamed r = Generate(*stub, pass[i].Proto());
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ++generated_ok;
    EXPECT_EQ(r.tokens, pass_ref[i]);
    EXPECT_EQ(r.final_message.cache().misses(), 0u);
    EXPECT_EQ(r.final_message.cache().hits(), pass[i].blocks.size());
    hits += r.final_message.cache().hits();
  }
  // The instruction block computed in pass 1 went to the cluster in the background, and the
  // passages read from the cluster were copied into the worker's local tier (none skipped).
  EXPECT_TRUE(WaitFor([&] { return worker.Metric("kvblock_worker_write_backs_total") >= 1; },
                      absl::Seconds(10)))
      << worker.Metrics();
  EXPECT_EQ(worker.Metric("kvblock_worker_write_back_errors_total"), 0);
  EXPECT_EQ(worker.Metric("kvblock_worker_write_backs_dropped_total"), 0);
  EXPECT_EQ(worker.Metric("kvblock_worker_promotions_skipped_total"), 0);

  // Python grpcio client, same prompts: same tokens; by now all hits.
  if (have_python) {
    json specs = json::array();
    for (const Prompt& p : pass) specs.push_back(p.Json());
    std::ofstream(dir_ + "/py_requests.json") << specs.dump();
    absl::StatusOr<RunResult> py = RunTool(
        {python, absl::StrCat(KVBLOCK_SOURCE_DIR, "/tests/python/inference_client.py"), "--address",
         worker.grpc(), "--token", kToken, "--proto-dir",
         absl::StrCat(KVBLOCK_SOURCE_DIR, "/proto"), "--requests", dir_ + "/py_requests.json"},
        absl::Seconds(120));
    ASSERT_TRUE(py.ok()) << py.status();
    ASSERT_EQ(py->exit_code, 0) << py->output;
    const json out = json::parse(py->output.substr(py->output.rfind("{\"results\"")));
    ASSERT_EQ(out["results"].size(), pass.size());
    for (size_t i = 0; i < pass.size(); ++i) {
      const json& r = out["results"][i];
      ASSERT_EQ(r["code"], "OK") << r.dump();
      ++generated_ok;
      EXPECT_EQ(r["tokens"].get<std::vector<int32_t>>(), pass_ref[i]) << "python prompt " << i;
      if (!pass[i].full) {
        EXPECT_EQ(r["misses"].get<int>(), 0);
        EXPECT_EQ(r["hits"].get<size_t>(), pass[i].blocks.size());
        hits += r["hits"].get<int>();
      }
    }
  }

  // SIGKILL one node while three clients run the remaining prompts: every call succeeds with the
  // reference tokens, the passages read from the surviving replica (fresh passages: none is on
  // the worker yet). The client finishing the second call kills the node at once, while the
  // others are mid-call; each client's calls after its second wait for the kill, so some
  // certainly start after it.
  std::atomic<int> started{0}, completed{0}, failed{0}, after_kill{0}, in_flight_at_kill{-1};
  std::atomic<int64_t> kill_hits{0}, kill_misses{0}, kill_local_hits{0};
  absl::Notification killed;
  std::atomic<int> kill_status{-1};
  std::vector<std::thread> clients;
  constexpr int kClients = 3;
  for (int t = 0; t < kClients; ++t) {
    clients.emplace_back([&, t] {
      std::unique_ptr<v1::InferenceService::Stub> s = worker.Stub();
      for (size_t i = t, n = 0; i < under_kill.size(); i += kClients, ++n) {
        if (n == 2 && !killed.WaitForNotificationWithTimeout(absl::Seconds(60))) return;
        if (killed.HasBeenNotified()) ++after_kill;
        ++started;
        Streamed r = Generate(*s, under_kill[i].Proto());
        if (!r.status.ok() || r.tokens != kill_ref[i]) {
          ++failed;
          ADD_FAILURE() << "prompt " << i << " around the kill: " << r.status.error_message();
        } else {
          kill_hits += r.final_message.cache().hits();
          kill_misses += r.final_message.cache().misses();
          kill_local_hits += r.final_message.cache().gpu_hits();
        }
        if (++completed == 2) {
          in_flight_at_kill = started.load() - completed.load();
          kill_status = kill(nodes[0].process->pid(), SIGKILL);
          killed.Notify();
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  ASSERT_TRUE(killed.HasBeenNotified());
  ASSERT_EQ(kill_status.load(), 0);
  EXPECT_EQ(*nodes[0].process->Wait(absl::Seconds(10)), 128 + SIGKILL);
  std::printf("kill: %d calls in flight when node 0 was killed, %d started after it, %d failed\n",
              in_flight_at_kill.load(), after_kill.load(), failed.load());
  EXPECT_GE(in_flight_at_kill.load(), 1);
  EXPECT_GE(after_kill.load(), static_cast<int>(under_kill.size()) - 2 * kClients);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(completed.load(), static_cast<int>(under_kill.size()));
  // The passages were all hits from the cluster, each new instruction a miss.
  EXPECT_EQ(kill_hits.load(), 3 * static_cast<int64_t>(under_kill.size()));
  EXPECT_EQ(kill_local_hits.load(), 0);
  EXPECT_EQ(kill_misses.load(), static_cast<int64_t>(under_kill.size()));
  generated_ok += static_cast<int64_t>(under_kill.size());
  hits += kill_hits.load();
  misses += kill_misses.load();

  // The worker's own counters agree with what the clients saw.
  const std::string exposition = worker.Metrics();
  EXPECT_EQ(SampleValue(exposition, "kvblock_worker_ttft_seconds_count"), generated_ok);
  const double worker_hits = SampleValue(exposition, "kvblock_cache_hits_total{tier=\"memory\"}") +
                             SampleValue(exposition, "kvblock_cache_hits_total{tier=\"remote\"}");
  EXPECT_EQ(worker_hits, hits);
  EXPECT_EQ(SampleValue(exposition, "kvblock_cache_misses_total"), misses);

  // Prometheus: once a scrape has seen the last request, the TTFT histogram series and the hit
  // ratio computed from the worker's counters are there, with the values the clients saw.
  const int prom = prometheus->port;
  const std::string job = "{job=\"worker\"}";
  ASSERT_TRUE(WaitFor(
      [&] {
        return PrometheusScalar(prom, "kvblock_worker_ttft_seconds_count" + job) == generated_ok;
      },
      absl::Seconds(30)))
      << PrometheusQuery(prom, "kvblock_worker_ttft_seconds_count").dump() << "\n"
      << prometheus->process.Log();
  const json buckets = PrometheusQuery(prom, "kvblock_worker_ttft_seconds_bucket" + job);
  EXPECT_GT(buckets.size(), 5u) << buckets.dump();
  EXPECT_EQ(
      PrometheusScalar(prom, "kvblock_worker_ttft_seconds_bucket{job=\"worker\",le=\"+Inf\"}"),
      generated_ok);
  const double p50 = PrometheusScalar(
      prom, "histogram_quantile(0.5, sum by (le) (kvblock_worker_ttft_seconds_bucket" + job + "))");
  EXPECT_GT(p50, 0);
  EXPECT_LT(p50, 30);
  const double ratio = PrometheusScalar(
      prom, "sum(kvblock_cache_hits_total" + job + ") / (sum(kvblock_cache_hits_total" + job +
                ") + sum(kvblock_cache_misses_total" + job + "))");
  EXPECT_NEAR(ratio, static_cast<double>(hits) / (hits + misses), 1e-9);
  std::printf("prometheus: %lld Generate calls, TTFT p50 %.1f ms, hit ratio %.3f (%lld/%lld)\n",
              static_cast<long long>(generated_ok), p50 * 1e3, ratio, static_cast<long long>(hits),
              static_cast<long long>(hits + misses));
  if (!have_python) {
    GTEST_SKIP() << "Python grpcio part skipped: PyPI is unreachable, so scripts/python-env.sh "
                    "cannot install grpcio: "
                 << env->output;
  }
}

TEST_F(ClusterFlowTest, ErrorCodesThroughWorkerProcess) {
  // A model large enough that a long full-mode prompt takes a while on one core.
  RandomLlamaOptions mo;
  mo.max_position_embeddings = 4096;
  const std::string model = WriteModel("model", mo);
  ServerProcess worker;
  const absl::Status up = worker.Start(
      dir_, "worker",
      {"worker", "--model", model, "--cache-dir", dir_ + "/store", "--memory-mb", "64", "--listen",
       "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--auth-token-file", dir_ + "/token",
       "--max-prompt-tokens", "2000", "--max-concurrent", "1", "--queue-size", "1"});
  ASSERT_TRUE(up.ok()) << up;
  std::unique_ptr<v1::InferenceService::Stub> stub = worker.Stub();
  std::uniform_int_distribution<int32_t> byte(0, 255);
  auto ids = [&](int n) {
    std::vector<int32_t> v(n);
    for (int32_t& x : v) x = byte(rng_);
    return v;
  };
  auto request = [&](int block_tokens, int final_tokens, int max_new, bool full) {
    v1::GenerateRequest r;
    if (block_tokens > 0) {
      const std::vector<int32_t> b = ids(block_tokens);
      r.add_blocks()->mutable_tokens()->mutable_ids()->Add(b.begin(), b.end());
    }
    const std::vector<int32_t> f = ids(final_tokens);
    r.mutable_final_block()->mutable_tokens()->mutable_ids()->Add(f.begin(), f.end());
    r.mutable_sampling()->set_max_new_tokens(max_new);
    r.set_mode(full ? v1::ATTENTION_MODE_FULL : v1::ATTENTION_MODE_BLOCK);
    return r;
  };
  auto code_count = [&](const std::string& code) {
    const double v = worker.Metric(
        absl::StrCat("kvblock_requests_total{method=\"Generate\",code=\"", code, "\"}"));
    return v < 0 ? 0.0 : v;
  };
  auto pending = [&] { return worker.Metric("kvblock_worker_pending_requests"); };

  // Bad requests.
  v1::GenerateRequest empty_final = request(20, 5, 4, false);
  empty_final.clear_final_block();
  EXPECT_EQ(Generate(*stub, empty_final).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest unknown_id = request(20, 5, 4, false);
  unknown_id.mutable_blocks(0)->mutable_tokens()->set_ids(7, kRandomLlamaVocab + 1000);
  Streamed r = Generate(*stub, unknown_id);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("vocabulary"), std::string::npos)
      << r.status.error_message();
  r = Generate(*stub, request(1990, 11, 4, false));  // 2001 > --max-prompt-tokens 2000
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("max_prompt_tokens"), std::string::npos)
      << r.status.error_message();
  EXPECT_EQ(code_count("INVALID_ARGUMENT"), 3);

  // The slow request (prefill-bound): a full-mode prompt grown until one run takes >= 1 s here
  // (or the longest allowed prompt), so the cases below have room on fast and slow machines.
  v1::GenerateRequest slow;
  Streamed baseline;
  for (int tokens : {500, 1000, 1990}) {
    slow = request(0, tokens, 16, /*full=*/true);
    baseline = Generate(*stub, slow);
    ASSERT_TRUE(baseline.status.ok()) << baseline.status.error_message();
    if (baseline.elapsed >= absl::Seconds(1)) break;
  }
  const double slow_ms = absl::ToDoubleMilliseconds(baseline.elapsed);
  std::printf("slow request: %d tokens, %.0f ms\n", slow.final_block().tokens().ids_size(),
              slow_ms);
  ASSERT_GT(slow_ms, 400) << "the slow request is too fast for the overload case below";

  // Deadline shorter than the work: DEADLINE_EXCEEDED for the client and in the worker's count
  // (gRPC also marks such a call cancelled; InferenceCore checks the deadline first).
  r = Generate(*stub, slow, absl::Milliseconds(slow_ms / 5));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(WaitFor([&] { return code_count("DEADLINE_EXCEEDED") == 1; }, absl::Seconds(30)))
      << worker.Metrics();
  const double cancelled_before = code_count("CANCELLED");

  // Overload: A runs, B waits in the one queue slot, C is refused; B is cancelled while queued
  // and never runs (only A reaches the TTFT histogram).
  ASSERT_TRUE(WaitFor([&] { return pending() == 0; }, absl::Seconds(30)));
  const double ttft_before = worker.Metric("kvblock_worker_ttft_seconds_count");
  Streamed a, b;
  std::thread ta([&] { a = Generate(*stub, slow); });
  ASSERT_TRUE(WaitFor([&] { return pending() == 1; }, absl::Seconds(10)));
  grpc::ClientContext b_ctx;
  b_ctx.AddMetadata(std::string(kAuthMetadataKey), BearerValue(kToken));
  const v1::GenerateRequest b_req = request(10, 10, 4, false);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> b_reader =
      stub->Generate(&b_ctx, b_req);
  ASSERT_TRUE(WaitFor([&] { return pending() == 2; }, absl::Seconds(10)));
  Streamed c = Generate(*stub, request(10, 10, 4, false));
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << c.status.error_message();
  b_ctx.TryCancel();
  v1::GenerateResponse ignored;
  while (b_reader->Read(&ignored)) {
  }
  EXPECT_EQ(b_reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ta.join();
  EXPECT_TRUE(a.status.ok()) << a.status.error_message();
  EXPECT_EQ(a.tokens, baseline.tokens);
  ASSERT_TRUE(WaitFor([&] { return pending() == 0; }, absl::Seconds(30)));
  EXPECT_EQ(worker.Metric("kvblock_worker_ttft_seconds_count"), ttft_before + 1);
  EXPECT_EQ(code_count("RESOURCE_EXHAUSTED"), 1);
  EXPECT_TRUE(
      WaitFor([&] { return code_count("CANCELLED") == cancelled_before + 1; }, absl::Seconds(10)))
      << worker.Metrics();

  // Cancellation of a running call while it decodes: the client cancels on the first streamed
  // message; the worker checks before every decode step, so it is idle again long before the
  // uncancelled call would have ended. A prompt whose greedy continuation runs to max_new_tokens
  // (no early EOS) is picked first, and timed uncancelled.
  constexpr int kLongDecode = 600;
  v1::GenerateRequest decode_heavy;
  Streamed uncancelled;
  for (int attempt = 0; attempt < 4; ++attempt) {
    decode_heavy = request(0, 32, kLongDecode, false);
    uncancelled = Generate(*stub, decode_heavy);
    ASSERT_TRUE(uncancelled.status.ok()) << uncancelled.status.error_message();
    if (uncancelled.tokens.size() == kLongDecode) break;
  }
  ASSERT_EQ(uncancelled.tokens.size(), static_cast<size_t>(kLongDecode))
      << "four random prompts all ended in EOS early";
  absl::Time cancelled_at;
  Streamed d = Generate(*stub, decode_heavy, absl::Seconds(60), [&](grpc::ClientContext& ctx) {
    ctx.TryCancel();
    cancelled_at = absl::Now();
  });
  EXPECT_EQ(d.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(d.tokens.size(), static_cast<size_t>(kLongDecode));
  ASSERT_TRUE(WaitFor([&] { return pending() == 0; }, absl::Seconds(30)));
  const double idle_ms = absl::ToDoubleMilliseconds(absl::Now() - cancelled_at);
  const double uncancelled_ms = absl::ToDoubleMilliseconds(uncancelled.elapsed);
  std::printf(
      "running call cancelled after %zu of %d tokens: worker idle %.0f ms later "
      "(uncancelled call %.0f ms)\n",
      d.tokens.size(), kLongDecode, idle_ms, uncancelled_ms);
  EXPECT_LT(idle_ms, std::max(uncancelled_ms / 2, 300.0));
  EXPECT_TRUE(
      WaitFor([&] { return code_count("CANCELLED") == cancelled_before + 2; }, absl::Seconds(10)))
      << worker.Metrics();
  const double ok_mark = code_count("OK");
  EXPECT_TRUE(Generate(*stub, request(10, 10, 4, false)).status.ok());
  EXPECT_EQ(code_count("OK"), ok_mark + 1);
}

}  // namespace
}  // namespace kvblock
