// `kvblock eval`: exact-match accuracy of a model over a retrieval-QA dataset, in block or full
// mode, through the real engine and an embedded cache (worker/eval/eval.h).
#pragma once

namespace CLI {
class App;
}

namespace kvblock {

void AddEvalCommand(CLI::App& app);

}  // namespace kvblock
