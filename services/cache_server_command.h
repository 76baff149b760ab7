// `kvblock cache-server`: runs one cache node (cache_server.h) until SIGTERM/SIGINT, then drains
// and exits 0. Every flag can also come from a config file (`kvblock --config FILE cache-server`:
// a TOML/INI [cache-server] section of `key = value`, names as the long flags). Prints one "cache-server ready ..."
// line when serving and, with --ready-file, writes the bound addresses there as JSON.
// Exit codes: 0 clean shutdown, 1 bad flags or a startup failure (the reason on stderr).
#pragma once

namespace CLI {
class App;
}

namespace kvblock {

void AddCacheServerCommand(CLI::App& app);

}  // namespace kvblock
