#include "services/cache_client_config.h"

#include <fstream>
#include <sstream>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "services/auth.h"

namespace kvblock {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

void AddClusterFlags(CLI::App& app, ClusterFlags* flags, const std::string& credential_prefix) {
  const std::string p = "--" + credential_prefix;
  app.add_option("--members", flags->members, "Cache nodes, host:port (comma separated)")
      ->delimiter(',');
  app.add_option("--members-file", flags->members_file,
                 "File with one cache node host:port per line ('#' starts a comment)");
  app.add_option("--replication", flags->replication, "Replicas per block (R)")
      ->capture_default_str();
  app.add_option(p + "auth-token-file", flags->auth_token_file, "Bearer token file");
  app.add_option(p + "tls-ca", flags->tls_ca, "PEM CA of the nodes' certificates (enables TLS)");
  app.add_option(p + "tls-cert", flags->tls_cert, "PEM client certificate (mTLS)");
  app.add_option(p + "tls-key", flags->tls_key, "PEM client key (mTLS)");
  app.add_option("--timeout-s", flags->timeout_s, "Deadline of one RPC attempt, seconds")
      ->capture_default_str();
  app.add_flag("--no-ucx", flags->no_ucx, "Read over gRPC even when nodes offer UCX");
}

absl::StatusOr<std::vector<std::string>> ReadMembersFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read members file ", path));
  std::vector<std::string> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::string m(absl::StripAsciiWhitespace(line));
    if (m.empty()) continue;
    if (m.find(':') == std::string::npos || m.find_first_of(" \t") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": '", m, "' is not host:port"));
    }
    out.push_back(m);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " lists no members"));
  return out;
}

absl::StatusOr<CacheClientOptions> ClientOptionsFromFlags(const ClusterFlags& flags) {
  CacheClientOptions o;
  o.members = flags.members;
  if (!flags.members_file.empty()) {
    absl::StatusOr<std::vector<std::string>> m = ReadMembersFile(flags.members_file);
    if (!m.ok()) return m.status();
    o.members.insert(o.members.end(), m->begin(), m->end());
  }
  if (o.members.empty()) {
    return absl::InvalidArgumentError("no cache nodes: pass --members or --members-file");
  }
  o.replication = std::min<uint32_t>(flags.replication, o.members.size());
  if (!flags.auth_token_file.empty()) {
    absl::StatusOr<std::string> t = ReadTokenFile(flags.auth_token_file);
    if (!t.ok()) return t.status();
    o.auth_token = *t;
  }
  if (!flags.tls_ca.empty()) {
    o.use_tls = true;
    absl::StatusOr<std::string> ca = ReadPem(flags.tls_ca);
    if (!ca.ok()) return ca.status();
    o.tls_root_ca_pem = *ca;
  }
  if (!flags.tls_cert.empty() || !flags.tls_key.empty()) {
    if (flags.tls_ca.empty()) return absl::InvalidArgumentError("--tls-cert/--tls-key need --tls-ca");
    absl::StatusOr<std::string> cert = ReadPem(flags.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(flags.tls_key);
    if (!key.ok()) return key.status();
    o.tls_client_cert_pem = *cert;
    o.tls_client_key_pem = *key;
  }
  if (!(flags.timeout_s > 0)) return absl::InvalidArgumentError("--timeout-s must be > 0");
  o.rpc_timeout = absl::Seconds(flags.timeout_s);
  o.use_data_plane = !flags.no_ucx;
  return o;
}

}  // namespace kvblock
