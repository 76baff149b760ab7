// Helpers shared by the cache-cluster tests: random block payloads (fresh random bytes, never
// zeros), temporary directories, free loopback ports, and `kvblock cache-server` child processes
// (spawn, wait until ready, SIGTERM / SIGKILL).
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cache/block_payload.h"

namespace kvblock::testing {

struct TestBlock {
  BlockKey key;
  std::vector<uint8_t> payload;
};

// The model every test block belongs to (real corpora have few models; the disk tier keeps one
// column family per model).
inline constexpr Hash128 kTestModel{0x6b76626c6f636b00, 0x7465737420313233};

// A valid bf16 block of `layers` x 2 heads x `tokens` x 64 with random data and a random key.
// Payload bytes: 96 + layers * tokens * 512.
inline TestBlock RandomBlock(std::mt19937_64& rng, uint32_t layers = 4, uint32_t tokens = 16,
                             Hash128 model = kTestModel) {
  BlockMeta meta;
  meta.model = model;
  meta.key = Hash128{rng(), rng()};
  meta.dtype = KvDtype::kBF16;
  meta.num_layers = layers;
  meta.num_kv_heads = 2;
  meta.head_dim = 64;
  meta.num_tokens = tokens;
  std::vector<uint8_t> data(DataBytes(meta));
  for (size_t i = 0; i < data.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(data.data() + i, &v, std::min<size_t>(8, data.size() - i));
  }
  auto payload = EncodeBlockRaw(meta, data);
  if (!payload.ok()) std::abort();
  return {meta.key, *std::move(payload)};
}

// A fresh directory under $TMPDIR (or /tmp), removed by the destructor.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/kvblock-test-XXXXXX";
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A loopback TCP port that was free a moment ago.
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
  socklen_t len = sizeof(sa);
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  close(fd);
  return ntohs(sa.sin_port);
}

inline void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

inline std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A `kvblock` child process.
class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { Kill(SIGKILL); }

  // Starts `binary args...` with stdout/stderr appended to `log`.
  bool Start(const std::string& binary, const std::vector<std::string>& args,
             const std::string& log) {
    pid_ = fork();
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      FILE* f = std::fopen(log.c_str(), "a");
      if (f != nullptr) {
        dup2(fileno(f), 1);
        dup2(fileno(f), 2);
      }
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(binary.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    return true;
  }
  // Sends `sig` and reaps the process; returns its exit status (-1 if none).
  int Kill(int sig) {
    if (pid_ <= 0) return -1;
    kill(pid_, sig);
    return Wait();
  }
  int Wait() {
    if (pid_ <= 0) return -1;
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

// Waits until `path` exists and is non-empty; false after `timeout`.
inline bool WaitForFile(const std::string& path, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (!ReadFileOrEmpty(path).empty()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// Percentile (0..100) of a sample (sorts it).
inline double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * v.size()));
  return v[i];
}

}  // namespace kvblock::testing
