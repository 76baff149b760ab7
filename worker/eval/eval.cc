#include "worker/eval/eval.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/eval/qa_prompt.h"
#include "worker/service/runtime.h"

namespace kvblock {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A fresh directory under the system temp dir, removed with this object.
class TempCacheDir {
 public:
  static absl::StatusOr<std::unique_ptr<TempCacheDir>> Create() {
    std::string tmpl = (fs::temp_directory_path() / "kvblock-eval-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot create a temporary directory from ", tmpl));
    }
    return std::unique_ptr<TempCacheDir>(new TempCacheDir(std::move(tmpl)));
  }
  ~TempCacheDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  explicit TempCacheDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace

absl::StatusOr<std::vector<QaExample>> ParseQaDataset(std::string_view jsonl) {
  std::vector<QaExample> out;
  std::istringstream in{std::string(jsonl)};
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const auto bad = [n] {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset line ", n,
          ": expected {\"id\", \"passages\": [texts], \"question\", \"answer\"}"));
    };
    if (j.is_discarded() || !j.is_object()) return bad();
    auto passages = j.find("passages");
    auto question = j.find("question");
    auto answer = j.find("answer");
    if (passages == j.end() || !passages->is_array() || question == j.end() ||
        !question->is_string() || answer == j.end() || !answer->is_string()) {
      return bad();
    }
    QaExample ex;
    auto id = j.find("id");
    ex.id = id != j.end() && id->is_string() ? id->get<std::string>() : absl::StrCat("line", n);
    for (const json& p : *passages) {
      if (!p.is_string() || p.get<std::string>().empty()) return bad();
      ex.passages.push_back(p.get<std::string>());
    }
    ex.question = question->get<std::string>();
    ex.answer = answer->get<std::string>();
    out.push_back(std::move(ex));
  }
  if (out.empty()) return absl::InvalidArgumentError("the dataset has no examples");
  return out;
}

absl::Status EvalOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("model_dir is required");
  if (dataset_path.empty()) return absl::InvalidArgumentError("dataset_path is required");
  if (limit < 0) return absl::InvalidArgumentError("limit must be >= 0");
  if (memory_bytes == 0) return absl::InvalidArgumentError("memory_bytes must be > 0");
  if (max_new_tokens <= 0) return absl::InvalidArgumentError("max_new_tokens must be > 0");
  if (max_block_tokens <= 0) return absl::InvalidArgumentError("max_block_tokens must be > 0");
  return absl::OkStatus();
}

json EvalReport::ToJson() const {
  json rows = json::array();
  double ttft = 0;
  for (const EvalExampleResult& r : results) {
    ttft += r.ttft_ms;
    rows.push_back({{"id", r.id}, {"expected", r.expected}, {"answer", r.answer},
                    {"correct", r.correct}, {"stop_reason", r.stop_reason},
                    {"ttft_ms", r.ttft_ms}, {"cache_hits", r.cache_hits},
                    {"cache_misses", r.cache_misses}});
  }
  return {{"model", model_dir},
          {"model_fingerprint", model_fingerprint},
          {"dataset", dataset},
          {"mode", std::string(AttentionModeName(mode))},
          {"examples", examples},
          {"correct", correct},
          {"accuracy", accuracy()},
          {"normalization", "text up to the first newline, ASCII whitespace trimmed; exact match"},
          {"decoding", "greedy"},
          {"seconds", seconds},
          {"mean_ttft_ms", results.empty() ? 0.0 : ttft / results.size()},
          {"results", std::move(rows)}};
}

absl::StatusOr<EvalReport> RunEval(const EvalOptions& options, std::ostream* progress) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  const auto t0 = std::chrono::steady_clock::now();
  std::ifstream in(options.dataset_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", options.dataset_path));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::vector<QaExample>> dataset = ParseQaDataset(text.str());
  if (!dataset.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.dataset_path, ": ", dataset.status().message()));
  }
  if (options.limit > 0 && static_cast<int64_t>(dataset->size()) > options.limit) {
    dataset->resize(options.limit);
  }

  std::unique_ptr<TempCacheDir> temp;
  RuntimeOptions ro;
  ro.model_dir = options.model_dir;
  ro.memory_bytes = options.memory_bytes;
  ro.cache_dir = options.cache_dir;
  if (ro.cache_dir.empty()) {
    absl::StatusOr<std::unique_ptr<TempCacheDir>> t = TempCacheDir::Create();
    if (!t.ok()) return t.status();
    temp = std::move(*t);
    ro.cache_dir = temp->path();
  }
  absl::StatusOr<std::unique_ptr<Runtime>> rt = OpenRuntime(ro);
  if (!rt.ok()) return rt.status();
  Runtime& r = **rt;

  EvalReport report;
  report.model_dir = options.model_dir;
  report.model_fingerprint = r.model.fingerprint.ToHex();
  report.dataset = options.dataset_path;
  report.mode = options.mode;
  for (const QaExample& ex : *dataset) {
    absl::StatusOr<GenerateRequest> req =
        BuildQaRequest(*r.tokenizer, ex.passages, ex.question, options.max_block_tokens);
    if (!req.ok()) return req.status();
    req->max_new_tokens = options.max_new_tokens;
    req->sampling.temperature = 0;  // greedy
    req->mode = options.mode;
    absl::StatusOr<GenerateResult> g = r.engine->Generate(*req);
    if (!g.ok()) return g.status();
    absl::StatusOr<std::string> decoded = r.tokenizer->Decode(g->tokens);
    if (!decoded.ok()) return decoded.status();
    EvalExampleResult res;
    res.id = ex.id;
    res.expected = ex.answer;
    res.answer = NormalizeAnswer(*decoded);
    res.correct = res.answer == ex.answer;
    res.stop_reason = g->stop_reason;
    res.ttft_ms = g->timings.ttft_ms;
    res.cache_hits = g->cache_hits;
    res.cache_misses = g->cache_misses;
    report.correct += res.correct;
    report.results.push_back(std::move(res));
    ++report.examples;
    if (progress != nullptr && report.examples % 50 == 0) {
      *progress << absl::StrFormat("  %d/%d examples, %d correct\n", report.examples,
                                   dataset->size(), report.correct);
    }
  }
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace kvblock
