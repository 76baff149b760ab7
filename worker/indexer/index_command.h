// `kvblock index`: the offline indexer's command line (indexer.h does the work). Exit codes:
// 0 done (or stopped at --max-batches), 1 usage or other error, 2 a bad corpus line under
// --strict, 3 the cache (cluster) is unreachable or a write failed (the manifest then holds only
// fully written batches, so --resume continues safely).
#pragma once

namespace CLI {
class App;
}

namespace kvblock {

inline constexpr int kIndexExitBadInput = 2;
inline constexpr int kIndexExitCacheUnavailable = 3;

void AddIndexCommand(CLI::App& app);

}  // namespace kvblock
