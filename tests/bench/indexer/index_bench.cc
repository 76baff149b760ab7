// Indexer throughput (tokens/s, blocks/s, MB/s of KV written) of the real Indexer behind
// `kvblock index`, into an embedded store (memory over RocksDB), into a 2-node cache cluster
// (two in-process CacheServers on loopback, R=2, gRPC), and into an embedded store with the
// blocks encoded by a worker (`kvblock index --worker`: an in-process WorkerServer on loopback
// over the same model and the same cores, its EncodeBlocks returning the payloads), against the
// engine's pure encode rate (Engine::EncodeBlock over the same blocks, nothing stored) measured
// in the same run: these machines are noisy, so the ratios are the result. The four are
// interleaved for --rounds rounds (each round indexes into fresh keys: a new embedded store, and
// a per-round --model-id on the cluster); every round is printed, and the best rate of each with
// the ratios of the bests.
//
//   index_bench [--passages 100] [--words 60] [--rounds 3] [--hidden 128] [--layers 4]
//               [--json FILE] [--smoke]
//
// The corpus is random English-like words (a fresh seed per run), one passage per JSONL line,
// split by the indexer's own block splitter (max 512 tokens). Exit 1 when an index run does not
// encode every block or the cluster does not end up holding them.
#include <unistd.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "services/cache_server.h"
#include "worker/demo/random_model.h"
#include "worker/indexer/block_splitter.h"
#include "worker/indexer/indexer.h"
#include "worker/indexer/remote_block_encoder.h"
#include "worker/service/runtime.h"
#include "worker/service/worker_server.h"

namespace kvblock {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct BenchOptions {
  int passages = 100;        // corpus lines
  int rounds = 3;            // interleaved rounds of the four measurements
  int words = 60;            // words per passage (~6 bytes = ~6 byte-level tokens each)
  RandomLlamaOptions model;  // hidden/layers set in main
  std::string json_path;
  bool smoke = false;
};

struct Rate {
  std::string name;
  int64_t tokens = 0, blocks = 0, bytes = 0;
  double seconds = 0;
  nlohmann::json Json(double encode_tokens_per_s) const {
    return {{"name", name},
            {"tokens", tokens},
            {"blocks", blocks},
            {"bytes", bytes},
            {"seconds", seconds},
            {"tokens_per_s", tokens / seconds},
            {"blocks_per_s", blocks / seconds},
            {"mb_per_s", bytes / seconds / 1e6},
            {"fraction_of_encode", tokens / seconds / encode_tokens_per_s}};
  }
};

std::string WriteCorpus(const fs::path& dir, const BenchOptions& o,
                        std::vector<std::string>* texts) {
  static const char* kWords[] = {"river",  "harbor",  "mill",   "bridge", "market",  "castle",
                                 "valley", "station", "school", "winter", "summer",  "north",
                                 "south",  "old",     "new",    "built",  "founded", "town",
                                 "people", "trade",   "salt",   "wool",   "church",  "road"};
  std::mt19937_64 rng(std::random_device{}());
  const fs::path path = dir / "corpus.jsonl";
  std::ofstream out(path);
  for (int i = 0; i < o.passages; ++i) {
    std::string text = absl::StrCat("Passage ", i, ":");
    for (int w = 0; w < o.words; ++w) absl::StrAppend(&text, " ", kWords[rng() % 24]);
    out << nlohmann::json{{"id", absl::StrCat("p", i)}, {"text", text}}.dump() << "\n";
    texts->push_back(std::move(text));
  }
  return path.string();
}

// Runs the indexer over `corpus` into the runtime's store, encoding with `encoder`.
absl::StatusOr<Rate> IndexInto(Runtime& rt, BlockEncoder& encoder, const std::string& name,
                               const std::string& corpus, const fs::path& manifest) {
  IndexerOptions io;
  io.manifest_path = manifest.string();
  Indexer indexer(&encoder, rt.tokenizer.get(), rt.store, io);
  absl::StatusOr<IndexReport> r = indexer.Run(corpus);
  if (!r.ok()) return r.status();
  if (!r->complete || r->blocks_encoded != r->blocks) {
    return absl::InternalError(
        absl::StrCat(name, ": encoded ", r->blocks_encoded, " of ", r->blocks, " blocks"));
  }
  return Rate{name, r->tokens, r->blocks_encoded, r->bytes_written, r->seconds};
}

int Fail(const absl::Status& s) {
  std::cerr << "index_bench: " << s << "\n";
  return 1;
}

int Run(BenchOptions o) {
  if (o.smoke) {
    o.passages = 12;
    o.words = 20;
    o.rounds = 1;
    o.model.hidden_size = 64;
    o.model.intermediate_size = 128;
    o.model.num_layers = 2;
  }
  if (o.passages <= 0 || o.words <= 0 || o.rounds <= 0) {
    return Fail(absl::InvalidArgumentError("--passages, --words and --rounds must be > 0"));
  }
  o.model.max_position_embeddings = 2048;
  const fs::path dir = fs::temp_directory_path() / absl::StrCat("kvblock-index-bench-", getpid());
  fs::create_directories(dir);
  if (absl::Status s = WriteRandomLlama((dir / "model").string(), o.model); !s.ok()) return Fail(s);
  std::vector<std::string> texts;
  const std::string corpus = WriteCorpus(dir, o, &texts);

  // Encode-only runtime (its store is unused), and the blocks the indexer will make.
  RuntimeOptions embedded;
  embedded.model_dir = (dir / "model").string();
  embedded.cache_dir = (dir / "unused").string();
  embedded.memory_bytes = uint64_t{512} << 20;
  absl::StatusOr<std::unique_ptr<Runtime>> encoder = OpenRuntime(embedded);
  if (!encoder.ok()) return Fail(encoder.status());
  std::vector<std::vector<int32_t>> blocks;
  for (const std::string& t : texts) {
    absl::StatusOr<std::vector<std::vector<int32_t>>> b =
        SplitIntoBlocks(*(*encoder)->tokenizer, t, IndexerOptions{}.max_block_tokens);
    if (!b.ok()) return Fail(b.status());
    blocks.insert(blocks.end(), b->begin(), b->end());
  }

  // Two cache nodes for the cluster runs.
  std::vector<std::unique_ptr<CacheServer>> nodes;
  RuntimeOptions cluster = embedded;
  cluster.cache_dir.clear();
  cluster.local_tier = false;
  cluster.cluster.replication = 2;
  for (int i = 0; i < 2; ++i) {
    CacheServerOptions so;
    so.listen = "127.0.0.1:0";
    so.data_dir = (dir / absl::StrCat("node", i)).string();
    so.memory_bytes = uint64_t{1} << 30;  // holds every round's blocks: no eviction
    so.sync = "group-commit";
    absl::StatusOr<std::unique_ptr<CacheServer>> node = CacheServer::Start(so);
    if (!node.ok()) return Fail(node.status());
    cluster.cluster.members.push_back((*node)->grpc_address());
    nodes.push_back(*std::move(node));
  }

  // The worker for the --worker runs: serves the encode-only runtime's model (and engine).
  WorkerServerOptions wo;
  wo.listen = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<WorkerServer>> worker = WorkerServer::Start(encoder->get(), wo);
  if (!worker.ok()) return Fail(worker.status());

  std::vector<std::array<Rate, 4>> rounds;
  uint64_t stored = 0;
  for (int round = 0; round < o.rounds; ++round) {
    Rate encode{"encode only (Engine::EncodeBlock)"};
    const auto t0 = Clock::now();
    for (const auto& b : blocks) {
      absl::StatusOr<std::vector<uint8_t>> payload = (*encoder)->engine->EncodeBlock(b);
      if (!payload.ok()) return Fail(payload.status());
      encode.tokens += static_cast<int64_t>(b.size());
      encode.bytes += static_cast<int64_t>(payload->size());
      ++encode.blocks;
    }
    encode.seconds = std::chrono::duration<double>(Clock::now() - t0).count();

    RuntimeOptions fresh = embedded;
    fresh.cache_dir = (dir / absl::StrCat("embedded", round)).string();
    absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(fresh);
    if (!rt.ok()) return Fail(rt.status());
    LocalBlockEncoder local((*rt)->engine.get());
    absl::StatusOr<Rate> into_embedded =
        IndexInto(**rt, local, "index -> embedded store", corpus,
                  dir / absl::StrCat("manifest-embedded", round, ".json"));
    if (!into_embedded.ok()) return Fail(into_embedded.status());
    rt->reset();

    // The indexer side of --worker loads no weights.
    fresh.cache_dir = (dir / absl::StrCat("via-worker", round)).string();
    fresh.load_engine = false;
    rt = OpenRuntime(fresh);
    if (!rt.ok()) return Fail(rt.status());
    RemoteEncoderOptions ro;
    ro.address = (*worker)->grpc_address();
    absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> remote = RemoteBlockEncoder::Connect(
        ro, (*rt)->model.fingerprint, fresh.kv_dtype, (*rt)->model.config);
    if (!remote.ok()) return Fail(remote.status());
    absl::StatusOr<Rate> via_worker =
        IndexInto(**rt, **remote, "index --worker -> embedded store", corpus,
                  dir / absl::StrCat("manifest-via-worker", round, ".json"));
    if (!via_worker.ok()) return Fail(via_worker.status());
    rt->reset();

    cluster.model_id = absl::StrCat("index-bench-round-", round);  // fresh keys
    rt = OpenRuntime(cluster);
    if (!rt.ok()) return Fail(rt.status());
    LocalBlockEncoder cluster_encoder((*rt)->engine.get());
    absl::StatusOr<Rate> into_cluster =
        IndexInto(**rt, cluster_encoder, "index -> 2 cache nodes, R=2", corpus,
                  dir / absl::StrCat("manifest-cluster", round, ".json"));
    if (!into_cluster.ok()) return Fail(into_cluster.status());
    stored = 0;  // every round's blocks are on both nodes
    for (const TierStats& t : (*rt)->store->Stats()) {
      stored += t.tier == StoreTier::kMemory ? t.blocks : 0;
    }
    rt->reset();
    rounds.push_back({encode, *into_embedded, *into_cluster, *via_worker});
  }
  (*worker)->Shutdown();
  worker->reset();
  encoder->reset();
  nodes.clear();

  std::cout << absl::StrFormat("model: hidden %d, %d layers, %d params; corpus %d passages\n",
                               o.model.hidden_size, o.model.num_layers,
                               RandomLlamaParameterCount(o.model), o.passages);
  nlohmann::json report = {{"model",
                            {{"hidden", o.model.hidden_size},
                             {"intermediate", o.model.intermediate_size},
                             {"layers", o.model.num_layers},
                             {"params", RandomLlamaParameterCount(o.model)}}},
                           {"hardware_threads", std::thread::hardware_concurrency()},
                           {"passages", o.passages},
                           {"rounds", nlohmann::json::array()},
                           {"best", nlohmann::json::array()}};
  auto line = [](const Rate& r, double encode_tps) {
    return absl::StrFormat(
        "  %-36s %6d tokens %4d blocks %6.1f MB in %6.2f s: %7.0f tokens/s %6.1f blocks/s "
        "%5.1f MB/s (%.2f of encode)\n",
        r.name, r.tokens, r.blocks, r.bytes / 1e6, r.seconds, r.tokens / r.seconds,
        r.blocks / r.seconds, r.bytes / r.seconds / 1e6, r.tokens / r.seconds / encode_tps);
  };
  std::array<Rate, 4> best = rounds[0];
  for (size_t i = 0; i < rounds.size(); ++i) {
    const double encode_tps = rounds[i][0].tokens / rounds[i][0].seconds;
    std::cout << "round " << i + 1 << ":\n";
    nlohmann::json round = nlohmann::json::array();
    for (size_t k = 0; k < best.size(); ++k) {
      std::cout << line(rounds[i][k], encode_tps);
      round.push_back(rounds[i][k].Json(encode_tps));
      if (rounds[i][k].seconds < best[k].seconds) best[k] = rounds[i][k];
    }
    report["rounds"].push_back(round);
  }
  const double best_encode_tps = best[0].tokens / best[0].seconds;
  std::cout << "best of " << rounds.size() << " rounds:\n";
  for (const Rate& r : best) {
    std::cout << line(r, best_encode_tps);
    report["best"].push_back(r.Json(best_encode_tps));
  }
  std::cout << "cluster memory tiers hold " << stored << " blocks (2 x " << rounds.size() << " x "
            << blocks.size() << " expected)\n";
  if (!o.json_path.empty()) std::ofstream(o.json_path) << report.dump(2) << "\n";
  std::error_code ec;
  fs::remove_all(dir, ec);
  return stored == 2 * rounds.size() * blocks.size() ? 0 : 1;
}

}  // namespace
}  // namespace kvblock

int main(int argc, char** argv) {
  kvblock::BenchOptions o;
  o.model.hidden_size = 128;
  o.model.intermediate_size = 344;
  o.model.num_layers = 4;
  CLI::App app{"Indexer throughput: embedded store, 2-node cluster, via a worker vs pure encode"};
  app.add_option("--passages", o.passages, "Corpus lines")->capture_default_str();
  app.add_option("--words", o.words, "Words per passage")->capture_default_str();
  app.add_option("--rounds", o.rounds, "Interleaved rounds")->capture_default_str();
  app.add_option("--hidden", o.model.hidden_size, "Model width")->capture_default_str();
  app.add_option("--intermediate", o.model.intermediate_size, "MLP width")->capture_default_str();
  app.add_option("--layers", o.model.num_layers, "Decoder layers")->capture_default_str();
  app.add_option("--json", o.json_path, "Also write the results here");
  app.add_flag("--smoke", o.smoke, "Tiny model and corpus (ctest)");
  CLI11_PARSE(app, argc, argv);
  return kvblock::Run(o);
}
