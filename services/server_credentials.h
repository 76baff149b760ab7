// gRPC server credentials from PEM files, shared by every kvblock server (cache node, worker):
// plaintext when no certificate is given, TLS with one, mTLS when a client CA is given too
// (clients must then present a certificate that CA signed).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace kvblock {

// NOT_FOUND naming the file when one cannot be read; INVALID_ARGUMENT for a key without a
// certificate (or the reverse), or a client CA without a certificate.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFromFiles(
    const std::string& cert_file, const std::string& key_file, const std::string& client_ca_file);

}  // namespace kvblock
