// How commands configure a CacheClient from the command line: the shared cluster flags
// (--cache SPEC, --replication, --timeout-s, --no-ucx, --ucx-lanes and the client credential
// flags), the SPEC syntax, and turning those into CacheClientOptions. Every command that talks
// to a cache cluster registers them (cache-ctl, index, worker); the commands that can also run
// on an embedded store take that as --cache-dir DIR instead, so --cache always means a cluster.
//
// --cache SPEC is either
//   - a member list: host:port[,host:port...] (host a DNS name, an IPv4 address or [IPv6]), or
//   - a members file: a path (an existing file, or any SPEC with a '/') listing one host:port per
//     line, '#' starting a comment. Kubernetes mounts the StatefulSet's DNS names this way
//     (/etc/kvblock/config/members), so the list changes without changing any command line.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/cache_client.h"
#include "services/client_credentials.h"

namespace CLI {
class App;
}

namespace kvblock {

struct ClusterFlags {
  std::string cache;  // --cache SPEC (see above); empty = not given
  uint32_t replication = 2;
  ClientCredentialFlags credentials;
  std::string credential_prefix;  // set by AddClusterFlags; spells the credential flags
  double timeout_s = 5.0;         // per RPC attempt
  bool no_ucx = false;
  bool no_shm = false;  // do not read through same-host nodes' shared memory
  uint32_t ucx_lanes = CacheClientOptions().data_plane_lanes;  // data-plane lanes per node

  bool given() const { return !cache.empty(); }
};

// Registers the flags on `app`; `flags` must outlive parsing. `credential_prefix` goes in front
// of the credential flags (auth-token-file, tls-ca, tls-cert, tls-key) for commands that also
// serve with credentials of their own: the worker registers --cache-auth-token-file etc.
void AddClusterFlags(CLI::App& app, ClusterFlags* flags, const std::string& credential_prefix = "");

// Checks a server address, host:port (a cache node, a worker). INVALID_ARGUMENT saying what is
// wrong (no port, a port that is not 1..65535, an empty host or one with characters a host name
// cannot hold).
absl::Status ValidateHostPort(const std::string& address);

// The cache nodes a --cache SPEC names, in order (the members file read). INVALID_ARGUMENT for
// an empty SPEC, a bad address (naming it, and the file line), a missing or unreadable file, a
// directory, or a file that lists no node.
absl::StatusOr<std::vector<std::string>> ParseCacheSpec(const std::string& spec);

// Flags (with their files read) -> options. INVALID_ARGUMENT when --cache is missing or bad or
// --timeout-s is not positive or --ucx-lanes out of range; LoadClientCredentials's errors.
absl::StatusOr<CacheClientOptions> ClientOptionsFromFlags(const ClusterFlags& flags);

}  // namespace kvblock
