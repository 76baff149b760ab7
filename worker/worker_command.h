// `kvblock worker`: serves kvblock.v1.InferenceService over a model and the block cache: a
// cluster behind a worker-local memory tier (--cache SPEC, see services/cache_client_config.h)
// or an embedded store (--cache-dir DIR), exactly one of them. Blocks SIGTERM/SIGINT and
// waits for one, then drains (WorkerServer::Shutdown).
// Prints one "worker ready {json}" line when serving (and writes it to --ready-file).
// Exit codes: 0 clean shutdown, 1 bad flags or a startup failure (the reason on stderr).
#pragma once

namespace CLI {
class App;
}

namespace kvblock {

void AddWorkerCommand(CLI::App& app);

}  // namespace kvblock
