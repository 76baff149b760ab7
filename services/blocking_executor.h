// BlockingExecutor: a fixed pool of threads for store calls that may block on disk, so the
// threads that drive the network (gRPC callbacks, the UCX progress loop) never wait on RocksDB.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvblock {

// Runs blocking store work (Put commits with their fsync, Get's disk reads) off threads that
// must never block: gRPC's callback threads and the UCX progress thread. Thread-safe.
class BlockingExecutor {
 public:
  explicit BlockingExecutor(int threads);
  // Runs the queued work, then joins.
  ~BlockingExecutor();
  void Run(std::function<void()> fn);

 private:
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvblock
