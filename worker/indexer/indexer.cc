#include "worker/indexer/indexer.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/indexer/block_splitter.h"

namespace kvblock {
namespace {

using json = nlohmann::json;
constexpr int kManifestVersion = 1;

std::string IdString(const json& id) {
  if (id.is_string()) return id.get<std::string>();
  return id.dump();
}

// The fields that must match for --resume to continue a manifest.
json ManifestIdentity(const std::string& corpus, int64_t corpus_bytes,
                      const ModelFingerprint& model, const IndexerOptions& o) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(corpus, ec);
  return json{{"version", kManifestVersion},
              {"corpus", ec ? corpus : abs.lexically_normal().string()},
              {"corpus_bytes", corpus_bytes},
              {"model", model.ToHex()},
              {"shard", o.shard},
              {"num_shards", o.num_shards},
              {"max_block_tokens", o.max_block_tokens}};
}

absl::Status WriteManifest(const std::string& path, const json& identity, int64_t next_line,
                           int64_t next_offset, const IndexReport& r) {
  json m = identity;
  m["next_line"] = next_line;
  m["next_offset"] = next_offset;
  m["complete"] = r.complete;
  m["lines"] = r.lines;
  m["passages"] = r.passages;
  m["skipped_lines"] = r.skipped_lines;
  m["blocks"] = r.blocks;
  m["tokens"] = r.tokens;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << m.dump(2) << "\n";
    out.flush();
    if (!out.good()) return absl::InternalError(absl::StrCat("cannot write manifest ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

struct PendingBlock {
  BlockKey key;
  std::vector<int32_t> tokens;
};

}  // namespace

absl::StatusOr<CorpusPassage> ParseCorpusLine(std::string_view line, int64_t line_number) {
  CorpusPassage p;
  p.line = line_number;
  json j = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  auto id = j.find("id");
  if (id == j.end() || !(id->is_string() || id->is_number_integer())) {
    return absl::InvalidArgumentError("missing \"id\" (a string or an integer)");
  }
  p.id = IdString(*id);
  if (auto ids = j.find("token_ids"); ids != j.end()) {
    if (!ids->is_array() || ids->empty()) {
      return absl::InvalidArgumentError("\"token_ids\" must be a non-empty array of integers");
    }
    for (const json& t : *ids) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError("\"token_ids\" holds a value that is not a token id");
      }
      p.token_ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
    }
    p.has_token_ids = true;
    return p;
  }
  auto text = j.find("text");
  if (text == j.end() || !text->is_string()) {
    return absl::InvalidArgumentError("missing \"text\" (a string) or \"token_ids\"");
  }
  if (text->get_ref<const std::string&>().empty()) {
    return absl::InvalidArgumentError("empty \"text\"");
  }
  std::string title;
  if (auto t = j.find("title"); t != j.end()) {
    if (!t->is_string()) return absl::InvalidArgumentError("\"title\" must be a string");
    title = t->get<std::string>();
  }
  p.text = title.empty() ? text->get<std::string>() : title + "\n" + text->get<std::string>();
  return p;
}

absl::Status IndexerOptions::Validate() const {
  if (max_block_tokens <= 0) return absl::InvalidArgumentError("max_block_tokens must be > 0");
  if (batch_tokens <= 0) return absl::InvalidArgumentError("batch_tokens must be > 0");
  if (num_shards <= 0) return absl::InvalidArgumentError("num_shards must be > 0");
  if (shard < 0 || shard >= num_shards) {
    return absl::InvalidArgumentError("shard must be in [0, num_shards)");
  }
  if (manifest_path.empty()) return absl::InvalidArgumentError("manifest_path is required");
  if (max_batches < 0) return absl::InvalidArgumentError("max_batches must be >= 0");
  if (max_reported_bad_lines < 0) {
    return absl::InvalidArgumentError("max_reported_bad_lines must be >= 0");
  }
  return absl::OkStatus();
}

Indexer::Indexer(BlockEncoder* encoder, const Tokenizer* tokenizer, BlockStore* store,
                 IndexerOptions options)
    : encoder_(encoder), tokenizer_(tokenizer), store_(store), options_(std::move(options)) {}

absl::StatusOr<IndexReport> Indexer::Run(const std::string& corpus_path,
                                         const IndexProgressFn& progress) {
  failed_stage_ = Stage::kNone;
  if (absl::Status s = options_.Validate(); !s.ok()) return s;
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  std::error_code ec;
  const auto corpus_bytes = static_cast<int64_t>(std::filesystem::file_size(corpus_path, ec));
  if (ec) return absl::NotFoundError(absl::StrCat("corpus ", corpus_path, ": ", ec.message()));
  std::ifstream in(corpus_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open corpus ", corpus_path));
  const json identity =
      ManifestIdentity(corpus_path, corpus_bytes, encoder_->fingerprint(), options_);

  IndexReport report;
  int64_t line_number = 0;
  if (options_.resume && std::filesystem::exists(options_.manifest_path)) {
    std::ifstream min(options_.manifest_path);
    json m = json::parse(min, nullptr, /*allow_exceptions=*/false);
    if (m.is_discarded() || !m.is_object()) {
      return absl::FailedPreconditionError(
          absl::StrCat("manifest ", options_.manifest_path, " is not valid JSON"));
    }
    for (auto& [k, v] : identity.items()) {
      if (!m.contains(k) || m[k] != v) {
        return absl::FailedPreconditionError(
            absl::StrCat("manifest ", options_.manifest_path, " was written for another run (", k,
                         ": ", m.contains(k) ? m[k].dump() : "missing", " != ", v.dump(),
                         "); remove it or run without --resume"));
      }
    }
    line_number = m.value("next_line", int64_t{1}) - 1;
    const int64_t offset = m.value("next_offset", int64_t{0});
    report.lines = m.value("lines", int64_t{0});
    report.passages = m.value("passages", int64_t{0});
    report.skipped_lines = m.value("skipped_lines", int64_t{0});
    report.blocks = m.value("blocks", int64_t{0});
    report.tokens = m.value("tokens", int64_t{0});
    if (m.value("complete", false)) {
      report.complete = true;
      report.resumed_at_line = line_number + 1;
      report.seconds = elapsed();
      return report;
    }
    in.seekg(offset);
    if (!in) return absl::FailedPreconditionError("manifest offset is past the corpus end");
  }
  report.resumed_at_line = line_number + 1;

  std::vector<PendingBlock> batch;
  int64_t batch_tokens = 0;
  IndexReport pending_counts;  // counts of lines read since the last recorded batch
  int64_t recorded_offset = in.tellg();
  int64_t recorded_line = line_number;

  // Looks the batch up, encodes and Puts the misses, then records it in the manifest.
  auto flush = [&](int64_t next_offset) -> absl::Status {
    if (!batch.empty()) {
      std::vector<BlockKey> keys;
      keys.reserve(batch.size());
      for (const PendingBlock& b : batch) keys.push_back(b.key);
      std::vector<LookupResult> found(keys.size());
      store_->Lookup(keys, absl::MakeSpan(found));
      // The misses, each once, encoded together (a remote encoder splits them into calls) and
      // Put as their payloads arrive.
      absl::flat_hash_set<BlockKey> done;
      std::vector<size_t> misses;
      std::vector<std::vector<int32_t>> miss_tokens;
      for (size_t i = 0; i < batch.size(); ++i) {
        if (found[i].present || !done.insert(batch[i].key).second) {
          ++report.blocks_present;
          continue;
        }
        misses.push_back(i);
        miss_tokens.push_back(std::move(batch[i].tokens));
      }
      auto put = [&](size_t j, std::vector<uint8_t> payload) -> absl::Status {
        const BlockKey& key = batch[misses[j]].key;
        if (absl::Status s = store_->Put(key, payload); !s.ok()) {
          failed_stage_ = Stage::kStore;
          return absl::Status(s.code(), absl::StrCat("writing block ", key.ToHex(),
                                                     " to the store failed: ", s.message()));
        }
        ++report.blocks_encoded;
        report.bytes_written += static_cast<int64_t>(payload.size());
        return absl::OkStatus();
      };
      if (absl::Status s = encoder_->Encode(miss_tokens, put); !s.ok()) {
        if (failed_stage_ == Stage::kNone) failed_stage_ = Stage::kEncode;
        return s;
      }
    }
    report.lines += pending_counts.lines;
    report.passages += pending_counts.passages;
    report.skipped_lines += pending_counts.skipped_lines;
    report.blocks += pending_counts.blocks;
    report.tokens += pending_counts.tokens;
    pending_counts = IndexReport();
    batch.clear();
    batch_tokens = 0;
    recorded_offset = next_offset;
    recorded_line = line_number;
    if (absl::Status s = WriteManifest(options_.manifest_path, identity, recorded_line + 1,
                                       recorded_offset, report);
        !s.ok()) {
      return s;
    }
    ++report.batches;
    if (progress) {
      report.seconds = elapsed();
      progress(IndexProgress{&report, next_offset, corpus_bytes, report.seconds});
    }
    return absl::OkStatus();
  };

  std::string line;
  while (std::getline(in, line)) {
    ++line_number;
    const int64_t next_offset = in.eof() ? corpus_bytes : static_cast<int64_t>(in.tellg());
    if ((line_number - 1) % options_.num_shards != options_.shard) continue;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are allowed
    ++pending_counts.lines;
    absl::StatusOr<CorpusPassage> passage = ParseCorpusLine(line, line_number);
    absl::StatusOr<std::vector<std::vector<int32_t>>> blocks =
        passage.ok()
            ? (passage->has_token_ids
                   ? absl::StatusOr<std::vector<std::vector<int32_t>>>(
                         SplitTokenIds(passage->token_ids, options_.max_block_tokens))
                   : SplitIntoBlocks(*tokenizer_, passage->text, options_.max_block_tokens))
            : absl::StatusOr<std::vector<std::vector<int32_t>>>(passage.status());
    if (blocks.ok()) {
      for (const auto& b : *blocks) {
        for (int32_t t : b) {
          if (t >= encoder_->vocab_size()) {
            blocks = absl::InvalidArgumentError(
                absl::StrCat("token id ", t, " is outside the model's vocabulary"));
            break;
          }
        }
        if (!blocks.ok()) break;
      }
    }
    if (blocks.ok() && blocks->empty()) blocks = absl::InvalidArgumentError("no tokens");
    if (!blocks.ok()) {
      if (options_.strict) {
        return absl::InvalidArgumentError(
            absl::StrCat(corpus_path, ":", line_number, ": ", blocks.status().message()));
      }
      ++pending_counts.skipped_lines;
      if (static_cast<int64_t>(report.bad_lines.size()) < options_.max_reported_bad_lines) {
        report.bad_lines.push_back({line_number, std::string(blocks.status().message())});
      }
      continue;
    }
    ++pending_counts.passages;
    for (auto& b : *blocks) {
      ++pending_counts.blocks;
      pending_counts.tokens += static_cast<int64_t>(b.size());
      batch_tokens += static_cast<int64_t>(b.size());
      batch.push_back({encoder_->KeyOf(b), std::move(b)});
    }
    if (batch_tokens >= options_.batch_tokens) {
      if (absl::Status s = flush(next_offset); !s.ok()) return s;
      if (options_.max_batches > 0 && report.batches >= options_.max_batches) {
        report.seconds = elapsed();
        return report;
      }
    }
  }
  report.complete = true;
  if (absl::Status s = flush(corpus_bytes); !s.ok()) return s;
  report.seconds = elapsed();
  return report;
}

}  // namespace kvblock
