// `kvblock index`: the offline indexer's command line (indexer.h does the work). The blocks go to
// a cache cluster (--cache SPEC, services/cache_client_config.h) or an embedded store
// (--cache-dir DIR). They are encoded here, or on a worker with --worker HOST:PORT
// (remote_block_encoder.h): --model is still required then, for the tokenizer, the config and the
// fingerprint the keys are made from (the worker must serve that model), but no weights are
// loaded. Exit codes: 0 done (or stopped at --max-batches), 1 usage or other error, 2 a bad
// corpus line under --strict, 3 the cache (cluster) is unreachable or a write failed, 4 the
// worker is unreachable, overloaded, timed out or returned a bad payload (for 3 and 4 the
// manifest holds only fully written batches, so --resume continues safely).
#pragma once

namespace CLI {
class App;
}

namespace kvblock {

inline constexpr int kIndexExitBadInput = 2;
inline constexpr int kIndexExitCacheUnavailable = 3;
inline constexpr int kIndexExitWorkerUnavailable = 4;

void AddIndexCommand(CLI::App& app);

}  // namespace kvblock
