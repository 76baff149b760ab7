// Helpers for the tests that check the metrics endpoints with real external tools (promtool,
// Prometheus, headless Chromium) and by the end-to-end tests: child processes that cannot outlive
// the test, bounded waits, free loopback ports, HTTP GETs, a Prometheus server and its query API.
// external_tools_main.cc has a main() that exits 77 (ctest SKIP_RETURN_CODE) only when a required
// tool is not installed.
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace kvblock::metrics::testing {

// Each test linking external_tools_main.cc defines this: the programs it needs on PATH.
extern const std::vector<std::string> kRequiredTools;

// Full path of `name` on PATH, or nullopt.
std::optional<std::string> FindTool(const std::string& name);

// A child process in its own process group, killed (SIGTERM, then SIGKILL after 5 s) when the
// object is destroyed, and by the kernel if the test process dies (PR_SET_PDEATHSIG: also when
// the thread that started it exits, so start long-lived children from the test's main thread).
// stdout and stderr go to `log_path`, stdin comes from `stdin_path` (empty: /dev/null).
// argv[0] is a full path (see FindTool).
class Subprocess {
 public:
  static absl::StatusOr<Subprocess> Start(const std::vector<std::string>& argv,
                                          const std::string& log_path,
                                          const std::string& stdin_path = "");
  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&&) = delete;
  ~Subprocess();

  // Exit code once the process ended within `timeout`; DEADLINE_EXCEEDED otherwise (the process
  // is then killed). Killed by a signal: 128 + signal.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // SIGTERM, bounded wait, then SIGKILL. Returns the exit code as Wait does.
  int Terminate();
  bool Running();
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  std::string Log() const;

 private:
  Subprocess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::string log_path_;
};

// Runs argv to completion within `timeout` with stdin from `stdin_path` (empty: /dev/null);
// returns exit code and combined output.
struct RunResult {
  int exit_code = -1;
  std::string output;
};
absl::StatusOr<RunResult> RunTool(const std::vector<std::string>& argv, absl::Duration timeout,
                                  const std::string& stdin_path = "");

// A fresh directory under the build tree's test scratch area (removed by the caller if wanted).
std::string MakeTempDir(const std::string& prefix);
// A loopback TCP port that was free a moment ago (bind to port 0, read it, close).
int PickFreePort();
// GET http://127.0.0.1:port/path; status and body. UNAVAILABLE when the connection fails.
struct HttpResponse {
  int status = 0;
  std::string body;
};
absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path_and_query,
                                     absl::Duration timeout = absl::Seconds(5));
// Polls `ready` every 100 ms until it returns true or `timeout` passes.
bool WaitFor(const std::function<bool()>& ready, absl::Duration timeout);
std::string ReadFileOrEmpty(const std::string& path);

// The demo metrics server of this folder (metrics_demo_server), started on a free port.
struct DemoServer {
  Subprocess process;
  int port = 0;
};
absl::StatusOr<DemoServer> StartDemoServer(const std::vector<std::string>& extra_args);

// A real `kvblock cache-server` (KVBLOCK_BIN) on loopback with --metrics-listen, and some traffic
// from `kvblock cache-ctl lookup` (random keys: counted as Lookup requests and misses).
struct CacheServerProcess {
  Subprocess process;
  std::string grpc_address;
  int metrics_port = 0;
};
absl::StatusOr<CacheServerProcess> StartCacheServer();
// Runs `kvblock cache-ctl --cache <grpc> lookup <n random keys>` `times` times.
absl::Status DriveLookups(const CacheServerProcess& server, int times, int keys_per_call);

// A real Prometheus (Debian's `prometheus`, found on PATH) on a free loopback port, scraping each
// job's target (host:port serving /metrics) every second; config, TSDB and logs under `dir`.
// NOT_FOUND when prometheus is not installed; UNAVAILABLE when it does not become ready.
struct ScrapeJob {
  std::string name;    // job label
  std::string target;  // host:port
};
struct PrometheusProcess {
  Subprocess process;
  int port = 0;
};
absl::StatusOr<PrometheusProcess> StartPrometheus(const std::vector<ScrapeJob>& jobs,
                                                  const std::string& dir);
// Instant query against Prometheus on `port`: the `result` array (empty when the query failed).
nlohmann::json PrometheusQuery(int port, const std::string& promql);
// The value of a single-sample instant query; NaN when the result is not exactly one sample.
double PrometheusScalar(int port, const std::string& promql);

}  // namespace kvblock::metrics::testing
