// BlockingExecutor (blocking_executor.h).
#include "services/blocking_executor.h"

namespace kvblock {

BlockingExecutor::BlockingExecutor(int threads) {
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] {
      while (true) {
        std::function<void()> fn;
        {
          absl::MutexLock l(&mu_);
          mu_.Await(absl::Condition(
              +[](BlockingExecutor* e)
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) { return e->stop_ || !e->queue_.empty(); },
              this));
          if (queue_.empty()) return;  // stop_ and drained
          fn = std::move(queue_.front());
          queue_.pop_front();
        }
        fn();
      }
    });
  }
}

BlockingExecutor::~BlockingExecutor() {
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
  }
  for (auto& t : threads_) t.join();
}

void BlockingExecutor::Run(std::function<void()> fn) {
  absl::MutexLock l(&mu_);
  queue_.push_back(std::move(fn));
}

}  // namespace kvblock
