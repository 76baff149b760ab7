// Child process of store_crash_test: opens a RocksTier and writes blocks seed, seed+1, ...
// forever, printing "S <i>" before each Put and "A <i>" once the Put returned OK (the
// acknowledgement). The parent SIGKILLs it at a random moment. Bounded (10,000 blocks, 60 s) in
// case the parent dies first.
//   store_crash_writer DIR FIRST_SEED SYNC_POLICY
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/time/clock.h"
#include "cache/rocks_tier.h"
#include "tests/cache/store_crash_common.h"

namespace {

void Say(char what, uint64_t i) {
  char line[32];
  int n = std::snprintf(line, sizeof(line), "%c %llu\n", what, (unsigned long long)i);
  // One write() per line: the parent sees a line completely or not at all.
  if (write(STDOUT_FILENO, line, n) != n) _exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s DIR FIRST_SEED SYNC_POLICY\n", argv[0]);
    return 2;
  }
  kvblock::RocksTierOptions options;
  options.path = argv[1];
  options.sync = kvblock::ParseSyncPolicy(argv[3]).value();
  options.write_buffer_bytes = 2 << 20;  // frequent flushes: kills land inside them too
  auto tier = kvblock::RocksTier::Open(options);
  if (!tier.ok()) {
    std::fprintf(stderr, "open: %s\n", tier.status().ToString().c_str());
    return 1;
  }
  const uint64_t first = std::strtoull(argv[2], nullptr, 10);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  for (uint64_t i = first; i < first + 10000 && absl::Now() < deadline; ++i) {
    kvblock::testing::TestBlock b = kvblock::testing::CrashBlock(i);
    Say('S', i);
    absl::Status s = (*tier)->Put(b.key, b.payload);
    if (!s.ok()) {
      std::fprintf(stderr, "put %llu: %s\n", (unsigned long long)i, s.ToString().c_str());
      return 1;
    }
    Say('A', i);
  }
  return 0;
}
