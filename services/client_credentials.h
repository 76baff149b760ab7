// Credentials of kvblock's gRPC clients (the cache-cluster client, the indexer's worker client):
// the command-line flags that name them (a bearer token file; a TLS CA, client certificate and
// key), the files read into ClientCredentials, and the grpc::ChannelCredentials they make. One
// mechanism, so every client spells and checks its credential flags the same way.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"

namespace CLI {
class App;
}

namespace kvblock {

// What the flags name (paths); empty = not given.
struct ClientCredentialFlags {
  std::string auth_token_file;  // bearer token file
  std::string tls_ca;           // PEM CA of the server's certificate (turns TLS on)
  std::string tls_cert;         // PEM client certificate (mTLS)
  std::string tls_key;          // PEM client key (mTLS)
};

// The files' contents.
struct ClientCredentials {
  // Bearer token sent on every call; empty sends none. Default: "".
  std::string auth_token;
  // TLS with the roots below (system roots if empty). Default: false.
  bool use_tls = false;
  // PEM of the CA that signed the server's certificate. Default: "".
  std::string tls_root_ca_pem;
  // PEM client certificate chain and key for mTLS; both or neither. Default: "".
  std::string tls_client_cert_pem;
  std::string tls_client_key_pem;
};

// Registers --<prefix>auth-token-file, --<prefix>tls-ca, --<prefix>tls-cert, --<prefix>tls-key
// on `app`; `servers` names the peers in the help text (e.g. "the cache nodes"). `flags` must
// outlive parsing.
void AddClientCredentialFlags(CLI::App& app, ClientCredentialFlags* flags,
                              const std::string& prefix, const std::string& servers);

// Reads the files. NOT_FOUND naming an unreadable file; INVALID_ARGUMENT for a bad token file,
// or a client certificate or key without a CA or without the other half (the message spells the
// flags with `prefix`).
absl::StatusOr<ClientCredentials> LoadClientCredentials(const ClientCredentialFlags& flags,
                                                        const std::string& prefix);

// TLS channel credentials when use_tls (mTLS with a client certificate), insecure otherwise.
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const ClientCredentials& c);

}  // namespace kvblock
