// How tools and services configure a CacheClient from the command line: the shared cluster
// flags (--members, --members-file, --replication, --auth-token-file, TLS files, --timeout-s),
// the members-file format, and turning those into CacheClientOptions. Used by
// `kvblock cache-ctl` and by any subcommand that talks to the cluster (indexer, worker).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/cache_client.h"

namespace CLI {
class App;
}

namespace kvblock {

struct ClusterFlags {
  std::vector<std::string> members;  // --members a:1,b:2
  std::string members_file;          // --members-file: one host:port per line, '#' comments
  uint32_t replication = 2;
  std::string auth_token_file;
  std::string tls_ca;    // PEM CA of the nodes' certificates (turns TLS on)
  std::string tls_cert;  // client certificate for mTLS
  std::string tls_key;
  double timeout_s = 5.0;  // per RPC attempt
  bool no_ucx = false;
};

// Registers the flags on `app`; `flags` must outlive parsing. `credential_prefix` goes in front
// of the credential flags (auth-token-file, tls-ca, tls-cert, tls-key) for commands that also
// serve with credentials of their own: the worker registers --cache-auth-token-file etc.
void AddClusterFlags(CLI::App& app, ClusterFlags* flags, const std::string& credential_prefix = "");

// Reads a members file. NOT_FOUND when unreadable, INVALID_ARGUMENT for a malformed line or an
// empty list.
absl::StatusOr<std::vector<std::string>> ReadMembersFile(const std::string& path);

// Flags (with their files read) -> options. Errors as ReadMembersFile / ReadTokenFile, and
// INVALID_ARGUMENT when no members are given.
absl::StatusOr<CacheClientOptions> ClientOptionsFromFlags(const ClusterFlags& flags);

}  // namespace kvblock
