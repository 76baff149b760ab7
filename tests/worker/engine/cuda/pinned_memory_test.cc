// The pinned buffer pool on a GPU (label `gpu`, exit 77 without one): its buffers are
// page-locked (CUDA reports them as registered host memory allocated portable, a pageable vector
// as unregistered), stay so when a slab is reused, and a block made resident from a payload in
// one (CudaBackend::MakeResident, the engine's path for blocks fetched over UCX) gives exactly
// the device KV that the same payload gives from pageable memory, equal to the payload's own.
#include "worker/engine/cuda/pinned_memory.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cache/block_payload.h"
#include "gtest/gtest.h"
#include "tests/worker/engine/cuda/fixture_dirs.h"
#include "worker/engine/cuda/cuda_backend.h"
#include "worker/model/model.h"

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
  const size_t n = static_cast<size_t>(c.num_layers * c.num_kv_heads * meta.num_tokens * c.head_dim);
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
  for (Backend* b : {static_cast<Backend*>(from_pinned->get()), static_cast<Backend*>(from_pageable->get())}) {
    const absl::Span<const uint8_t> bytes =
        b == from_pinned->get() ? absl::Span<const uint8_t>(pinned->bytes) : absl::MakeConstSpan(*payload);
    auto view = BlockView::Parse(bytes);
    ASSERT_TRUE(view.ok()) << view.status();
    const Backend::ResidentBlock resident = b->MakeResident(*view);
    ASSERT_NE(resident, nullptr);
    auto seq = b->NewSequence(meta.num_tokens);
    ASSERT_TRUE(seq.ok()) << seq.status();
    ASSERT_TRUE(b->AppendResident(**seq, resident).ok());
    ks.emplace_back(n);
    vs.emplace_back(n);
    ASSERT_TRUE(b->ReadKv(**seq, 0, meta.num_tokens, absl::MakeSpan(ks.back()), absl::MakeSpan(vs.back())).ok());
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

}  // namespace
}  // namespace kvblock
