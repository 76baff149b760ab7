// UcxServer reads blocks from the store on reader threads: a fetch whose store read blocks (a
// slow disk) must not stall fetches of other blocks, and its own reply still arrives byte-exact
// once the read returns. The store is a real MemoryTier behind a gate on one key (an explicit
// hook, no sleeps).
#include "services/ucx_data_plane.h"

#include <random>
#include <thread>

#include "absl/synchronization/notification.h"
#include "cache/memory_tier.h"
#include "gtest/gtest.h"
#include "tests/cache/store_test_util.h"

namespace kvblock {
namespace {

using testing::MakeBlock;
using testing::RandomModel;
using testing::TestBlock;

// Forwards to a real store; Get of `gated` waits until `open` is notified.
class GatedStore final : public BlockStore {
 public:
  GatedStore(BlockStore* inner, BlockKey gated) : inner_(inner), gated_(gated) {}
  absl::Status Put(const BlockKey& key, absl::Span<const uint8_t> payload) override {
    return inner_->Put(key, payload);
  }
  absl::StatusOr<BlockBytes> Get(const BlockKey& key) override {
    if (key == gated_) {
      entered.Notify();
      open.WaitForNotification();
    }
    return inner_->Get(key);
  }
  void Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) override {
    inner_->Lookup(keys, out);
  }
  absl::Status Delete(const BlockKey& key) override { return inner_->Delete(key); }
  absl::StatusOr<uint64_t> DeleteModel(const ModelFingerprint& model) override {
    return inner_->DeleteModel(model);
  }
  std::vector<TierStats> Stats() const override { return inner_->Stats(); }

  absl::Notification entered, open;

 private:
  BlockStore* inner_;
  BlockKey gated_;
};

TEST(UcxServerTest, ASlowStoreReadDoesNotStallOtherFetches) {
  const ModelFingerprint m = RandomModel(std::random_device{}());
  TestBlock slow = MakeBlock(m, 1, 256, 4), fast = MakeBlock(m, 2, 256, 4);  // 128 KiB each
  auto memory = MemoryTier::Create({}).value();
  ASSERT_TRUE(memory->Put(slow.key, slow.payload).ok());
  ASSERT_TRUE(memory->Put(fast.key, fast.payload).ok());
  GatedStore store(memory.get(), slow.key);
  auto server = UcxServer::Start({}, &store, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = UcxClient::Create({});
  ASSERT_TRUE(client.ok()) << client.status();
  auto open = (*server)->OpenSession((*client)->WorkerAddress());
  ASSERT_TRUE(open.ok()) << open.status();
  auto session =
      (*client)->Connect(open->listener_address(), open->session_token(), absl::Seconds(10));
  ASSERT_TRUE(session.ok()) << session.status();

  std::vector<uint8_t> slow_out(slow.payload.size()), fast_out(fast.payload.size());
  absl::StatusOr<uint64_t> slow_n = absl::UnknownError("not run");
  std::thread slow_fetch([&] {
    slow_n = (*client)->Fetch(*session, slow.key, absl::MakeSpan(slow_out), absl::Seconds(30));
  });
  ASSERT_TRUE(store.entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // The slow read is blocked inside the store; the same session still gets other blocks.
  for (int i = 0; i < 3; ++i) {
    auto n = (*client)->Fetch(*session, fast.key, absl::MakeSpan(fast_out), absl::Seconds(5));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(fast_out, fast.payload);
  }
  EXPECT_FALSE(store.open.HasBeenNotified());
  store.open.Notify();
  slow_fetch.join();
  ASSERT_TRUE(slow_n.ok()) << slow_n.status();
  EXPECT_EQ(*slow_n, slow.payload.size());
  EXPECT_EQ(slow_out, slow.payload);
}

TEST(UcxServerTest, ReaderOptionsAreValidated) {
  UcxServerOptions o;
  o.read_threads = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.read_threads = 2;
  o.max_reads_per_session = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.max_reads_per_session = 1;
  EXPECT_TRUE(o.Validate().ok());
}

}  // namespace
}  // namespace kvblock
