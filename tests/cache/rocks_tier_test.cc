#include "cache/rocks_tier.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "cache/internal/rocks_records.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "tests/cache/store_test_util.h"

namespace kvblock {
namespace {

using testing::MakeBlock;
using testing::RandomModel;
using testing::ScratchDir;
using testing::TestBlock;

std::vector<uint8_t> Copy(const BlockBytes& b) { return {b.bytes.begin(), b.bytes.end()}; }

RocksTierOptions Options(const std::string& path, SyncPolicy sync = SyncPolicy::kPerWrite) {
  RocksTierOptions o;
  o.path = path;
  o.sync = sync;
  o.write_buffer_bytes = 4 << 20;
  return o;
}

class RocksTierTest : public ::testing::TestWithParam<SyncPolicy> {};

TEST_P(RocksTierTest, PutGetLookupAcrossRestart) {
  ScratchDir dir;
  const ModelFingerprint m1 = RandomModel(1), m2 = RandomModel(2);
  std::vector<TestBlock> blocks;
  for (uint64_t i = 0; i < 40; ++i) {
    // Small (inline) and large (blob file) payloads, two models.
    blocks.push_back(MakeBlock(i % 2 ? m1 : m2, i, i % 3 == 0 ? 2 : 40 + i));
  }
  uint64_t total_payload = 0;
  {
    auto tier = RocksTier::Open(Options(dir.path(), GetParam())).value();
    for (auto& b : blocks) {
      ASSERT_TRUE(tier->Put(b.key, b.payload).ok());
      total_payload += b.payload.size();
    }
    for (auto& b : blocks) EXPECT_EQ(Copy(tier->Get(b.key).value()), b.payload);
    ASSERT_TRUE(tier->Put(blocks[0].key, blocks[0].payload).ok());  // present: no-op
    auto s = tier->Stats()[0];
    EXPECT_EQ(s.tier, StoreTier::kDisk);
    EXPECT_EQ(s.blocks, 40u);
    EXPECT_EQ(s.inserts, 40u);
    EXPECT_EQ(s.hits, 40u);
    EXPECT_GT(s.bytes, total_payload);
    ASSERT_TRUE(tier->FlushMemtables().ok());
  }
  // A restart serves every block at once; counts are rebuilt from disk.
  auto tier = RocksTier::Open(Options(dir.path(), GetParam())).value();
  EXPECT_EQ(tier->Stats()[0].blocks, 40u);
  std::vector<BlockKey> keys;
  for (auto& b : blocks) keys.push_back(b.key);
  TestBlock absent = MakeBlock(m1, 1000);
  keys.push_back(absent.key);
  std::vector<LookupResult> found(keys.size());
  tier->Lookup(keys, absl::MakeSpan(found));
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_TRUE(found[i].present);
    EXPECT_EQ(found[i].tier, StoreTier::kDisk);
    EXPECT_EQ(found[i].payload_bytes, blocks[i].payload.size());
    EXPECT_EQ(Copy(tier->Get(blocks[i].key).value()), blocks[i].payload);
  }
  EXPECT_FALSE(found.back().present);
  EXPECT_EQ(tier->Get(absent.key).status().code(), absl::StatusCode::kNotFound);
  auto models = tier->Models();
  EXPECT_EQ(models.size(), 2u);
}

TEST_P(RocksTierTest, DeleteAndDeleteModelDropTheColumnFamily) {
  ScratchDir dir;
  const ModelFingerprint m1 = RandomModel(1), m2 = RandomModel(2);
  std::vector<TestBlock> b1, b2;
  for (uint64_t i = 0; i < 25; ++i) b1.push_back(MakeBlock(m1, i, 20));
  for (uint64_t i = 0; i < 10; ++i) b2.push_back(MakeBlock(m2, i, 20));
  {
    auto tier = RocksTier::Open(Options(dir.path(), GetParam())).value();
    for (auto& b : b1) ASSERT_TRUE(tier->Put(b.key, b.payload).ok());
    for (auto& b : b2) ASSERT_TRUE(tier->Put(b.key, b.payload).ok());
    ASSERT_TRUE(tier->Delete(b1[0].key).ok());
    ASSERT_TRUE(tier->Delete(b1[0].key).ok());
    EXPECT_EQ(tier->Get(b1[0].key).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(tier->DeleteModel(m1).value(), 24u);
    EXPECT_EQ(tier->DeleteModel(m1).value(), 0u);
    EXPECT_EQ(tier->Stats()[0].blocks, 10u);
    for (auto& b : b1) EXPECT_FALSE(tier->Get(b.key).ok());
    // The model can come back.
    ASSERT_TRUE(tier->Put(b1[5].key, b1[5].payload).ok());
  }
  auto tier = RocksTier::Open(Options(dir.path(), GetParam())).value();
  EXPECT_EQ(tier->Stats()[0].blocks, 11u);
  EXPECT_EQ(Copy(tier->Get(b1[5].key).value()), b1[5].payload);
  EXPECT_FALSE(tier->Get(b1[6].key).ok());
  for (auto& b : b2) EXPECT_EQ(Copy(tier->Get(b.key).value()), b.payload);
  // One column family per model, named after the fingerprint.
  std::vector<std::string> names;
  tier.reset();
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir.path(), &names).ok());
  std::sort(names.begin(), names.end());
  std::vector<std::string> want = {"default", internal::ModelCfName(m1),
                                   internal::ModelCfName(m2)};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(names, want);
}

INSTANTIATE_TEST_SUITE_P(SyncPolicies, RocksTierTest,
                         ::testing::Values(SyncPolicy::kPerWrite, SyncPolicy::kGroupCommit,
                                           SyncPolicy::kNone),
                         [](const auto& info) {
                           std::string n(SyncPolicyName(info.param));
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(RocksTierBadInputTest, RejectsPayloadsThatDisagreeWithTheKey) {
  ScratchDir dir;
  auto tier = RocksTier::Open(Options(dir.path())).value();
  const ModelFingerprint m = RandomModel(3);
  TestBlock a = MakeBlock(m, 1, 30), b = MakeBlock(m, 2, 30);
  EXPECT_EQ(tier->Put(b.key, a.payload).code(), absl::StatusCode::kInvalidArgument);
  TestBlock other_model = MakeBlock(RandomModel(4), 1, 30);
  EXPECT_EQ(tier->Put(a.key, other_model.payload).code(), absl::StatusCode::kInvalidArgument);
  // Same model and tokens but another dtype / token count give other keys: also refused.
  TestBlock more_tokens = MakeBlock(m, 1, 31);
  EXPECT_EQ(tier->Put(a.key, more_tokens.payload).code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> flipped = a.payload;
  flipped[200] ^= 1;
  EXPECT_EQ(tier->Put(a.key, flipped).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(tier->Stats()[0].blocks, 0u);
}

// Records planted behind the tier's back (a bug elsewhere, a bad restore): a payload under
// the wrong key, a payload of another model, garbage. Each read is a miss, counted, deleted.
TEST(RocksTierBadInputTest, MismatchedRecordsOnDiskAreDroppedCountedAndMissed) {
  ScratchDir dir;
  const ModelFingerprint m = RandomModel(5), other = RandomModel(6);
  TestBlock good = MakeBlock(m, 1, 30), a = MakeBlock(m, 2, 30), b = MakeBlock(m, 3, 30);
  TestBlock foreign = MakeBlock(other, 4, 30);
  TestBlock garbage_key = MakeBlock(m, 5, 30);
  {
    auto tier = RocksTier::Open(Options(dir.path())).value();
    ASSERT_TRUE(tier->Put(good.key, good.payload).ok());
    ASSERT_TRUE(tier->Put(a.key, a.payload).ok());
  }
  {
    rocksdb::DB* raw = nullptr;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {"default", rocksdb::ColumnFamilyOptions()},
        {internal::ModelCfName(m), rocksdb::ColumnFamilyOptions()}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir.path(), cfs, &handles, &raw).ok());
    auto put = [&](const BlockKey& key, const std::vector<uint8_t>& payload) {
      std::string v(payload.begin(), payload.end());
      ASSERT_TRUE(raw->Put({}, handles[1], internal::RecordKey('m', key), v.substr(0, 96)).ok());
      ASSERT_TRUE(raw->Put({}, handles[1], internal::RecordKey('d', key), v).ok());
    };
    put(a.key, b.payload);             // overwrites a's data with another block's payload
    put(foreign.key, foreign.payload);  // a block of another model in m's family
    std::vector<uint8_t> junk(5000, 0xab);
    put(garbage_key.key, junk);
    for (auto* h : handles) raw->DestroyColumnFamilyHandle(h);
    delete raw;
  }
  auto tier = RocksTier::Open(Options(dir.path())).value();
  for (const BlockKey& k : {a.key, foreign.key, garbage_key.key}) {
    EXPECT_EQ(tier->Get(k).status().code(), absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(tier->Stats()[0].corrupt_records, 3u);
  EXPECT_EQ(Copy(tier->Get(good.key).value()), good.payload);
  // Deleted, not merely hidden: a second read is an ordinary miss and counts nothing more.
  for (const BlockKey& k : {a.key, foreign.key, garbage_key.key}) EXPECT_FALSE(tier->Get(k).ok());
  EXPECT_EQ(tier->Stats()[0].corrupt_records, 3u);
  EXPECT_EQ(tier->Stats()[0].blocks, 1u);
  std::vector<LookupResult> found(1);
  tier->Lookup({&a.key, 1}, absl::MakeSpan(found));
  EXPECT_FALSE(found[0].present);
  // And the key can be written correctly again.
  ASSERT_TRUE(tier->Put(a.key, a.payload).ok());
  EXPECT_EQ(Copy(tier->Get(a.key).value()), a.payload);
}

// ---- Open errors -------------------------------------------------------------------------

TEST(RocksTierOpenTest, MissingDir) {
  ScratchDir dir;
  auto s = RocksTier::Open(Options(dir.Sub("nope"))).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("does not exist"), std::string::npos) << s;
  RocksTierOptions o = Options(dir.Sub("nope/deeper"));
  o.create_if_missing = true;
  EXPECT_EQ(RocksTier::Open(o).status().code(), absl::StatusCode::kNotFound);
  o = Options(dir.Sub("created"));
  o.create_if_missing = true;
  EXPECT_TRUE(RocksTier::Open(o).ok());
}

TEST(RocksTierOpenTest, NotADirectory) {
  ScratchDir dir;
  std::ofstream(dir.Sub("file")) << "x";
  EXPECT_EQ(RocksTier::Open(Options(dir.Sub("file"))).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(RocksTierOpenTest, OtherFormatVersionAndForeignDatabase) {
  ScratchDir dir;
  { ASSERT_TRUE(RocksTier::Open(Options(dir.path())).ok()); }
  std::string marker;
  {
    std::ifstream in(dir.Sub("KVBLOCK_FORMAT"));
    std::getline(in, marker);
  }
  EXPECT_EQ(marker, "kvblock-rocks-tier 1");
  std::ofstream(dir.Sub("KVBLOCK_FORMAT"), std::ios::trunc) << "kvblock-rocks-tier 2\n";
  auto s = RocksTier::Open(Options(dir.path())).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("format version 2"), std::string::npos) << s;

  ScratchDir foreign;
  {
    rocksdb::DB* raw = nullptr;
    rocksdb::Options o;
    o.create_if_missing = true;
    ASSERT_TRUE(rocksdb::DB::Open(o, foreign.path(), &raw).ok());
    delete raw;
  }
  s = RocksTier::Open(Options(foreign.path())).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("not a kvblock store"), std::string::npos) << s;
}

TEST(RocksTierOpenTest, DirInUseByAnotherOpen) {
  ScratchDir dir;
  auto first = RocksTier::Open(Options(dir.path())).value();
  auto s = RocksTier::Open(Options(dir.path())).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

// Root can write anywhere, so the read-only case runs in a child that drops to `nobody`
// when the test runs as root.
TEST(RocksTierOpenTest, ReadOnlyDir) {
  ScratchDir dir;
  const std::string ro = dir.Sub("ro");
  ASSERT_EQ(mkdir(ro.c_str(), 0555), 0);
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (geteuid() == 0 && setuid(65534) != 0) _exit(10);
    auto s = RocksTier::Open(Options(ro)).status();
    bool clear = s.code() == absl::StatusCode::kPermissionDenied &&
                 s.message().find("read-only") != std::string::npos;
    _exit(clear ? 0 : 11);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: setuid failed; 11: wrong status";
}

double Engine(const TierStats& s, const std::string& name) {
  for (const EngineStat& e : s.engine) {
    if (e.name == name) return e.value;
  }
  ADD_FAILURE() << "no engine stat " << name;
  return -1;
}

// Blob cache on (payloads pinned in the cache after the flush) and off (read from blob files):
// the same bytes either way, RocksDB's numbers in Stats move accordingly, and a value read
// stays valid after the tier is closed.
TEST(RocksTierBlobCacheTest, PinnedReadsAndEngineStats) {
  const ModelFingerprint m = RandomModel(5);
  std::vector<TestBlock> blocks;
  double total = 0;
  for (uint64_t i = 0; i < 8; ++i) {
    blocks.push_back(MakeBlock(m, 100 + i, 400));  // ~100 KiB: blob files
    total += static_cast<double>(blocks.back().payload.size());
  }
  for (const bool cached : {true, false}) {
    SCOPED_TRACE(cached ? "blob cache on" : "blob cache off");
    ScratchDir dir;
    RocksTierOptions o = Options(dir.path(), SyncPolicy::kNone);
    if (!cached) o.blob_cache_bytes = 0;
    auto tier = RocksTier::Open(o).value();
    for (auto& b : blocks) ASSERT_TRUE(tier->Put(b.key, b.payload).ok());
    ASSERT_TRUE(tier->FlushMemtables().ok());
    std::vector<BlockBytes> held;
    for (int round = 0; round < 2; ++round) {
      for (auto& b : blocks) {
        absl::StatusOr<BlockBytes> got = tier->Get(b.key);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(got->tier, StoreTier::kDisk);
        EXPECT_EQ(Copy(*got), b.payload);
        held.push_back(*std::move(got));
      }
    }
    const TierStats s = tier->Stats()[0];
    EXPECT_GE(Engine(s, "rocksdb_written_bytes_total"), total);
    EXPECT_GE(Engine(s, "rocksdb_wal_written_bytes_total"), total);
    EXPECT_GE(Engine(s, "rocksdb_blob_file_written_bytes_total"), total);
    EXPECT_GE(Engine(s, "rocksdb_blob_files_bytes"), total);
    EXPECT_GT(Engine(s, "rocksdb_sst_files_bytes"), 0);
    EXPECT_EQ(Engine(s, "rocksdb_memtables_bytes") < total, true);  // flushed
    EXPECT_GE(Engine(s, "rocksdb_stall_seconds_total"), 0);
    EXPECT_GE(Engine(s, "rocksdb_compaction_pending_bytes"), 0);
    if (cached) {
      EXPECT_GE(Engine(s, "rocksdb_blob_cache_hits_total"), 2.0 * blocks.size());
      EXPECT_EQ(Engine(s, "rocksdb_blob_file_read_bytes_total"), 0);  // prepopulated at flush
      EXPECT_GE(Engine(s, "rocksdb_blob_cache_usage_bytes"), total);
    } else {
      EXPECT_EQ(Engine(s, "rocksdb_blob_cache_hits_total"), 0);
      EXPECT_GE(Engine(s, "rocksdb_blob_file_read_bytes_total"), 2 * total);
      EXPECT_EQ(Engine(s, "rocksdb_blob_cache_usage_bytes"), 0);
    }
    // The same names every call (the metrics register families from one call).
    std::vector<std::string> names, again;
    for (const EngineStat& e : s.engine) names.push_back(e.name);
    const TierStats later = tier->Stats()[0];
    for (const EngineStat& e : later.engine) again.push_back(e.name);
    EXPECT_EQ(names, again);
    tier.reset();  // closed: the held values (pinned cache entries) stay readable
    for (size_t i = 0; i < held.size(); ++i) {
      EXPECT_EQ(Copy(held[i]), blocks[i % blocks.size()].payload);
    }
  }
}

TEST(RocksTierOpenTest, BadOptions) {
  RocksTierOptions o;
  EXPECT_EQ(RocksTier::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.path = "/tmp";
  o.min_blob_bytes = 0;
  auto s = RocksTier::Open(o).status();
  EXPECT_NE(s.message().find("min_blob_bytes"), std::string::npos);
  EXPECT_EQ(ParseSyncPolicy("group-commit").value(), SyncPolicy::kGroupCommit);
  EXPECT_FALSE(ParseSyncPolicy("sometimes").ok());
}

}  // namespace
}  // namespace kvblock
