// The shared cluster flags and the --cache SPEC parser (cache_client_config.h).
#include "services/cache_client_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/ucx_data_plane.h"

namespace kvblock {
namespace {

bool IsHostNameChar(char c) { return absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_'; }

absl::StatusOr<std::vector<std::string>> ReadMembersFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--cache ", path, ": cannot read it"));
  std::vector<std::string> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::string m(absl::StripAsciiWhitespace(line));
    if (m.empty()) continue;
    if (absl::Status s = ValidateHostPort(m); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": ", s.message()));
    }
    out.push_back(m);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " lists no cache node"));
  return out;
}

}  // namespace

void AddClusterFlags(CLI::App& app, ClusterFlags* flags, const std::string& credential_prefix) {
  flags->credential_prefix = credential_prefix;
  app.add_option("--cache", flags->cache,
                 "Cache cluster: host:port,host:port or a file with one host:port per line");
  app.add_option("--replication", flags->replication, "Replicas per block (R)")
      ->capture_default_str();
  AddClientCredentialFlags(app, &flags->credentials, credential_prefix, "the cache nodes");
  app.add_option("--timeout-s", flags->timeout_s, "Deadline of one RPC attempt, seconds")
      ->capture_default_str();
  app.add_flag("--no-ucx", flags->no_ucx, "Read over gRPC even when nodes offer UCX");
  app.add_flag("--no-shm", flags->no_shm,
               "Do not read through the shared memory of nodes on this host");
  app.add_option("--ucx-lanes", flags->ucx_lanes,
                 "UCX data-plane lanes per node (worker threads that concurrent reads spread over)")
      ->capture_default_str();
}

absl::Status ValidateHostPort(const std::string& address) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not host:port (", why, ")"));
  };
  std::string host;
  std::string port;
  if (!address.empty() && address[0] == '[') {  // [IPv6]:port
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return bad("an IPv6 address is written [addr]:port");
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
    const bool ipv6_chars = std::all_of(host.begin(), host.end(), [](char c) {
      return absl::ascii_isxdigit(c) || c == ':' || c == '.';
    });
    if (host.empty() || !ipv6_chars) return bad("not an IPv6 address in the brackets");
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) return bad("no port");
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.empty()) return bad("no host");
    if (!std::all_of(host.begin(), host.end(), IsHostNameChar)) {
      return bad("the host holds a character a host name cannot");
    }
  }
  uint32_t p = 0;
  if (port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &p) || p == 0 || p > 65535) {
    return bad("the port must be 1..65535");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ParseCacheSpec(const std::string& spec) {
  if (absl::StripAsciiWhitespace(spec).empty()) {
    return absl::InvalidArgumentError("--cache is empty: give host:port,host:port or a file");
  }
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(spec, ec);
  if (std::filesystem::is_directory(st)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cache ", spec, " is a directory; an embedded store is given with --cache-dir"));
  }
  if (std::filesystem::is_regular_file(st)) return ReadMembersFile(spec);
  if (spec.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("--cache ", spec, ": no such members file"));
  }
  std::vector<std::string> members = absl::StrSplit(spec, ',');
  for (const std::string& m : members) {
    if (absl::Status s = ValidateHostPort(m); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--cache ", spec, ": ", s.message(), "; give host:port,host:port or a members file"));
    }
  }
  return members;
}

absl::StatusOr<CacheClientOptions> ClientOptionsFromFlags(const ClusterFlags& flags) {
  if (!flags.given()) return absl::InvalidArgumentError("no cache cluster: pass --cache");
  CacheClientOptions o;
  absl::StatusOr<std::vector<std::string>> members = ParseCacheSpec(flags.cache);
  if (!members.ok()) return members.status();
  o.members = *std::move(members);
  o.replication = std::min<uint32_t>(flags.replication, o.members.size());
  absl::StatusOr<ClientCredentials> c =
      LoadClientCredentials(flags.credentials, flags.credential_prefix);
  if (!c.ok()) return c.status();
  o.auth_token = c->auth_token;
  o.use_tls = c->use_tls;
  o.tls_root_ca_pem = c->tls_root_ca_pem;
  o.tls_client_cert_pem = c->tls_client_cert_pem;
  o.tls_client_key_pem = c->tls_client_key_pem;
  if (!(flags.timeout_s > 0)) return absl::InvalidArgumentError("--timeout-s must be > 0");
  o.rpc_timeout = absl::Seconds(flags.timeout_s);
  o.use_data_plane = !flags.no_ucx;
  o.use_shared_memory = !flags.no_shm;
  if (flags.ucx_lanes < 1 || flags.ucx_lanes > UcxClientOptions::kMaxLanes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ucx-lanes must be in [1, ", UcxClientOptions::kMaxLanes, "]"));
  }
  o.data_plane_lanes = flags.ucx_lanes;
  return o;
}

}  // namespace kvblock
