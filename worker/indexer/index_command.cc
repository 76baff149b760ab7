#include "worker/indexer/index_command.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "services/cache_client_config.h"
#include "services/client_credentials.h"
#include "worker/indexer/indexer.h"
#include "worker/indexer/remote_block_encoder.h"
#include "worker/service/runtime.h"

namespace kvblock {
namespace {

struct IndexFlags {
  std::string model;
  std::string model_id;
  std::string corpus;
  ClusterFlags cluster;   // --cache SPEC and the cluster client flags
  std::string cache_dir;  // --cache-dir: an embedded store instead
  std::string manifest;
  IndexerOptions indexer;
  uint64_t memory_mb = 256;
  double progress_interval_s = 5.0;
  std::string worker;  // --worker host:port: encode there
  ClientCredentialFlags worker_credentials;
  double worker_timeout_s = 300;
};

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", b, units[u]);
}

std::string ProgressLine(const IndexProgress& p, bool bar) {
  const IndexReport& r = *p.report;
  const double frac = p.corpus_bytes_total > 0
                          ? static_cast<double>(p.corpus_bytes_read) / p.corpus_bytes_total
                          : 1.0;
  const double tps = p.elapsed_seconds > 0 ? r.tokens / p.elapsed_seconds : 0;
  const double eta = frac > 0 ? p.elapsed_seconds * (1 - frac) / frac : 0;
  std::string head;
  if (bar) {
    const int width = 30;
    const int filled = static_cast<int>(frac * width);
    head = "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
  }
  return absl::StrFormat(
      "%s%5.1f%% blocks %d (encoded %d, present %d) tokens %d %.0f tok/s %s skipped %d ETA %.0fs",
      head, frac * 100, r.blocks, r.blocks_encoded, r.blocks_present, r.tokens, tps,
      HumanBytes(r.bytes_written), r.skipped_lines, eta);
}

int Fail(const absl::Status& s, int code) {
  std::cerr << "kvblock index: " << s << "\n";
  return code;
}

bool IsUnavailable(absl::StatusCode c) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kDeadlineExceeded ||
         c == absl::StatusCode::kResourceExhausted;
}

// The encoder: this process's engine, or the worker's EncodeBlocks (checked to serve this
// model, its limits respected).
absl::StatusOr<std::unique_ptr<BlockEncoder>> MakeEncoder(const IndexFlags& f, Runtime& rt,
                                                          KvDtype kv_dtype) {
  if (f.worker.empty()) return std::make_unique<LocalBlockEncoder>(rt.engine.get());
  if (absl::Status s = ValidateHostPort(f.worker); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--worker: ", s.message()));
  }
  RemoteEncoderOptions o;
  o.address = f.worker;
  absl::StatusOr<ClientCredentials> c = LoadClientCredentials(f.worker_credentials, "worker-");
  if (!c.ok()) return c.status();
  o.credentials = *std::move(c);
  o.call_timeout = absl::Seconds(f.worker_timeout_s);
  o.max_call_tokens = std::max(f.indexer.batch_tokens, f.indexer.max_block_tokens);
  absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> e =
      RemoteBlockEncoder::Connect(o, rt.model.fingerprint, kv_dtype, rt.model.config);
  if (!e.ok()) return e.status();
  if (f.indexer.max_block_tokens > (*e)->max_block_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-block-tokens ", f.indexer.max_block_tokens, " is more than worker ",
                     f.worker, " encodes in one call (", (*e)->max_block_tokens(), ")"));
  }
  std::cerr << "kvblock index: encoding on worker " << f.worker << " (" << (*e)->worker_backend()
            << ")\n";
  return std::unique_ptr<BlockEncoder>(*std::move(e));
}

int RunIndex(IndexFlags& f) {
  if (f.cluster.given() == !f.cache_dir.empty()) {
    return Fail(absl::InvalidArgumentError(
                    "give exactly one of --cache SPEC (cache cluster) or --cache-dir DIR "
                    "(embedded store)"),
                1);
  }
  RuntimeOptions ro;
  ro.model_dir = f.model;
  ro.model_id = f.model_id;
  ro.memory_bytes = f.memory_mb << 20;
  ro.local_tier = false;  // the indexer writes straight to the cluster
  ro.cache_dir = f.cache_dir;
  // A worker encodes: the tokenizer, config and fingerprint suffice here (no weights loaded).
  ro.load_engine = f.worker.empty();
  if (f.cluster.given()) {
    absl::StatusOr<CacheClientOptions> co = ClientOptionsFromFlags(f.cluster);
    if (!co.ok()) return Fail(co.status(), 1);
    ro.cluster = *co;
  }
  absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(ro);
  if (!rt.ok()) return Fail(rt.status(), 1);
  if ((*rt)->cluster != nullptr) {
    if (absl::Status s = CheckClusterReachable(*(*rt)->cluster); !s.ok()) {
      return Fail(s, kIndexExitCacheUnavailable);
    }
  }
  absl::StatusOr<std::unique_ptr<BlockEncoder>> encoder = MakeEncoder(f, **rt, ro.kv_dtype);
  if (!encoder.ok()) {
    return Fail(encoder.status(),
                IsUnavailable(encoder.status().code()) ? kIndexExitWorkerUnavailable : 1);
  }
  IndexerOptions io = f.indexer;
  io.manifest_path = f.manifest;
  if (io.manifest_path.empty()) {
    io.manifest_path =
        absl::StrFormat("%s.kvblock-index-%s-%dof%d.json", f.corpus,
                        (*rt)->model.fingerprint.ToHex().substr(0, 12), io.shard, io.num_shards);
  }
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  double last_log = 0;
  auto progress = [&](const IndexProgress& p) {
    if (tty) {
      std::cerr << "\r" << ProgressLine(p, true) << std::flush;
    } else if (p.elapsed_seconds - last_log >= f.progress_interval_s) {
      last_log = p.elapsed_seconds;
      std::cerr << "kvblock index: " << ProgressLine(p, false) << "\n";
    }
  };
  Indexer indexer(encoder->get(), (*rt)->tokenizer.get(), (*rt)->store, io);
  absl::StatusOr<IndexReport> r = indexer.Run(f.corpus, progress);
  if (tty) std::cerr << "\n";
  if (!r.ok()) {
    const absl::StatusCode c = r.status().code();
    if (c == absl::StatusCode::kInvalidArgument && io.strict) {
      return Fail(r.status(), kIndexExitBadInput);
    }
    const bool worker_failed =
        !f.worker.empty() && indexer.failed_stage() == Indexer::Stage::kEncode;
    if (worker_failed || IsUnavailable(c) || c == absl::StatusCode::kInternal ||
        c == absl::StatusCode::kAborted) {
      std::cerr << "kvblock index: stopped; the manifest " << io.manifest_path
                << " records only fully written batches (run again with --resume)\n";
      return Fail(r.status(),
                  worker_failed ? kIndexExitWorkerUnavailable : kIndexExitCacheUnavailable);
    }
    return Fail(r.status(), 1);
  }
  for (const BadLine& b : r->bad_lines) {
    std::cerr << "kvblock index: skipped " << f.corpus << ":" << b.line << ": " << b.reason << "\n";
  }
  std::cout << absl::StrFormat(
      "index %s: shard %d/%d, lines %d, passages %d, skipped lines %d\n"
      "blocks %d (encoded %d, already present %d), tokens %d, written %s\n"
      "time %.2f s, %.0f tokens/s, %.1f blocks/s; manifest %s\n",
      r->complete ? "complete" : "stopped early (resume with --resume)", io.shard, io.num_shards,
      r->lines, r->passages, r->skipped_lines, r->blocks, r->blocks_encoded, r->blocks_present,
      r->tokens, HumanBytes(r->bytes_written), r->seconds,
      r->seconds > 0 ? r->tokens / r->seconds : 0.0,
      r->seconds > 0 ? r->blocks_encoded / r->seconds : 0.0, io.manifest_path);
  return 0;
}

}  // namespace

void AddIndexCommand(CLI::App& app) {
  auto f = std::make_shared<IndexFlags>();
  CLI::App* cmd =
      app.add_subcommand("index", "Encode a JSONL corpus into block KV and write it to the cache");
  cmd->add_option("--model", f->model, "Hugging Face model directory")->required();
  cmd->add_option("--model-id", f->model_id, "Explicit model id replacing the weight fingerprint");
  cmd->add_option("--corpus", f->corpus,
                  "JSONL file: {\"id\", \"text\"} or {\"id\", \"token_ids\"}")
      ->required();
  AddClusterFlags(*cmd, &f->cluster);
  cmd->add_option("--cache-dir", f->cache_dir,
                  "Embedded store directory (instead of a cache cluster)");
  cmd->add_option("--worker", f->worker,
                  "Encode on this worker (host:port, its EncodeBlocks) instead of loading the "
                  "model's weights here");
  AddClientCredentialFlags(*cmd, &f->worker_credentials, "worker-", "the worker");
  cmd->add_option("--worker-timeout-s", f->worker_timeout_s,
                  "Deadline of one EncodeBlocks call on the worker, seconds")
      ->capture_default_str();
  cmd->add_option("--manifest", f->manifest,
                  "Progress manifest (default: <corpus>.kvblock-index-<model>-<i>of<N>.json)");
  cmd->add_option("--shard", f->indexer.shard, "This shard's index (0-based)");
  cmd->add_option("--num-shards", f->indexer.num_shards, "Number of shards");
  cmd->add_option("--max-block-tokens", f->indexer.max_block_tokens, "Longest block (tokens)")
      ->capture_default_str();
  cmd->add_option("--batch-tokens", f->indexer.batch_tokens, "Tokens per batch")
      ->capture_default_str();
  cmd->add_option("--max-batches", f->indexer.max_batches, "Stop after this many batches (0: all)");
  cmd->add_flag("--resume", f->indexer.resume,
                "Continue where the manifest says the last run stopped");
  cmd->add_flag("--strict", f->indexer.strict, "A bad line stops the run (exit code 2)");
  cmd->add_option("--memory-mb", f->memory_mb, "Memory of an embedded store (MiB)")
      ->capture_default_str();
  cmd->add_option("--progress-interval-s", f->progress_interval_s,
                  "Seconds between log lines when stderr is not a terminal")
      ->capture_default_str();
  cmd->callback([f] {
    const int rc = RunIndex(*f);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace kvblock
