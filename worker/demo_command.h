// `kvblock demo`: the README's main command (index a bundled corpus, then answer questions in
// block and full mode side by side).
#pragma once

namespace CLI {
class App;
}

namespace kvblock {

void AddDemoCommand(CLI::App& app);

}  // namespace kvblock
