#include "worker/indexer/index_command.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "services/cache_client_config.h"
#include "worker/indexer/indexer.h"
#include "worker/service/runtime.h"

namespace kvblock {
namespace {

struct IndexFlags {
  std::string model;
  std::string model_id;
  std::string corpus;
  std::string cache;  // host:port,... or a directory
  std::string manifest;
  IndexerOptions indexer;
  uint64_t memory_mb = 256;
  double progress_interval_s = 5.0;
  ClusterFlags cluster;
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

int RunIndex(IndexFlags& f) {
  RuntimeOptions ro;
  ro.model_dir = f.model;
  ro.model_id = f.model_id;
  ro.memory_bytes = f.memory_mb << 20;
  ro.local_tier = false;  // the indexer writes straight to the cluster
  const bool looks_like_members =
      !f.cache.empty() && f.cache.find(':') != std::string::npos &&
      f.cache.find('/') == std::string::npos && !std::filesystem::exists(f.cache);
  if (looks_like_members) {
    for (absl::string_view m : absl::StrSplit(f.cache, ',', absl::SkipEmpty())) {
      f.cluster.members.emplace_back(m);
    }
  } else {
    ro.cache_dir = f.cache;
  }
  if (!f.cluster.members.empty() || !f.cluster.members_file.empty()) {
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
  IndexerOptions io = f.indexer;
  io.manifest_path = f.manifest;
  if (io.manifest_path.empty()) {
    io.manifest_path = absl::StrFormat(
        "%s.kvblock-index-%s-%dof%d.json", f.corpus,
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
  Indexer indexer((*rt)->engine.get(), (*rt)->tokenizer.get(), (*rt)->store, io);
  absl::StatusOr<IndexReport> r = indexer.Run(f.corpus, progress);
  if (tty) std::cerr << "\n";
  if (!r.ok()) {
    const absl::StatusCode c = r.status().code();
    if (c == absl::StatusCode::kInvalidArgument && io.strict) {
      return Fail(r.status(), kIndexExitBadInput);
    }
    if (c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kDeadlineExceeded ||
        c == absl::StatusCode::kResourceExhausted || c == absl::StatusCode::kInternal ||
        c == absl::StatusCode::kAborted) {
      std::cerr << "kvblock index: stopped; the manifest " << io.manifest_path
                << " records only fully written batches (run again with --resume)\n";
      return Fail(r.status(), kIndexExitCacheUnavailable);
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
      r->complete ? "complete" : "stopped early (resume with --resume)", io.shard,
      io.num_shards, r->lines, r->passages, r->skipped_lines, r->blocks, r->blocks_encoded,
      r->blocks_present, r->tokens, HumanBytes(r->bytes_written), r->seconds,
      r->seconds > 0 ? r->tokens / r->seconds : 0.0,
      r->seconds > 0 ? r->blocks_encoded / r->seconds : 0.0, io.manifest_path);
  return 0;
}

}  // namespace

void AddIndexCommand(CLI::App& app) {
  auto f = std::make_shared<IndexFlags>();
  CLI::App* cmd = app.add_subcommand(
      "index", "Encode a JSONL corpus into block KV and write it to the cache");
  cmd->add_option("--model", f->model, "Hugging Face model directory")->required();
  cmd->add_option("--model-id", f->model_id, "Explicit model id replacing the weight fingerprint");
  cmd->add_option("--corpus", f->corpus, "JSONL file: {\"id\", \"text\"} or {\"id\", \"token_ids\"}")
      ->required();
  cmd->add_option("--cache", f->cache,
                  "Cluster members (host:port,host:port) or an embedded store directory");
  cmd->add_option("--manifest", f->manifest,
                  "Progress manifest (default: <corpus>.kvblock-index-<model>-<i>of<N>.json)");
  cmd->add_option("--shard", f->indexer.shard, "This shard's index (0-based)");
  cmd->add_option("--num-shards", f->indexer.num_shards, "Number of shards");
  cmd->add_option("--max-block-tokens", f->indexer.max_block_tokens, "Longest block (tokens)")
      ->capture_default_str();
  cmd->add_option("--batch-tokens", f->indexer.batch_tokens, "Tokens per batch")
      ->capture_default_str();
  cmd->add_option("--max-batches", f->indexer.max_batches, "Stop after this many batches (0: all)");
  cmd->add_flag("--resume", f->indexer.resume, "Continue where the manifest says the last run stopped");
  cmd->add_flag("--strict", f->indexer.strict, "A bad line stops the run (exit code 2)");
  cmd->add_option("--memory-mb", f->memory_mb, "Memory of an embedded store (MiB)")
      ->capture_default_str();
  cmd->add_option("--progress-interval-s", f->progress_interval_s,
                  "Seconds between log lines when stderr is not a terminal")
      ->capture_default_str();
  AddClusterFlags(*cmd, &f->cluster);
  cmd->callback([f] {
    if (f->cache.empty() && f->cluster.members.empty() && f->cluster.members_file.empty()) {
      std::cerr << "kvblock index: give --cache (members or a directory) or --members\n";
      throw CLI::RuntimeError(1);
    }
    const int rc = RunIndex(*f);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace kvblock
