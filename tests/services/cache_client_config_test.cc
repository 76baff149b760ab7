// Tests of services/cache_client_config (the --cache SPEC parser, host:port checks, flags ->
// CacheClientOptions) and services/client_credentials (credential files).
#include "services/cache_client_config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvblock {
namespace {

namespace fs = std::filesystem;

class CacheSpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kvblock-cache-spec-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }

  static std::string Error(const std::string& spec) {
    absl::StatusOr<std::vector<std::string>> m = ParseCacheSpec(spec);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << spec;
    return std::string(m.status().message());
  }

  fs::path dir_;
};

TEST_F(CacheSpecTest, MemberLists) {
  using V = std::vector<std::string>;
  EXPECT_EQ(*ParseCacheSpec("127.0.0.1:7070"), V{"127.0.0.1:7070"});
  EXPECT_EQ(*ParseCacheSpec("a:1,b.example.com:65535,[::1]:7070"),
            (V{"a:1", "b.example.com:65535", "[::1]:7070"}));
  EXPECT_EQ(*ParseCacheSpec("kvblock-cache-0.kvblock-cache.kvblock.svc.cluster.local:7070"),
            V{"kvblock-cache-0.kvblock-cache.kvblock.svc.cluster.local:7070"});
}

TEST_F(CacheSpecTest, BadMemberLists) {
  EXPECT_NE(Error("").find("empty"), std::string::npos);
  EXPECT_NE(Error("  ").find("empty"), std::string::npos);
  EXPECT_NE(Error("host").find("no port"), std::string::npos);
  EXPECT_NE(Error("host:").find("1..65535"), std::string::npos);
  EXPECT_NE(Error("host:0").find("1..65535"), std::string::npos);
  EXPECT_NE(Error("host:65536").find("1..65535"), std::string::npos);
  EXPECT_NE(Error("host:70x").find("1..65535"), std::string::npos);
  EXPECT_NE(Error("host:-1").find("1..65535"), std::string::npos);
  EXPECT_NE(Error(":7070").find("no host"), std::string::npos);
  EXPECT_NE(Error("a:1,,b:2").find("''"), std::string::npos);  // an empty entry
  EXPECT_NE(Error("a:1, b:2").find("' b:2'"), std::string::npos);
  EXPECT_NE(Error("::1:7070").find("host"), std::string::npos);  // IPv6 needs brackets
  EXPECT_NE(Error("[::1]7070").find("[addr]:port"), std::string::npos);
  EXPECT_NE(Error("[zz]:7070").find("IPv6"), std::string::npos);
  EXPECT_NE(Error("members.txt").find("members file"), std::string::npos);  // not a file here
}

TEST_F(CacheSpecTest, MembersFile) {
  const std::string path =
      Write("members", "# the cluster\n\n  node-0.svc:7070  \nnode-1.svc:7071 # second\n");
  EXPECT_EQ(*ParseCacheSpec(path),
            (std::vector<std::string>{"node-0.svc:7070", "node-1.svc:7071"}));
  // A relative path without '/' is a file too when it exists.
  const fs::path cwd = fs::current_path();
  fs::current_path(dir_);
  EXPECT_EQ(ParseCacheSpec("members")->size(), 2u);
  fs::current_path(cwd);
}

TEST_F(CacheSpecTest, BadMembersFiles) {
  EXPECT_NE(Error((dir_ / "missing").string()).find("no such members file"), std::string::npos);
  EXPECT_NE(Error(dir_.string()).find("--cache-dir"), std::string::npos);
  EXPECT_NE(Error(Write("empty", "# nobody\n\n")).find("lists no cache node"), std::string::npos);
  const std::string bad = Write("bad", "a:1\nb:99999\n");
  EXPECT_NE(Error(bad).find(bad + ":2: 'b:99999'"), std::string::npos) << Error(bad);
}

TEST_F(CacheSpecTest, FlagsToOptions) {
  ClusterFlags f;
  EXPECT_NE(ClientOptionsFromFlags(f).status().message().find("--cache"), std::string::npos);
  f.cache = "a:1,b:2,c:3";
  f.replication = 5;
  f.timeout_s = 2;
  absl::StatusOr<CacheClientOptions> o = ClientOptionsFromFlags(f);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->members.size(), 3u);
  EXPECT_EQ(o->replication, 3u);  // capped at the members
  EXPECT_EQ(o->rpc_timeout, absl::Seconds(2));
  EXPECT_EQ(o->data_plane_lanes, CacheClientOptions().data_plane_lanes);
  EXPECT_FALSE(o->use_tls);
  f.credentials.auth_token_file = Write("token", "  s3cret\n");
  f.credentials.tls_ca = Write("ca.pem", "CA PEM");
  o = ClientOptionsFromFlags(f);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->auth_token, "s3cret");
  EXPECT_TRUE(o->use_tls);
  EXPECT_EQ(o->tls_root_ca_pem, "CA PEM");
  // A client certificate needs its key; the message spells the command's flags.
  f.credential_prefix = "cache-";
  f.credentials.tls_cert = Write("cert.pem", "CERT");
  EXPECT_NE(ClientOptionsFromFlags(f).status().message().find("--cache-tls-key"),
            std::string::npos);
  f.credentials.tls_key = (dir_ / "no-key.pem").string();
  EXPECT_EQ(ClientOptionsFromFlags(f).status().code(), absl::StatusCode::kNotFound);
  f.credentials = {};
  f.timeout_s = 0;
  EXPECT_EQ(ClientOptionsFromFlags(f).status().code(), absl::StatusCode::kInvalidArgument);
  f.timeout_s = 2;
  f.ucx_lanes = 8;
  o = ClientOptionsFromFlags(f);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->data_plane_lanes, 8u);
  for (uint32_t bad : {0u, 65u}) {
    f.ucx_lanes = bad;
    EXPECT_NE(ClientOptionsFromFlags(f).status().message().find("--ucx-lanes"), std::string::npos);
  }
}

}  // namespace
}  // namespace kvblock
