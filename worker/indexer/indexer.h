// The offline indexer behind `kvblock index`: reads a JSONL corpus ({"id", "text"} with an
// optional "title", or "token_ids" instead of "text"), splits each passage into blocks
// (block_splitter.h), encodes the blocks not yet in the store in batches and Puts them (through
// CacheClient this replicates to R nodes). A manifest file records how far the corpus has been
// written: it is replaced atomically after each batch has been fully Put, so `resume` continues
// after the last complete batch, and a store failure leaves no batch recorded that is not
// stored. Blocks are content-addressed, so a re-run is idempotent (present blocks are skipped
// without encoding).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/block_store.h"
#include "worker/indexer/block_encoder.h"
#include "worker/tokenizer/tokenizer.h"

namespace kvblock {

// One corpus line, parsed.
struct CorpusPassage {
  int64_t line = 0;                // 1-based line number in the file
  std::string id;                  // the "id" field (a string or a number)
  std::string text;                // title + "\n" + text, or text; empty when token_ids is used
  std::vector<int32_t> token_ids;  // the "token_ids" field, when given
  bool has_token_ids = false;
};

// Parses one JSONL line. INVALID_ARGUMENT with the reason (not JSON, not an object, missing or
// non-string "id"/"text", empty text, bad token ids) otherwise. Pure function.
absl::StatusOr<CorpusPassage> ParseCorpusLine(std::string_view line, int64_t line_number);

struct IndexerOptions {
  // Longest block, in tokens (longer passages become several blocks). Default: 512.
  int64_t max_block_tokens = 512;
  // Tokens gathered before a batch is looked up, encoded, Put and recorded. Default: 8192.
  int64_t batch_tokens = 8192;
  // This run indexes the lines with (line_number - 1) % num_shards == shard. Default: 0.
  int32_t shard = 0;
  // Shards the corpus is split into. Default: 1.
  int32_t num_shards = 1;
  // Continue after the last batch the manifest records (the manifest must match this corpus,
  // model and options). Default: false (start over; present blocks are still skipped).
  bool resume = false;
  // A bad line stops the run (INVALID_ARGUMENT naming the line) instead of being skipped.
  // Default: false.
  bool strict = false;
  // The manifest file; required. Default: empty.
  std::string manifest_path;
  // Stop cleanly (as if interrupted) after this many batches; 0 = no limit. Default: 0.
  int64_t max_batches = 0;
  // Bad lines kept in the report with their reasons (all are counted). Default: 100.
  int64_t max_reported_bad_lines = 100;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

struct BadLine {
  int64_t line = 0;
  std::string reason;
};

// Counters of a run; the totals include what earlier runs of a resumed index recorded.
struct IndexReport {
  int64_t lines = 0;               // lines of this shard read (bad ones included)
  int64_t passages = 0;            // good lines
  int64_t skipped_lines = 0;       // bad lines skipped
  int64_t blocks = 0;              // blocks of the passages (duplicates included)
  int64_t blocks_encoded = 0;      // blocks encoded and Put by this run
  int64_t blocks_present = 0;      // blocks already in the store (not encoded again)
  int64_t tokens = 0;              // tokens of all blocks
  int64_t bytes_written = 0;       // payload bytes Put by this run
  int64_t batches = 0;             // batches completed by this run
  int64_t resumed_at_line = 0;     // first line this run read (1 when not resumed)
  double seconds = 0;              // wall time of this run
  bool complete = false;           // the whole shard is indexed
  std::vector<BadLine> bad_lines;  // the first max_reported_bad_lines of them
};

// Progress after each batch: the report so far, plus how far into the file the run is.
struct IndexProgress {
  const IndexReport* report = nullptr;
  int64_t corpus_bytes_read = 0;
  int64_t corpus_bytes_total = 0;
  double elapsed_seconds = 0;
};
using IndexProgressFn = std::function<void(const IndexProgress&)>;

class Indexer {
 public:
  // None of the pointers is owned; all must outlive the indexer. The encoder gives block keys and
  // payloads (its model's fingerprint and KV dtype decide the keys): the indexer's own engine or
  // a remote worker (block_encoder.h).
  Indexer(BlockEncoder* encoder, const Tokenizer* tokenizer, BlockStore* store,
          IndexerOptions options);

  // Indexes `corpus_path`. The report says whether the shard is complete (false after
  // max_batches). Errors: INVALID_ARGUMENT for bad options, or for a bad line under `strict`
  // (the message names the line); NOT_FOUND for a missing corpus; FAILED_PRECONDITION when
  // `resume` finds a manifest for another corpus, model or options; the store's error (e.g.
  // UNAVAILABLE from a cluster) when a Put fails, or the encoder's (e.g. UNAVAILABLE from a
  // remote worker): the manifest then records only the batches before it, and failed_stage()
  // says which of the two failed. Not thread-safe (one Run at a time); the store may be shared.
  absl::StatusOr<IndexReport> Run(const std::string& corpus_path,
                                  const IndexProgressFn& progress = nullptr);

  // Where the last Run failed: kEncode (the encoder's error) or kStore (a Put's); kNone after a
  // successful Run or another error.
  enum class Stage { kNone, kEncode, kStore };
  Stage failed_stage() const { return failed_stage_; }

 private:
  BlockEncoder* encoder_;
  const Tokenizer* tokenizer_;
  BlockStore* store_;
  IndexerOptions options_;
  Stage failed_stage_ = Stage::kNone;
};

}  // namespace kvblock
