// Crash test: a child process (store_crash_writer) writes and acknowledges blocks continuously;
// the parent SIGKILLs it at a random moment, reopens the data dir and checks that every
// acknowledged block is present and intact, that a block started but not acknowledged is either
// absent or intact (never half-visible), and that nothing else appeared. Cycles accumulate in
// one dir, rotating the sync policy. KVBLOCK_CRASH_CYCLES (default 20) and KVBLOCK_CRASH_SEED
// (default: time) control the run.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <random>
#include <sstream>

#include "absl/time/clock.h"
#include "cache/rocks_tier.h"
#include "gtest/gtest.h"
#include "tests/cache/store_crash_common.h"

extern char** environ;

namespace kvblock {
namespace {

using testing::CrashBlock;
using testing::ScratchDir;

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

struct ChildRun {
  std::vector<uint64_t> started, acked;
  int exit_signal = 0;
  std::string output;
};

// Spawns the writer, lets it run `run_for`, SIGKILLs it, and parses what it acknowledged.
ChildRun RunAndKill(const std::string& dir, uint64_t first, SyncPolicy sync,
                    absl::Duration run_for) {
  int pipefd[2];
  EXPECT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], STDOUT_FILENO);
  const std::string seed = std::to_string(first);
  const std::string policy(SyncPolicyName(sync));
  const char* argv[] = {KVBLOCK_CRASH_WRITER, dir.c_str(), seed.c_str(), policy.c_str(), nullptr};
  pid_t pid = -1;
  int rc = posix_spawn(&pid, KVBLOCK_CRASH_WRITER, &actions, nullptr,
                       const_cast<char* const*>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipefd[1]);
  EXPECT_EQ(rc, 0) << "cannot start " << KVBLOCK_CRASH_WRITER;
  ChildRun run;
  if (rc != 0) return run;
  // Read until the deadline, then kill; keep reading what was written before the kill.
  fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
  const absl::Time deadline = absl::Now() + run_for;
  char buf[4096];
  bool killed = false;
  while (true) {
    ssize_t n = read(pipefd[0], buf, sizeof(buf));
    if (n > 0) {
      run.output.append(buf, n);
      continue;
    }
    if (n == 0) break;  // EOF: the child is gone
    if (!killed && absl::Now() >= deadline) {
      kill(pid, SIGKILL);
      killed = true;
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  run.exit_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  std::istringstream lines(run.output);
  char kind;
  uint64_t i;
  while (lines >> kind >> i) (kind == 'A' ? run.acked : run.started).push_back(i);
  return run;
}

TEST(StoreCrashTest, EveryAcknowledgedBlockSurvivesSigkill) {
  const int cycles = EnvInt("KVBLOCK_CRASH_CYCLES", 20);
  const unsigned seed = static_cast<unsigned>(
      EnvInt("KVBLOCK_CRASH_SEED", static_cast<int>(absl::ToUnixMicros(absl::Now()) & 0x7fffffff)));
  std::printf("crash test: %d cycles, KVBLOCK_CRASH_SEED=%u\n", cycles, seed);
  std::mt19937 rng(seed);
  ScratchDir dir;
  const SyncPolicy policies[] = {SyncPolicy::kPerWrite, SyncPolicy::kGroupCommit,
                                 SyncPolicy::kNone};
  std::map<uint64_t, bool> acked_ever;  // index -> acknowledged (false: started only)
  uint64_t next = 0, total_acked = 0, killed_mid_put = 0;
  for (int cycle = 0; cycle < cycles; ++cycle) {
    const SyncPolicy policy = policies[cycle % 3];
    // Mostly while writing; sometimes during open / WAL recovery (the first few ms).
    const absl::Duration run_for = absl::Milliseconds(rng() % 4 == 0 ? rng() % 30 : 30 + rng() % 400);
    ChildRun run = RunAndKill(dir.path(), next, policy, run_for);
    ASSERT_EQ(run.exit_signal, SIGKILL) << "the writer exited on its own:\n" << run.output;
    for (uint64_t i : run.started) acked_ever.emplace(i, false);
    for (uint64_t i : run.acked) acked_ever[i] = true;
    total_acked += run.acked.size();
    if (run.started.size() > run.acked.size()) ++killed_mid_put;
    if (!run.started.empty()) next = run.started.back() + 1;

    RocksTierOptions o;
    o.path = dir.path();
    auto tier = RocksTier::Open(o);
    ASSERT_TRUE(tier.ok()) << "cycle " << cycle << ": " << tier.status();
    uint64_t present = 0;
    std::vector<uint64_t> gone;
    for (const auto& [i, acked] : acked_ever) {
      testing::TestBlock b = CrashBlock(i);
      absl::StatusOr<BlockBytes> got = (*tier)->Get(b.key);
      if (got.ok()) {
        ++present;
        ASSERT_TRUE(std::equal(got->bytes.begin(), got->bytes.end(), b.payload.begin(),
                               b.payload.end()))
            << "cycle " << cycle << ": block " << i << " came back with other bytes";
        continue;
      }
      ASSERT_FALSE(acked) << "cycle " << cycle << " (" << SyncPolicyName(policy)
                          << "): acknowledged block " << i << " is lost: " << got.status();
      ASSERT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
      gone.push_back(i);  // started, never acknowledged, absent: allowed
    }
    for (uint64_t i : gone) acked_ever.erase(i);
    auto stats = (*tier)->Stats()[0];
    EXPECT_EQ(stats.corrupt_records, 0u) << "cycle " << cycle << ": a torn record was visible";
    EXPECT_EQ(stats.blocks, present) << "cycle " << cycle << ": blocks nobody wrote appeared";
  }
  std::printf("crash test: %llu blocks acknowledged over %d kills, %llu kills mid-Put\n",
              (unsigned long long)total_acked, cycles, (unsigned long long)killed_mid_put);
  EXPECT_GT(total_acked, static_cast<uint64_t>(cycles));  // the writer really ran
}

}  // namespace
}  // namespace kvblock
