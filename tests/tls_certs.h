// Test helper: a throwaway PKI made with openssl for the mTLS tests. In `dir`: ca.pem / ca.key (a
// CA), server.pem / server.key (for localhost and 127.0.0.1, signed by the CA), client.pem /
// client.key (signed by the CA) and rogue.pem / rogue.key (self-signed, unknown to the CA).
#pragma once

#include <string>

#include "gtest/gtest.h"
#include "tests/run_command.h"

namespace kvblock::testing {

// Call through ASSERT_NO_FATAL_FAILURE: an openssl failure is a test failure.
inline void MakeTestCertificates(const std::string& dir) {
  const CommandRun r = RunCommand(
      "cd '" + dir + "' && set -e;"
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kvblock-test-ca"
      "  -keyout ca.key -out ca.pem;"
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr;"
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > san.ext;"
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1"
      "  -extfile san.ext -out server.pem;"
      "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr;"
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1"
      "  -out client.pem;"
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=rogue"
      "  -keyout rogue.key -out rogue.pem");
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

}  // namespace kvblock::testing
