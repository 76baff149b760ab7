// `kvblock inspect FILE`: decodes a block payload file and prints its header as JSON.
#pragma once

namespace CLI {
class App;
}

namespace kvblock {

void AddInspectCommand(CLI::App& app);

}  // namespace kvblock
