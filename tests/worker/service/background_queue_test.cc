// BackgroundQueue (worker/service/background_queue.h): items are done in order on the queue's
// thread, not the caller's; Push refuses beyond max_items; Wait returns once every queued item is
// done (and released); the destructor finishes what is queued.
#include "worker/service/background_queue.h"

#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace kvblock {
namespace {

TEST(BackgroundQueue, DoesItemsInOrderOffTheCallersThread) {
  std::vector<int> done;
  std::thread::id worker;
  {
    BackgroundQueue<int> q(100, [&](int& i) {
      worker = std::this_thread::get_id();
      done.push_back(i);
    });
    for (int i = 0; i < 50; ++i) ASSERT_TRUE(q.Push(i));
    q.Wait();
    ASSERT_EQ(done.size(), 50u);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(done[i], i);
    EXPECT_NE(worker, std::this_thread::get_id());
    for (int i = 50; i < 60; ++i) ASSERT_TRUE(q.Push(i));
  }  // the destructor finishes the queued items
  EXPECT_EQ(done.size(), 60u);
}

TEST(BackgroundQueue, RefusesBeyondItsBoundAndReleasesItemsBeforeWaitReturns) {
  absl::Notification gate;
  auto held = std::make_shared<int>(7);
  BackgroundQueue<std::shared_ptr<int>> q(2, [&](std::shared_ptr<int>&) {
    gate.WaitForNotificationWithTimeout(absl::Seconds(10));
  });
  ASSERT_TRUE(q.Push(held));  // taken by the thread (it waits at the gate) or still queued
  ASSERT_TRUE(q.Push(held));
  // At most two queued: of four more pushes while the first item may still be at the gate, at
  // least one is refused and at most one is accepted.
  int accepted = 0;
  for (int i = 0; i < 4; ++i) accepted += q.Push(held) ? 1 : 0;
  EXPECT_LE(accepted, 1);
  gate.Notify();
  q.Wait();
  EXPECT_EQ(held.use_count(), 1);  // every done item let go of its copy
}

}  // namespace
}  // namespace kvblock
