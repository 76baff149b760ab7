// BackgroundQueue: items done one at a time, in order, by a thread of its own, so the caller
// never waits for them (LayeredStore's remote write-backs and local copies of remote hits).
// Bounded: Push refuses an item while max_items are queued.
// Thread safety: all methods are thread-safe; `work` runs on the queue's thread only.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvblock {

template <typename Item>
class BackgroundQueue {
 public:
  BackgroundQueue(size_t max_items, std::function<void(Item&)> work)
      : max_items_(max_items), work_(std::move(work)), thread_([this] { Loop(); }) {}
  // Does every queued item, then stops.
  ~BackgroundQueue() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }
  BackgroundQueue(const BackgroundQueue&) = delete;
  BackgroundQueue& operator=(const BackgroundQueue&) = delete;

  // Queues `item`; false (the item is dropped) when max_items are queued already.
  bool Push(Item item) {
    absl::MutexLock lock(&mu_);
    if (queue_.size() >= max_items_) return false;
    queue_.push_back(std::move(item));
    return true;
  }
  // Blocks until every item queued so far has been done.
  void Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &BackgroundQueue::Idle));
  }

 private:
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && !busy_; }
  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); }
  void Loop() {
    while (true) {
      Item item;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &BackgroundQueue::HasWorkOrStop));
        if (queue_.empty()) return;  // stop_
        item = std::move(queue_.front());
        queue_.pop_front();
        busy_ = true;
      }
      work_(item);
      item = Item();  // what the item holds goes before Wait() can return
      absl::MutexLock lock(&mu_);
      busy_ = false;
    }
  }

  const size_t max_items_;
  const std::function<void(Item&)> work_;
  absl::Mutex mu_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the rest is built
};

}  // namespace kvblock
