// `kvblock cache-ctl`: the operator's tool for a cache cluster, built on CacheClient (same
// routing, replication and failover as the workers):
//   put FILE...            store block payload files (the key comes from each header)
//   get KEY -o FILE        fetch one block (UCX when offered, else gRPC)
//   lookup KEY...          one JSON line per key: present, tier, bytes, node
//   delete KEY... | --model FINGERPRINT
//   stats                  one JSON line per node
//   drain NODE [--undrain] stop (or resume) writes on a node; NODE is host:port or an index
// Keys and fingerprints are 32 hex digits. Exit codes: 0 success; 1 bad usage or input
// (INVALID_ARGUMENT, unreadable files); 2 a key is not found; 3 cluster unreachable
// (UNAVAILABLE, DEADLINE_EXCEEDED); 4 refused (UNAUTHENTICATED, PERMISSION_DENIED); 5 any other
// server error (RESOURCE_EXHAUSTED, DATA_LOSS, INTERNAL...).
#pragma once

#include "absl/status/status.h"

namespace CLI {
class App;
}

namespace kvblock {

void AddCacheCtlCommand(CLI::App& app);

// The exit code cache-ctl uses for a status (see above).
int CacheCtlExitCode(const absl::Status& status);

}  // namespace kvblock
