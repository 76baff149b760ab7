// The pinned buffer pool on a GPU (label `gpu`, exit 77 without one): its buffers are
// page-locked (CUDA reports them as registered host memory allocated portable, a pageable vector
// as unregistered), stay so when a slab is reused, and a block made resident from a payload in
// one (CudaBackend::MakeResident, the engine's path for blocks fetched over UCX) gives exactly
// the device KV that the same payload gives from pageable memory, equal to the payload's own.
// End to end: a runtime with the cuda backend over a cache server in this process (UCX on
// loopback) reads the blocks another runtime wrote into its pinned pool, and generates the same
// tokens.
#include "worker/engine/cuda/pinned_memory.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <vector>

#include "cache/block_payload.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/cache_server.h"
#include "tests/services/cluster_test_util.h"
#include "tests/worker/engine/cuda/fixture_dirs.h"
#include "worker/engine/cuda/cuda_backend.h"
#include "worker/model/model.h"
#include "worker/service/runtime.h"

namespace kvblock {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// Whether CUDA sees `p` as page-locked host memory allocated portable.
void ExpectPinned(const void* p) {
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, p), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);
  unsigned int flags = 0;
  ASSERT_EQ(cudaHostGetFlags(&flags, const_cast<void*>(p)), cudaSuccess);
  EXPECT_NE(flags & cudaHostAllocPortable, 0u);
}

TEST(PinnedBufferPool, BuffersArePageLockedAndStaySoWhenReused) {
  HostBufferPoolOptions o;
  o.capacity_bytes = 64 * kMiB;
  auto pool = cuda::CreatePinnedBufferPool(o);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const uint64_t bytes = 3 * kMiB + 5;
  const uint8_t* first = nullptr;
  {
    auto b = (*pool)->Take(bytes);
    ASSERT_TRUE(b.ok()) << b.status();
    first = b->bytes.data();
    ExpectPinned(first);
    ExpectPinned(first + bytes - 1);
    // A round trip through the device from the buffer, fresh random bytes.
    std::mt19937_64 rng(std::random_device{}());
    for (uint8_t& x : b->bytes) x = static_cast<uint8_t>(rng());
    void* dev = nullptr;
    ASSERT_EQ(cudaMalloc(&dev, bytes), cudaSuccess);
    std::vector<uint8_t> back(bytes);
    ASSERT_EQ(cudaMemcpy(dev, b->bytes.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(back.data(), dev, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaFree(dev), cudaSuccess);
    EXPECT_EQ(std::memcmp(back.data(), b->bytes.data(), bytes), 0);
  }
  // The released slab comes back, still pinned.
  auto again = (*pool)->Take(bytes - 1000);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->bytes.data(), first);
  ExpectPinned(again->bytes.data());
  EXPECT_EQ((*pool)->Stats().reuses, 1u);
  // Pageable memory, for contrast: CUDA does not know it.
  std::vector<uint8_t> pageable(bytes);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, pageable.data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeUnregistered);
  unsigned int flags = 0;
  EXPECT_NE(cudaHostGetFlags(&flags, pageable.data()), cudaSuccess);
  (void)cudaGetLastError();  // that expected failure is not sticky; clear it
}

TEST(PinnedBufferPool, MakeResidentFromAPinnedBufferMatchesPageableMemory) {
  const std::vector<std::string> dirs = testing::FixtureDirs();
  ASSERT_FALSE(dirs.empty());
  ModelLoadOptions mo;
  mo.model_id = "pinned-memory-test";  // keeps the fixture directories untouched
  auto model = LoadModel(dirs.front(), mo);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = model->config;
  CudaBackendOptions bo;
  bo.dtype = KvDtype::kF32;  // payloads in the model's dtype: MakeResident copies them as they are
  bo.kv_pool_tokens = 1024;
  bo.gpu_tier_bytes = 64 * kMiB;
  // Two backends, so neither finds the block in its GPU tier already.
  auto from_pinned = CreateCudaBackend(*model->weights, c, bo);
  auto from_pageable = CreateCudaBackend(*model->weights, c, bo);
  ASSERT_TRUE(from_pinned.ok() && from_pageable.ok());

  // A block of random K/V (never zeros).
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.f, 1.f);
  BlockMeta meta;
  meta.model = model->fingerprint;
  meta.key = Hash128{rng(), rng()};
  meta.dtype = KvDtype::kF32;
  meta.num_layers = static_cast<uint32_t>(c.num_layers);
  meta.num_kv_heads = static_cast<uint32_t>(c.num_kv_heads);
  meta.head_dim = static_cast<uint32_t>(c.head_dim);
  meta.num_tokens = 48;
  const size_t n =
      static_cast<size_t>(c.num_layers * c.num_kv_heads * meta.num_tokens * c.head_dim);
  std::vector<float> k(n), v(n);
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  auto payload = EncodeBlock(meta, k, v);
  ASSERT_TRUE(payload.ok()) << payload.status();

  HostBufferPoolOptions po;
  po.capacity_bytes = 64 * kMiB;
  auto pool = cuda::CreatePinnedBufferPool(po);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto pinned = (*pool)->Take(payload->size());
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  std::memcpy(pinned->bytes.data(), payload->data(), payload->size());
  ExpectPinned(pinned->bytes.data());

  std::vector<std::vector<float>> ks, vs;
  for (Backend* b :
       {static_cast<Backend*>(from_pinned->get()), static_cast<Backend*>(from_pageable->get())}) {
    const absl::Span<const uint8_t> bytes = b == from_pinned->get()
                                                ? absl::Span<const uint8_t>(pinned->bytes)
                                                : absl::MakeConstSpan(*payload);
    auto view = BlockView::Parse(bytes);
    ASSERT_TRUE(view.ok()) << view.status();
    const Backend::ResidentBlock resident = b->MakeResident(*view);
    ASSERT_NE(resident, nullptr);
    auto seq = b->NewSequence(meta.num_tokens);
    ASSERT_TRUE(seq.ok()) << seq.status();
    ASSERT_TRUE(b->AppendResident(**seq, resident).ok());
    ks.emplace_back(n);
    vs.emplace_back(n);
    ASSERT_TRUE(
        b->ReadKv(**seq, 0, meta.num_tokens, absl::MakeSpan(ks.back()), absl::MakeSpan(vs.back()))
            .ok());
  }
  // The same device bytes either way; V is the payload's V, K the payload's K (re-encoded by
  // offset 0: unchanged up to rounding).
  EXPECT_EQ(ks[0], ks[1]);
  EXPECT_EQ(vs[0], vs[1]);
  EXPECT_EQ(vs[0], v);
  double err = 0, ref = 0;
  for (size_t i = 0; i < n; ++i) {
    err += (double{ks[0][i]} - k[i]) * (double{ks[0][i]} - k[i]);
    ref += double{k[i]} * k[i];
  }
  EXPECT_LE(std::sqrt(err / ref), 1e-6);
}

TEST(PinnedBufferPool, RuntimeReadsClusterBlocksIntoItsPinnedPool) {
  const std::vector<std::string> dirs = testing::FixtureDirs();
  ASSERT_FALSE(dirs.empty());
  testing::TempDir dir;
  CacheServerOptions so;
  so.listen = "127.0.0.1:0";
  so.ucx_listen = "127.0.0.1:0";
  so.data_dir = dir.Sub("data");
  so.memory_bytes = 256 * kMiB;
  so.sync = "none";
  auto server = CacheServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status();

  RuntimeOptions ro;
  ro.model_dir = dirs.front();
  ro.model_id = "pinned-memory-test";
  ro.cluster.members = {(*server)->grpc_address()};
  ro.cluster.replication = 1;
  ro.local_tier = false;  // every block read goes to the cluster
  ro.backend.name = "cuda";
  ro.backend.dtype = "f32";
  ro.pinned_buffer_bytes = 256 * kMiB;
  std::ifstream in(dirs.front() + "/reference.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  GenerateRequest req;
  req.blocks = j["blocks"].get<std::vector<std::vector<int32_t>>>();
  req.final_block = j["final_block"].get<std::vector<int32_t>>();
  req.max_new_tokens = 8;

  // The first runtime encodes the blocks and writes them to the cluster; the second (a fresh
  // GPU tier) fetches them over UCX.
  auto writer = OpenRuntime(ro);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_NE((*writer)->buffers, nullptr);
  EXPECT_EQ((*writer)->cluster->options().buffers, (*writer)->buffers.get());
  auto wrote = (*writer)->engine->Generate(req);
  ASSERT_TRUE(wrote.ok()) << wrote.status();
  EXPECT_EQ(wrote->cache_misses, static_cast<int64_t>(req.blocks.size()));

  auto reader = OpenRuntime(ro);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE((*reader)->cluster->HasDataPlane(0)) << "no UCX session to the cache server";
  auto read = (*reader)->engine->Generate(req);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->cache_hits, static_cast<int64_t>(req.blocks.size()));
  EXPECT_EQ(read->tokens, wrote->tokens);
  const HostBufferPoolStats st = (*reader)->buffers->Stats();
  EXPECT_EQ(st.takes, req.blocks.size());
  EXPECT_EQ(st.bytes_taken, 0u);  // the request let go of its blocks
  EXPECT_EQ((*reader)->cluster->buffer_fallbacks(), 0u);

  // With the worker-local tier on, its arena is a host region of the backend: a block read from
  // there (one the GPU tier does not hold yet) is copied from memory registered by that copy.
  ro.local_tier = true;
  ro.memory_bytes = 64 * kMiB;
  auto layered = OpenRuntime(ro);
  ASSERT_TRUE(layered.ok()) << layered.status();
  ASSERT_NE((*layered)->layered, nullptr);
  std::vector<int32_t> fresh = req.blocks.front();
  std::reverse(fresh.begin(), fresh.end());  // a block no runtime encoded yet
  Engine& engine = *(*layered)->engine;
  auto payload = engine.EncodeBlock(fresh);
  ASSERT_TRUE(payload.ok()) << payload.status();
  const BlockKey key = engine.KeyOf(fresh);
  ASSERT_TRUE((*layered)->embedded->Put(key, *payload).ok());
  auto local = (*layered)->embedded->Get(key);
  ASSERT_TRUE(local.ok()) << local.status();
  auto registered = [](const void* p) {
    cudaPointerAttributes a{};
    const bool ok = cudaPointerGetAttributes(&a, p) == cudaSuccess && a.type == cudaMemoryTypeHost;
    cudaGetLastError();
    return ok;
  };
  EXPECT_FALSE(registered(local->bytes.data()));
  auto view = BlockView::Parse(local->bytes);
  ASSERT_TRUE(view.ok()) << view.status();
  Backend& backend = const_cast<Backend&>(engine.backend());
  auto seq = backend.NewSequence(static_cast<int64_t>(fresh.size() + req.final_block.size()));
  ASSERT_TRUE(seq.ok()) << seq.status();
  ASSERT_TRUE(backend.AppendBlock(**seq, *view).ok());
  std::vector<float> logits(backend.config().vocab_size);
  ASSERT_TRUE(backend.Forward(**seq, req.final_block, 1, absl::MakeSpan(logits)).ok());
  EXPECT_TRUE(registered(local->bytes.data()));

  // Off: no pool, reads land in vectors.
  ro.pinned_buffer_bytes = 0;
  auto plain = OpenRuntime(ro);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)->buffers, nullptr);
  EXPECT_EQ((*plain)->cluster->options().buffers, nullptr);
}

}  // namespace
}  // namespace kvblock
