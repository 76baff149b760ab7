// `kvblock generate`: one request through the engine, from files to files.
//
//   kvblock generate --model DIR --request REQ.json [--mode block|full] [--backend cpu]
//                    [--cache-dir DIR] [--model-id ID] [--dump-logits FILE] --output OUT.json
//
// REQ.json: {"blocks": [...], "final_block": ..., "max_new_tokens": 16, "temperature": 0,
// "top_k": 0, "top_p": 1, "seed": 0, "mode": "block"}; blocks and the final block are token-id
// lists or strings (strings go through the model's tokenizer). A fixture's reference.json is a
// valid request. OUT.json: {"tokens", "text", "mode", "stop_reason", "cache": {"hits",
// "misses"}, "timings_ms": {...}, "prompt_tokens", "model_fingerprint"}. --dump-logits writes
// the final block's logits [final_len][vocab] as safetensors (tensor "logits").
// Bad input: exit status 1 and one line on stderr; output files are written to a temporary
// name and renamed, so they are either complete or absent.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/engine.h"

namespace CLI {
class App;
}

namespace kvblock {

void AddGenerateCommand(CLI::App& app);

// A request as REQ.json states it, before tokenization.
struct RequestSpec {
  using Block = std::variant<std::vector<int32_t>, std::string>;
  std::vector<Block> blocks;
  Block final_block;
  int32_t max_new_tokens = 16;
  kernels::SamplingParams sampling;
  std::optional<AttentionMode> mode;  // absent: the command line's (default block)
};

// INVALID_ARGUMENT naming the key (and index) for malformed JSON or wrongly typed fields.
absl::StatusOr<RequestSpec> ParseRequestJson(std::string_view text);

}  // namespace kvblock
