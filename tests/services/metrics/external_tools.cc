#include "tests/services/metrics/external_tools.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace kvblock::metrics::testing {

std::optional<std::string> FindTool(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  for (absl::string_view dir : absl::StrSplit(dirs, ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

namespace {

pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path,
            const std::string& stdin_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0) return pid;
  // Child: own process group, dies with the parent, output to the log.
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);
  int in = open(stdin_path.empty() ? "/dev/null" : stdin_path.c_str(), O_RDONLY);
  int out = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (in < 0 || out < 0) _exit(126);
  dup2(in, 0);
  dup2(out, 1);
  dup2(out, 2);
  execv(args[0], args.data());
  _exit(127);
}

int DecodeStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

absl::StatusOr<Subprocess> Subprocess::Start(const std::vector<std::string>& argv,
                                             const std::string& log_path,
                                             const std::string& stdin_path) {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  pid_t pid = Spawn(argv, log_path, stdin_path);
  if (pid > 0) setpgid(pid, pid);  // also here: no race with an early kill(-pid)
  if (pid < 0) return absl::InternalError(absl::StrCat("fork failed for ", argv[0]));
  return Subprocess(pid, log_path);
}

Subprocess::Subprocess(Subprocess&& other) noexcept
    : pid_(other.pid_), exit_code_(other.exit_code_), log_path_(std::move(other.log_path_)) {
  other.pid_ = -1;
}

Subprocess::~Subprocess() {
  if (pid_ > 0) Terminate();
}

absl::StatusOr<int> Subprocess::Wait(absl::Duration timeout) {
  if (pid_ <= 0) return exit_code_;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    // WNOWAIT: the exited leader stays a zombie, so its pid (our process group id) cannot be
    // reused while we kill whatever is left in the group.
    siginfo_t info{};
    if (waitid(P_PID, pid_, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      pid_ = -1;
      return absl::InternalError("waitid failed");
    }
    if (info.si_pid == pid_) {
      kill(-pid_, SIGKILL);  // leftovers of the group (e.g. Chromium's helper processes)
      int status = 0;
      waitpid(pid_, &status, 0);
      exit_code_ = DecodeStatus(status);
      pid_ = -1;
      return exit_code_;
    }
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("pid ", pid_, " still running after ", absl::FormatDuration(timeout)));
}

int Subprocess::Terminate() {
  if (pid_ <= 0) return exit_code_;
  kill(-pid_, SIGTERM);
  absl::StatusOr<int> code = Wait(absl::Seconds(5));
  if (!code.ok()) {
    kill(-pid_, SIGKILL);
    code = Wait(absl::Seconds(5));
  }
  return code.ok() ? *code : -1;
}

bool Subprocess::Running() {
  if (pid_ <= 0) return false;
  return !Wait(absl::ZeroDuration()).ok();
}

std::string Subprocess::Log() const { return ReadFileOrEmpty(log_path_); }

absl::StatusOr<RunResult> RunTool(const std::vector<std::string>& argv, absl::Duration timeout,
                                  const std::string& stdin_path) {
  static std::atomic<int> counter{0};
  static const std::string dir = MakeTempDir("run");  // one per test process
  const std::string log = absl::StrCat(dir, "/output-", counter++, ".log");
  absl::StatusOr<Subprocess> process = Subprocess::Start(argv, log, stdin_path);
  if (!process.ok()) return process.status();
  absl::StatusOr<int> code = process->Wait(timeout);
  if (!code.ok()) {
    process->Terminate();
    return absl::DeadlineExceededError(absl::StrCat(argv[0], " did not finish within ",
                                                    absl::FormatDuration(timeout), ": ",
                                                    ReadFileOrEmpty(log)));
  }
  return RunResult{*code, ReadFileOrEmpty(log)};
}

std::string MakeTempDir(const std::string& prefix) {
  const std::string root = std::string(KVBLOCK_BINARY_DIR) + "/test-scratch";
  mkdir(root.c_str(), 0755);
  std::string tmpl = absl::StrCat(root, "/", prefix, "-XXXXXX");
  if (mkdtemp(tmpl.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp failed under " << root;
    return root;
  }
  return tmpl;
}

int PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  if (fd >= 0) close(fd);
  return port;
}

absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path_and_query,
                                     absl::Duration timeout) {
  httplib::Client client("127.0.0.1", port);
  const int64_t usec = absl::ToInt64Microseconds(timeout);
  client.set_connection_timeout(usec / 1000000, usec % 1000000);
  client.set_read_timeout(usec / 1000000, usec % 1000000);
  auto res = client.Get(path_and_query.c_str());
  if (!res) {
    return absl::UnavailableError(absl::StrCat("GET 127.0.0.1:", port, path_and_query, ": ",
                                               httplib::to_string(res.error())));
  }
  return HttpResponse{res->status, res->body};
}

bool WaitFor(const std::function<bool()>& ready, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (ready()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(100));
  }
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<DemoServer> StartDemoServer(const std::vector<std::string>& extra_args) {
  const std::string dir = MakeTempDir("demo");
  const std::string port_file = dir + "/port";
  std::vector<std::string> argv = {KVBLOCK_DEMO_SERVER,
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--port-file",
                                   port_file,
                                   "--max-seconds",
                                   "120",
                                   "--data-dir",
                                   dir};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  absl::StatusOr<Subprocess> process = Subprocess::Start(argv, dir + "/server.log");
  if (!process.ok()) return process.status();
  int port = 0;
  const bool up = WaitFor(
      [&] {
        std::string text = ReadFileOrEmpty(port_file);
        return !text.empty() && absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) &&
               port > 0;
      },
      absl::Seconds(20));
  if (!up) {
    return absl::DeadlineExceededError(
        absl::StrCat("demo server did not report a port within 20 s: ", process->Log()));
  }
  return DemoServer{std::move(*process), port};
}

absl::StatusOr<CacheServerProcess> StartCacheServer() {
  const std::string dir = MakeTempDir("cache-server");
  const std::string ready_file = dir + "/ready.json";
  std::vector<std::string> argv = {KVBLOCK_BIN,      "cache-server", "--listen",
                                   "127.0.0.1:0",    "--data-dir",   dir + "/data",
                                   "--memory-bytes", "64MiB",        "--metrics-listen",
                                   "127.0.0.1:0",    "--ready-file", ready_file};
  absl::StatusOr<Subprocess> process = Subprocess::Start(argv, dir + "/server.log");
  if (!process.ok()) return process.status();
  nlohmann::json ready;
  const bool up = WaitFor(
      [&] {
        std::string text = ReadFileOrEmpty(ready_file);
        if (text.empty()) return !process->Running();
        ready = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
        return true;
      },
      absl::Seconds(30));
  if (!up || ready.is_discarded() || !ready.contains("metrics") || !ready.contains("grpc")) {
    return absl::UnavailableError(
        absl::StrCat("kvblock cache-server did not become ready: ", process->Log()));
  }
  const std::string metrics = ready["metrics"].get<std::string>();
  int port = 0;
  if (!absl::SimpleAtoi(metrics.substr(metrics.rfind(':') + 1), &port) || port <= 0) {
    return absl::InternalError(absl::StrCat("bad metrics address in ready file: ", metrics));
  }
  return CacheServerProcess{std::move(*process), ready["grpc"].get<std::string>(), port};
}

absl::Status DriveLookups(const CacheServerProcess& server, int times, int keys_per_call) {
  std::mt19937_64 rng(std::random_device{}());
  for (int i = 0; i < times; ++i) {
    std::vector<std::string> argv = {KVBLOCK_BIN, "cache-ctl", "--cache", server.grpc_address,
                                     "lookup"};
    for (int k = 0; k < keys_per_call; ++k) {
      argv.push_back(
          absl::StrCat(absl::Hex(rng(), absl::kZeroPad16), absl::Hex(rng(), absl::kZeroPad16)));
    }
    absl::StatusOr<RunResult> r = RunTool(argv, absl::Seconds(30));
    if (!r.ok()) return r.status();
    if (r->exit_code != 2) {  // 2: some key absent, which random keys are
      return absl::InternalError(
          absl::StrCat("cache-ctl lookup exited ", r->exit_code, ": ", r->output));
    }
  }
  return absl::OkStatus();
}

namespace {

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += absl::StrCat("%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<PrometheusProcess> StartPrometheus(const std::vector<ScrapeJob>& jobs,
                                                  const std::string& dir) {
  std::optional<std::string> binary = FindTool("prometheus");
  if (!binary) return absl::NotFoundError("prometheus is not on PATH");
  const std::string config = dir + "/prometheus.yml";
  {
    std::ofstream out(config);
    out << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n";
    for (const ScrapeJob& job : jobs) {
      out << "  - job_name: " << job.name << "\n    scrape_timeout: 1s\n"
          << "    static_configs:\n      - targets: ['" << job.target << "']\n";
    }
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", config));
  }
  // A port picked free can be taken before Prometheus binds it: retry a few times.
  std::string logs;
  for (int attempt = 0; attempt < 3; ++attempt) {
    const int port = PickFreePort();
    const std::string log = absl::StrCat(dir, "/prometheus-", attempt, ".log");
    absl::StatusOr<Subprocess> p =
        Subprocess::Start({*binary, "--config.file=" + config,
                           absl::StrCat("--storage.tsdb.path=", dir, "/data-", attempt),
                           absl::StrCat("--web.listen-address=127.0.0.1:", port),
                           "--log.level=warn", "--storage.tsdb.retention.time=1h"},
                          log);
    if (!p.ok()) return p.status();
    const bool ready = WaitFor(
        [&] {
          absl::StatusOr<HttpResponse> r = HttpGet(port, "/-/ready", absl::Seconds(1));
          return (r.ok() && r->status == 200) || !p->Running();
        },
        absl::Seconds(60));
    if (ready && p->Running()) return PrometheusProcess{std::move(*p), port};
    absl::StrAppend(&logs, p->Log());
    p->Terminate();
  }
  return absl::UnavailableError(absl::StrCat("Prometheus did not become ready:\n", logs));
}

nlohmann::json PrometheusQuery(int port, const std::string& promql) {
  absl::StatusOr<HttpResponse> r = HttpGet(port, "/api/v1/query?query=" + UrlEncode(promql));
  if (!r.ok() || r->status != 200) return nlohmann::json::array();
  nlohmann::json doc = nlohmann::json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || doc["status"] != "success") return nlohmann::json::array();
  return doc["data"]["result"];
}

double PrometheusScalar(int port, const std::string& promql) {
  nlohmann::json result = PrometheusQuery(port, promql);
  if (result.size() != 1) return NAN;
  return std::stod(result[0]["value"][1].get<std::string>());
}

}  // namespace kvblock::metrics::testing
