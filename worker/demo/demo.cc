#include "worker/demo/demo.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"
#include "worker/demo/demo_model.h"
#include "worker/eval/qa_prompt.h"
#include "worker/indexer/indexer.h"
#include "worker/service/runtime.h"

namespace kvblock {
namespace {

using json = nlohmann::json;

struct Question {
  std::string id;
  std::string question;
  std::vector<std::string> passages;
  std::optional<std::string> answer;  // the expected answer, when the file names one
};

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::vector<Question>> ParseQuestions(const std::string& text) {
  std::vector<Question> out;
  std::istringstream in(text);
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("question") ||
        !j["question"].is_string() || !j.contains("passages") || !j["passages"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "questions line ", n, ": expected {\"id\", \"question\", \"passages\": [ids]}"));
    }
    Question q;
    q.id = j.value("id", absl::StrCat("q", n));
    q.question = j["question"].get<std::string>();
    for (const json& p : j["passages"]) {
      if (!p.is_string()) return absl::InvalidArgumentError(absl::StrCat("questions line ", n, ": passage ids must be strings"));
      q.passages.push_back(p.get<std::string>());
    }
    if (auto a = j.find("answer"); a != j.end()) {
      if (!a->is_string()) return absl::InvalidArgumentError(absl::StrCat("questions line ", n, ": answer must be a string"));
      q.answer = a->get<std::string>();
    }
    out.push_back(std::move(q));
  }
  if (out.empty()) return absl::InvalidArgumentError("no questions");
  return out;
}

// Printable form of a generated answer (a random model emits arbitrary bytes).
std::string Printable(const std::string& text, size_t max_chars) {
  // Bytes that are not UTF-8 were decoded to U+FFFD; show each as '?'.
  const std::string s = absl::StrReplaceAll(text, {{"\xEF\xBF\xBD", "?"}});
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '"') {
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += absl::StrFormat("\\x%02x", c);
    }
  }
  return out;
}

}  // namespace

absl::Status DemoOptions::Validate() const {
  if (data_dir.empty()) return absl::InvalidArgumentError("data_dir is required");
  if (max_new_tokens <= 0) return absl::InvalidArgumentError("max_new_tokens must be > 0");
  if (passes <= 0) return absl::InvalidArgumentError("passes must be > 0");
  if (max_block_tokens <= 0) return absl::InvalidArgumentError("max_block_tokens must be > 0");
  if (memory_bytes == 0) return absl::InvalidArgumentError("memory_bytes must be > 0");
  return absl::OkStatus();
}

absl::StatusOr<DemoSummary> RunDemo(const DemoOptions& options, std::ostream& out) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(options.data_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", options.data_dir, ": ", ec.message()));
  const std::string model_dir = options.data_dir + "/model";
  const std::string cache_dir = options.data_dir + "/cache";
  DemoSummary summary;

  out << "kvblock demo: Block-Attention serving on an embedded cache (memory over RocksDB in "
      << cache_dir << ")\n";
  if (absl::Status s = WriteDemoModel(model_dir); !s.ok()) return s;
  out << "model: " << kDemoModelName << " (models/" << kDemoModelName
      << "/README.md), a 3.3 M-parameter byte-level Llama block fine-tuned on synthetic town QA;\n"
         "       sha256 " << DemoModelSha256().substr(0, 16) << "..., written to " << model_dir
      << "\n";

  // The corpus: a copy of the bundled one (the indexer reads files), or the user's.
  std::string corpus_path = options.corpus_path;
  if (corpus_path.empty()) {
    corpus_path = options.data_dir + "/corpus.jsonl";
    std::ofstream c(corpus_path, std::ios::trunc | std::ios::binary);
    c << DemoCorpusJsonl();
    if (!c.good()) return absl::InternalError(absl::StrCat("cannot write ", corpus_path));
  }
  std::string questions_text;
  if (options.questions_path.empty()) {
    questions_text = std::string(DemoQuestionsJsonl());
  } else {
    absl::StatusOr<std::string> q = ReadFile(options.questions_path);
    if (!q.ok()) return q.status();
    questions_text = std::move(*q);
  }
  absl::StatusOr<std::vector<Question>> questions = ParseQuestions(questions_text);
  if (!questions.ok()) return questions.status();

  // Passage texts by id (the same text the indexer split, so the same keys).
  absl::flat_hash_map<std::string, std::string> passages;
  {
    absl::StatusOr<std::string> corpus = ReadFile(corpus_path);
    if (!corpus.ok()) return corpus.status();
    std::istringstream in(*corpus);
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      absl::StatusOr<CorpusPassage> p = ParseCorpusLine(line, n);
      if (p.ok() && !p->has_token_ids) passages[p->id] = p->text;
    }
  }
  for (const Question& q : *questions) {
    for (const std::string& id : q.passages) {
      if (!passages.contains(id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("question ", q.id, " names passage ", id, ", not in the corpus"));
      }
    }
  }

  RuntimeOptions ro;
  ro.model_dir = model_dir;
  ro.cache_dir = cache_dir;
  ro.memory_bytes = options.memory_bytes;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(ro);
  if (!rt.ok()) return rt.status();
  Runtime& r = **rt;

  // Index the corpus through the real indexer (a re-run finds every block present).
  IndexerOptions io;
  io.max_block_tokens = options.max_block_tokens;
  io.manifest_path = options.data_dir + "/index-manifest.json";
  LocalBlockEncoder encoder(r.engine.get());
  Indexer indexer(&encoder, r.tokenizer.get(), r.store, io);
  absl::StatusOr<IndexReport> report = indexer.Run(corpus_path);
  if (!report.ok()) return report.status();
  summary.indexed_blocks = report->blocks;
  summary.indexed_passages = report->passages;
  out << absl::StrFormat(
      "index: %d passages -> %d blocks, %d tokens; encoded %d, already cached %d; %.2f s "
      "(%.0f tokens/s)\n",
      report->passages, report->blocks, report->tokens, report->blocks_encoded,
      report->blocks_present, report->seconds,
      report->seconds > 0 ? report->tokens / report->seconds : 0.0);

  for (int32_t pass = 1; pass <= options.passes; ++pass) {
    DemoPassSummary ps;
    out << "\npass " << pass << " of " << options.passes << "\n";
    out << absl::StrFormat("  %-4s %-9s %-10s %-12s %s\n", "q", "mode", "TTFT ms", "cache hits",
                           "answer");
    for (const Question& q : *questions) {
      std::vector<std::string> texts;
      for (const std::string& id : q.passages) texts.push_back(passages.find(id)->second);  // checked above
      absl::StatusOr<GenerateRequest> built =
          BuildQaRequest(*r.tokenizer, texts, q.question, options.max_block_tokens);
      if (!built.ok()) return built.status();
      GenerateRequest& req = *built;
      req.max_new_tokens = options.max_new_tokens;
      req.sampling.temperature = 0;  // greedy: the same answer every pass
      out << "  " << q.id << "  " << q.question;
      if (q.answer.has_value()) {
        out << "  (expected: " << *q.answer << ")";
        ++ps.with_answer;
      }
      out << "\n";
      for (AttentionMode mode : {AttentionMode::kBlock, AttentionMode::kFull}) {
        req.mode = mode;
        absl::StatusOr<GenerateResult> g = r.engine->Generate(req);
        if (!g.ok()) return g.status();
        absl::StatusOr<std::string> text = r.tokenizer->Decode(g->tokens);
        if (!text.ok()) return text.status();
        const bool block = mode == AttentionMode::kBlock;
        const std::string hits =
            block ? absl::StrCat(g->cache_hits, "/", g->cache_hits + g->cache_misses) : "-";
        const std::string answer = NormalizeAnswer(*text);
        const bool correct = q.answer.has_value() && answer == *q.answer;
        out << absl::StrFormat("  %-4s %-9s %-10.1f %-12s \"%s\"%s\n", "",
                               std::string(AttentionModeName(mode)), g->timings.ttft_ms, hits,
                               Printable(answer, 40),
                               !q.answer.has_value() ? "" : correct ? "  right" : "  wrong");
        (block ? ps.correct_block : ps.correct_full) += correct;
        if (block) {
          ps.block_hits += g->cache_hits;
          ps.block_misses += g->cache_misses;
          ps.mean_ttft_block_ms += g->timings.ttft_ms;
        } else {
          ps.mean_ttft_full_ms += g->timings.ttft_ms;
        }
      }
      ++ps.questions;
    }
    ps.mean_ttft_block_ms /= ps.questions;
    ps.mean_ttft_full_ms /= ps.questions;
    const int64_t total = ps.block_hits + ps.block_misses;
    out << absl::StrFormat(
        "pass %d: block-mode cache hits %d/%d (%.0f%%); mean TTFT block %.1f ms vs full %.1f ms "
        "(%.1fx)\n",
        pass, ps.block_hits, total, total > 0 ? 100.0 * ps.block_hits / total : 0.0,
        ps.mean_ttft_block_ms, ps.mean_ttft_full_ms,
        ps.mean_ttft_block_ms > 0 ? ps.mean_ttft_full_ms / ps.mean_ttft_block_ms : 0.0);
    if (ps.with_answer > 0) {
      out << absl::StrFormat("pass %d: expected answers matched: block %d/%d, full %d/%d\n", pass,
                             ps.correct_block, ps.with_answer, ps.correct_full, ps.with_answer);
    }
    summary.passes.push_back(ps);
  }
  out << "\nRun it again: the corpus is already indexed and every block is a cache hit.\n";
  return summary;
}

}  // namespace kvblock
