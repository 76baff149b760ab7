// Client credential flags, files and channel credentials (client_credentials.h).
#include "services/client_credentials.h"

#include <fstream>
#include <sstream>

#include "CLI/CLI.hpp"
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

void AddClientCredentialFlags(CLI::App& app, ClientCredentialFlags* flags,
                              const std::string& prefix, const std::string& servers) {
  const std::string p = "--" + prefix;
  app.add_option(p + "auth-token-file", flags->auth_token_file, "Bearer token file for " + servers);
  app.add_option(p + "tls-ca", flags->tls_ca,
                 "PEM CA of the certificates of " + servers + " (enables TLS)");
  app.add_option(p + "tls-cert", flags->tls_cert, "PEM client certificate (mTLS)");
  app.add_option(p + "tls-key", flags->tls_key, "PEM client key (mTLS)");
}

absl::StatusOr<ClientCredentials> LoadClientCredentials(const ClientCredentialFlags& flags,
                                                        const std::string& prefix) {
  ClientCredentials c;
  if (!flags.auth_token_file.empty()) {
    absl::StatusOr<std::string> t = ReadTokenFile(flags.auth_token_file);
    if (!t.ok()) return t.status();
    c.auth_token = *t;
  }
  if (!flags.tls_ca.empty()) {
    c.use_tls = true;
    absl::StatusOr<std::string> ca = ReadPem(flags.tls_ca);
    if (!ca.ok()) return ca.status();
    c.tls_root_ca_pem = *ca;
  }
  if (!flags.tls_cert.empty() || !flags.tls_key.empty()) {
    if (flags.tls_ca.empty() || flags.tls_cert.empty() || flags.tls_key.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--", prefix, "tls-cert and --", prefix,
                                                     "tls-key go together and need --", prefix,
                                                     "tls-ca"));
    }
    absl::StatusOr<std::string> cert = ReadPem(flags.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(flags.tls_key);
    if (!key.ok()) return key.status();
    c.tls_client_cert_pem = *cert;
    c.tls_client_key_pem = *key;
  }
  return c;
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const ClientCredentials& c) {
  if (!c.use_tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = c.tls_root_ca_pem;
  ssl.pem_private_key = c.tls_client_key_pem;
  ssl.pem_cert_chain = c.tls_client_cert_pem;
  return grpc::SslCredentials(ssl);
}

}  // namespace kvblock
