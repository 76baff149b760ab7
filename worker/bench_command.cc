// `kvblock bench ttft`; see bench_command.h.
#include "worker/bench_command.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

#ifdef KVBLOCK_WITH_CUDA
#include <cuda_runtime_api.h>
#include <unistd.h>

#include "cache/block_key.h"
#include "kernels/cuda/kernels.h"
#include "worker/engine/cuda/cuda_backend.h"
#include "worker/engine/cuda/cuda_model.h"
#include "worker/engine/cuda/gpu_tier.h"
#include "worker/engine/cuda/host_regions.h"
#include "worker/engine/cuda/layer_pipeline.h"
#include "worker/engine/cuda/pinned_memory.h"
#include "services/cache_client.h"
#include "services/cache_server.h"
#include "worker/engine/engine.h"
#include "worker/model/config.h"
#include "worker/service/runtime.h"
#endif

namespace kvblock {

absl::Status BenchTtftOptions::Validate() const {
  if (lengths.empty() || final_block <= 0 || passage <= 0 || runs < 1 || warmup < 0 ||
      decode_context <= 0 || encode_batch <= 0 || fetch_threads <= 0 || fetch_threads > 64) {
    return absl::InvalidArgumentError("bench ttft: sizes and runs must be positive, fetch threads at most 64");
  }
  for (int l : lengths) {
    if (l <= final_block) return absl::InvalidArgumentError(absl::StrCat("bench ttft: length ", l, " <= final block"));
  }
  for (int b : decode_batches) {
    if (b <= 0) return absl::InvalidArgumentError("bench ttft: decode batch must be positive");
  }
  return absl::OkStatus();
}

#ifndef KVBLOCK_WITH_CUDA

absl::Status RunBenchTtft(const BenchTtftOptions&) {
  return absl::FailedPreconditionError("bench ttft: this kvblock was built without CUDA");
}

#else

namespace {

using cuda::CudaStatus;
using Clock = std::chrono::steady_clock;

#define BENCH_RETURN_IF_ERROR(expr) \
  do {                              \
    absl::Status _st = (expr);      \
    if (!_st.ok()) return _st;      \
  } while (0)

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Times `fn` (which must leave the GPU idle when it returns) `warmup` + `runs` times.
template <typename Fn>
absl::StatusOr<double> MedianMs(int warmup, int runs, Fn fn) {
  std::vector<double> times;
  for (int i = 0; i < warmup + runs; ++i) {
    const auto t0 = Clock::now();
    BENCH_RETURN_IF_ERROR(fn());
    const double ms = Ms(Clock::now() - t0);
    if (i >= warmup) times.push_back(ms);
  }
  return Median(times);
}

// Llama-3.1-8B's config.json in ModelConfig form (the shape every number here is for).
ModelConfig Llama3_8BConfig() {
  ModelConfig c;
  c.architecture_name = "LlamaForCausalLM";
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5f;
  c.rope.type = kernels::RopeType::kLlama3;
  c.rope.theta = 500000.0;
  c.rope.factor = 8.0;
  c.rope.low_freq_factor = 1.0;
  c.rope.high_freq_factor = 4.0;
  c.rope.original_max_position_embeddings = 8192;
  return c;
}

struct Baselines {
  double h2d_gbps = 0, hbm_gbps = 0, gemm_tflops = 0;
  double h2d_pieces_gbps = 0, h2d_batched_gbps = 0;  // 1 GiB in 2 MiB pieces: one by one, batched
};

absl::StatusOr<Baselines> MeasureBaselines(cuda::CudaModel& model, const BenchTtftOptions& o) {
  Baselines b;
  cudaStream_t st = model.stream();
  cudaEvent_t e0, e1;
  BENCH_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&e0), "event"));
  BENCH_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&e1), "event"));
  auto event_ms = [&](auto body, int reps) -> absl::StatusOr<double> {
    std::vector<double> v;
    for (int i = 0; i < reps + 2; ++i) {
      BENCH_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(e0, st), "record"));
      BENCH_RETURN_IF_ERROR(body());
      BENCH_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(e1, st), "record"));
      BENCH_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(e1), "sync"));
      float ms = 0;
      BENCH_RETURN_IF_ERROR(CudaStatus(cudaEventElapsedTime(&ms, e0, e1), "elapsed"));
      if (i >= 2) v.push_back(ms);
    }
    return Median(v);
  };
  {
    const size_t bytes = size_t{1} << 30;
    auto host = cuda::PinnedMemory::Allocate(bytes);
    if (!host.ok()) return host.status();
    std::memset(host->get(), 0x3c, bytes);
    auto dev = cuda::DeviceMemory::Allocate(bytes);
    if (!dev.ok()) return dev.status();
    auto ms = event_ms([&] { return CudaStatus(cudaMemcpyAsync(dev->get(), host->get(), bytes, cudaMemcpyHostToDevice, st), "H2D"); }, 5);
    if (!ms.ok()) return ms.status();
    b.h2d_gbps = bytes / (*ms * 1e-3) / 1e9;
    // The same bytes as the layer pipeline moves them: 2 MiB pieces (one 512-token block's layer
    // of an 8B model), one cudaMemcpyAsync each, and as one batch.
    std::vector<cuda::CopyPiece> pieces;
    for (size_t at = 0; at < bytes; at += size_t{2} << 20) {
      pieces.push_back(cuda::CopyPiece{dev->as<char>() + at, host->as<char>() + at, size_t{2} << 20});
    }
    auto one_by_one = event_ms([&]() -> absl::Status {
      for (const cuda::CopyPiece& p : pieces) {
        BENCH_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(p.dst, p.src, p.bytes, cudaMemcpyHostToDevice, st), "H2D"));
      }
      return absl::OkStatus();
    }, 5);
    if (!one_by_one.ok()) return one_by_one.status();
    auto batched = event_ms([&] { return cuda::CopyPiecesToDevice(pieces, st); }, 5);
    if (!batched.ok()) return batched.status();
    b.h2d_pieces_gbps = bytes / (*one_by_one * 1e-3) / 1e9;
    b.h2d_batched_gbps = bytes / (*batched * 1e-3) / 1e9;
  }
  {
    const size_t bytes = size_t{2} << 30;
    auto src = cuda::DeviceMemory::Allocate(bytes), dst = cuda::DeviceMemory::Allocate(bytes);
    if (!src.ok()) return src.status();
    if (!dst.ok()) return dst.status();
    BENCH_RETURN_IF_ERROR(cuda::FillRandom(cuda::DType::kBF16, src->get(), bytes / 2, 7, 1.f, st));
    auto ms = event_ms([&] { return CudaStatus(cudaMemcpyAsync(dst->get(), src->get(), bytes, cudaMemcpyDeviceToDevice, st), "D2D"); }, 5);
    if (!ms.ok()) return ms.status();
    b.hbm_gbps = 2.0 * bytes / (*ms * 1e-3) / 1e9;  // read + write
  }
  {
    const int n = 8192;
    auto a = cuda::DeviceMemory::Allocate(size_t{n} * n * 2), w = cuda::DeviceMemory::Allocate(size_t{n} * n * 2),
         c = cuda::DeviceMemory::Allocate(size_t{n} * n * 2);
    if (!a.ok() || !w.ok() || !c.ok()) return absl::ResourceExhaustedError("GEMM buffers");
    BENCH_RETURN_IF_ERROR(cuda::FillRandom(cuda::DType::kBF16, a->get(), int64_t{n} * n, 11, 1.f, st));
    BENCH_RETURN_IF_ERROR(cuda::FillRandom(cuda::DType::kBF16, w->get(), int64_t{n} * n, 12, 1.f, st));
    auto ms = event_ms([&] { return model.blas().Linear(cuda::DType::kBF16, a->get(), 0, w->get(), n, n, n, cuda::DType::kBF16, c->get(), 0); }, 10);
    if (!ms.ok()) return ms.status();
    b.gemm_tflops = 2.0 * n * n * double{n} / (*ms * 1e-3) / 1e12;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return b;
}

// How fetched blocks travel from the cache server to HBM.
enum class FetchPath {
  kUcx,  // FetchInto over the UCX data plane into pinned buffers, then H2D (the cross-host path)
  kShm,  // Get through the node's shared memory (zero copy), H2D straight from its mapped arena
};
const char* PathName(FetchPath p) { return p == FetchPath::kUcx ? "UCX" : "shm"; }

// Fetched block mode with one payload dtype and path: the whole request (fetch + verify, each
// block copied to HBM as soon as it has arrived, then the prefill), its fetch+verify part alone,
// the layer-wise copy under the prefill with the payloads already in pinned memory, the H2D floor
// (payload bytes / pinned H2D rate), and the first token's logits against those of the bf16
// blocks resident in the GPU tier.
struct FetchResult {
  KvDtype dtype = KvDtype::kBF16;
  FetchPath path = FetchPath::kUcx;
  double ms = 0, net_ms = 0, pinned_ms = 0, floor_ms = 0, gb = 0, logit_err = 0;
  bool same_token = false;
};
struct LengthResult {
  int total = 0, blocks = 0;
  double block_ms = 0, full_ms = 0, block_floor_ms = 0, full_floor_ms = 0;
  double block_graph_ms = 0;  // block mode with the prefill replayed as a CUDA graph
  // Fetched block mode: bf16 and fp8 payloads over each path (see FetchResult).
  std::vector<FetchResult> fetched;
};

// HostRegions as the target of the shared-memory client's regions (through FetchSetup's relay).
class HostRegionsTarget final : public HostRegionListener {
 public:
  explicit HostRegionsTarget(cuda::HostRegions* regions) : regions_(regions) {}
  void OnMapped(absl::Span<const uint8_t> region) override { regions_->Add(region); }
  void OnUnmapping(absl::Span<const uint8_t> region) override { regions_->Remove(region); }

 private:
  cuda::HostRegions* regions_;
};

// Fetched block mode (item 2 of the benchmark): a cache server in this process (memory tier over
// RocksDB in a temporary folder, gRPC + UCX + shared-memory data planes on loopback), a
// CacheClient over UCX (pinned host buffers for the payloads) and one over shared memory (its
// mapped regions registered with CUDA as copies read them), device buffers for the blocks' KV
// and the layer-wise copy pipeline.
struct FetchSetup {
  std::filesystem::path dir;
  std::unique_ptr<CacheServer> server;
  cuda::HostRegions regions;
  HostRegionsTarget regions_target{&regions};
  HostRegionRelay relay;                    // the shm client's regions: to `regions`, later the engine's backend
  std::unique_ptr<CacheClient> client;      // UCX (else gRPC), shared memory off
  std::unique_ptr<CacheClient> shm_client;  // shared memory; null when the node offers none
  std::string transport;
  cuda::PinnedMemory host;
  cuda::DeviceMemory device;
  std::unique_ptr<cuda::LayerPipeline> pipeline;
  FetchSetup() { relay.Attach(&regions_target); }
  ~FetchSetup() {
    pipeline.reset();
    client.reset();
    shm_client.reset();
    server.reset();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
};
// The worker's own path (Engine over a CudaBackend) with bf16 blocks fetched from the cache
// server: time to first token as Engine::Generate reports it, and what the request read.
struct EngineResult {
  int total = 0;
  FetchPath path = FetchPath::kUcx;
  double ttft_ms = 0, fetch_ms = 0, floor_ms = 0;
  int64_t hits = 0;
  uint64_t fetched_bytes = 0;
};
struct DecodeResult {
  int batch = 0;
  bool graphs = false;  // steps replayed as CUDA graphs
  double step_ms = 0, tokens_per_s = 0, floor_tokens_per_s = 0;
};

}  // namespace

absl::Status RunBenchTtft(const BenchTtftOptions& o) {
  BENCH_RETURN_IF_ERROR(o.Validate());
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError("bench ttft: no CUDA device");
  }
  cudaDeviceProp prop{};
  BENCH_RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties"));
  const int max_len = *std::max_element(o.lengths.begin(), o.lengths.end());
  const int max_decode_batch = *std::max_element(o.decode_batches.begin(), o.decode_batches.end());
  const ModelConfig config = Llama3_8BConfig();
  BENCH_RETURN_IF_ERROR(config.Validate());
  absl::StatusOr<cuda::CudaModelSpec> spec_or = cuda::SpecFromConfig(config, config.max_position_embeddings);
  if (!spec_or.ok()) return spec_or.status();
  const cuda::CudaModelSpec& spec = *spec_or;
  cuda::CudaModelOptions mo;
  mo.dtype = cuda::DType::kBF16;
  mo.max_batch_tokens = std::max({max_len, o.encode_batch * o.passage, o.decode_context});
  mo.kv_pool_tokens = std::max<int64_t>({int64_t{max_len} + o.final_block,
                                         // decode: context + both timed phases' steps
                                         int64_t{max_decode_batch} *
                                             (o.decode_context + 2 * (std::max(o.warmup, 2) + 4 * o.runs) + 8),
                                         int64_t{o.encode_batch} * o.passage});
  mo.max_seqs = std::max({64, max_decode_batch, o.encode_batch});
  mo.max_logit_rows = mo.max_seqs;  // one row per decoding sequence
  mo.max_context_runs = max_len / o.passage + 2;
  std::printf("kvblock bench ttft: %s, %d SMs, %.0f GiB; Llama-3-8B shape, random bf16 weights\n", prop.name,
              prop.multiProcessorCount, prop.totalGlobalMem / double(1 << 30));
  const auto t_init = Clock::now();
  auto model_or = cuda::CudaModel::CreateRandom(spec, mo, o.seed);
  if (!model_or.ok()) return model_or.status();
  cuda::CudaModel& model = **model_or;
  std::printf("weights %.2f GB made on the GPU in %.1f s; KV %.0f KiB/token\n", model.weight_bytes() / 1e9,
              Ms(Clock::now() - t_init) / 1e3, model.kv_bytes_per_token() / 1024.0);
  auto base_or = MeasureBaselines(model, o);
  if (!base_or.ok()) return base_or.status();
  const Baselines base = *base_or;
  std::printf("baselines: pinned H2D %.1f GB/s, HBM copy %.0f GB/s (read+write), cuBLAS bf16 GEMM 8192^3 %.0f TFLOP/s\n",
              base.h2d_gbps, base.hbm_gbps, base.gemm_tflops);
  std::printf("pinned H2D in 2 MiB pieces: %.1f GB/s one cudaMemcpyAsync each, %.1f GB/s batched\n",
              base.h2d_pieces_gbps, base.h2d_batched_gbps);

  // Passages: enough for the longest prompt; every prompt uses a prefix of them, the last one cut
  // so the total is exact.
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> tok(0, 127999);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> v(n);
    for (int32_t& x : v) x = tok(rng);
    return v;
  };
  const ModelFingerprint fingerprint{0x6b76626c6f636b, o.seed};
  std::vector<std::vector<int32_t>> passages;
  {
    int need = max_len - o.final_block;
    while (need > 0) {
      passages.push_back(random_tokens(std::min(need, o.passage)));
      need -= passages.back().size();
    }
  }
  // Prompts of shorter lengths cut the last passage they use; make those cut passages too.
  std::vector<std::vector<std::vector<int32_t>>> prompt_blocks(o.lengths.size());
  for (size_t li = 0; li < o.lengths.size(); ++li) {
    int need = o.lengths[li] - o.final_block;
    for (size_t p = 0; need > 0; ++p) {
      const int n = std::min<int>(need, passages[p].size());
      prompt_blocks[li].push_back(std::vector<int32_t>(passages[p].begin(), passages[p].begin() + n));
      need -= n;
    }
  }

  // Encode every distinct block alone (positions 0..n-1) and keep it in the GPU tier.
  cuda::GpuTierOptions to;
  to.capacity_bytes = (int64_t{max_len} + int64_t{o.passage} * int64_t(o.lengths.size())) * model.kv_bytes_per_token();
  cuda::GpuTier tier(to);
  std::vector<const std::vector<int32_t>*> to_encode;
  {
    absl::flat_hash_map<BlockKey, int> seen;
    for (auto& blocks : prompt_blocks) {
      for (auto& b : blocks) {
        const BlockKey k = ComputeBlockKey(fingerprint, KvDtype::kBF16, b);
        if (seen.emplace(k, 1).second) to_encode.push_back(&b);
      }
    }
  }
  auto encode_batch = [&](absl::Span<const std::vector<int32_t>* const> batch, bool store) -> absl::Status {
    std::vector<cuda::ForwardSeq> seqs;
    std::vector<cuda::SlotRange> slots;
    for (const auto* b : batch) {
      auto s = model.AllocateSlots(b->size());
      if (!s.ok()) return s.status();
      slots.push_back(*s);
      cuda::ForwardSeq f;
      f.tokens = *b;
      f.slots = *s;
      seqs.push_back(std::move(f));
    }
    absl::Status st = model.Forward(seqs);
    for (size_t i = 0; st.ok() && store && i < batch.size(); ++i) {
      const int n = batch[i]->size();
      auto mem = cuda::DeviceMemory::Allocate(size_t(n) * model.kv_bytes_per_token());
      if (!mem.ok()) { st = mem.status(); break; }
      st = model.ExportKv(slots[i], 0, n, mem->get());
      if (!st.ok()) break;
      cuda::GpuBlock blk;
      blk.meta = BlockMeta{fingerprint, ComputeBlockKey(fingerprint, KvDtype::kBF16, *batch[i]), KvDtype::kBF16,
                           uint32_t(spec.layers), uint32_t(spec.kv_heads), uint32_t(spec.head_dim), uint32_t(n)};
      blk.memory = std::move(*mem);
      st = tier.Insert(blk.meta.key, std::move(blk));
    }
    if (st.ok()) st = model.Synchronize();
    for (auto s : slots) model.FreeSlots(s);
    return st;
  };
  const auto t_enc = Clock::now();
  for (size_t i = 0; i < to_encode.size(); i += o.encode_batch) {
    const size_t n = std::min<size_t>(o.encode_batch, to_encode.size() - i);
    BENCH_RETURN_IF_ERROR(encode_batch(absl::MakeConstSpan(to_encode).subspan(i, n), true));
  }
  std::printf("encoded %zu blocks into the GPU tier in %.2f s (%.2f GB)\n", to_encode.size(),
              Ms(Clock::now() - t_enc) / 1e3, tier.Stats().bytes / 1e9);

  // Fetched block mode: every block also goes to a cache server, as bf16 and as fp8 payloads.
  FetchSetup fetch;
  constexpr KvDtype kFetchDtypes[2] = {KvDtype::kBF16, KvDtype::kFP8E4M3};
  if (!o.skip_fetch) {
    uint64_t payload_total = 0, host_need = 0, dev_need = 0;
    for (const auto* b : to_encode) payload_total += 2 * (b->size() * model.kv_bytes_per_token() + kBlockHeaderBytes);
    for (const auto& blocks : prompt_blocks) {
      uint64_t h = 0, d = 0;
      for (const auto& b : blocks) h += b.size() * model.kv_bytes_per_token() + kBlockHeaderBytes, d += b.size() * model.kv_bytes_per_token();
      host_need = std::max(host_need, h), dev_need = std::max(dev_need, d);
    }
    fetch.dir = std::filesystem::temp_directory_path() / absl::StrCat("kvblock-bench-", getpid());
    std::filesystem::create_directories(fetch.dir);
    CacheServerOptions so;
    so.listen = "127.0.0.1:0";
    so.ucx_listen = "127.0.0.1:0";
    so.shm_socket = (fetch.dir / "shm.sock").string();
    so.data_dir = (fetch.dir / "db").string();
    // Room to spare: the memory tier is sharded, and a block evicted to RocksDB would be read
    // from disk. A 512-token block of this model is 64 MiB plus its header.
    so.memory_bytes = 2 * payload_total + (uint64_t{1} << 30);
    so.service.max_block_bytes = uint64_t{128} << 20;
    // Every put thread may have two blocks' streams open.
    so.service.max_put_buffer_bytes = std::max<uint64_t>(so.service.max_put_buffer_bytes,
                                                         uint64_t(o.fetch_threads) * 2 * so.service.max_block_bytes);
    so.sync = "none";
    auto server = CacheServer::Start(so);
    fetch.transport = "UCX";
    if (!server.ok()) {
      std::printf("cache server with UCX failed (%s); fetching over gRPC\n", std::string(server.status().message()).c_str());
      so.ucx_listen.clear();
      server = CacheServer::Start(so);
      fetch.transport = "gRPC";
    }
    if (!server.ok()) return server.status();
    fetch.server = std::move(*server);
    CacheClientOptions co;
    co.members = {fetch.server->grpc_address()};
    co.replication = 1;
    co.rpc_timeout = absl::Seconds(30);  // 64 MiB puts on a loaded machine
    co.data_plane_lanes = o.fetch_threads;  // one lane (its own copying thread) per concurrent fetch
    co.use_shared_memory = false;
    auto client = CacheClient::Create(co);
    if (!client.ok()) return client.status();
    fetch.client = std::move(*client);
    co.use_shared_memory = true;
    co.region_listener = &fetch.relay;
    auto shm_client = CacheClient::Create(co);
    if (!shm_client.ok()) return shm_client.status();
    fetch.shm_client = std::move(*shm_client);
    const auto t_put = Clock::now();
    // bf16 payloads straight from the GPU tier; fp8 ones quantized here (per-head scales), on
    // `fetch_threads` threads (block i on thread i % threads).
    std::vector<cuda::GpuTier::Handle> handles;
    std::vector<std::vector<uint8_t>> data(to_encode.size());
    for (size_t i = 0; i < to_encode.size(); ++i) {
      handles.push_back(tier.Get(ComputeBlockKey(fingerprint, KvDtype::kBF16, *to_encode[i])));
      if (handles.back() == nullptr) return absl::InternalError("bench: block missing from the GPU tier");
      data[i].resize(handles[i]->memory.bytes());
      BENCH_RETURN_IF_ERROR(CudaStatus(
          cudaMemcpy(data[i].data(), handles[i]->memory.get(), data[i].size(), cudaMemcpyDeviceToHost), "D2H block"));
    }
    std::vector<absl::Status> errors(o.fetch_threads);
    std::vector<std::thread> threads;
    for (int t = 0; t < o.fetch_threads; ++t) {
      threads.emplace_back([&, t] {
        for (size_t i = t; i < to_encode.size() && errors[t].ok(); i += o.fetch_threads) {
          const BlockMeta& m = handles[i]->meta;
          auto bf16 = EncodeBlockRaw(m, data[i]);
          if (!bf16.ok()) { errors[t] = bf16.status(); break; }
          errors[t] = fetch.client->Put(m.key, *bf16);
          if (!errors[t].ok()) break;
          auto view = BlockView::Parse(*bf16);
          if (!view.ok()) { errors[t] = view.status(); break; }
          const size_t le = LayerElements(m);
          std::vector<float> k(le * m.num_layers), v(le * m.num_layers);
          for (uint32_t l = 0; l < m.num_layers; ++l) view->ReadLayerF32(l, k.data() + l * le, v.data() + l * le);
          BlockMeta q = m;
          q.dtype = KvDtype::kFP8E4M3;
          q.key = ComputeBlockKey(fingerprint, KvDtype::kFP8E4M3, *to_encode[i]);
          auto fp8 = EncodeBlock(q, k, v);
          if (!fp8.ok()) { errors[t] = fp8.status(); break; }
          errors[t] = fetch.client->Put(q.key, *fp8);
        }
      });
    }
    for (auto& th : threads) th.join();
    for (const auto& e : errors) BENCH_RETURN_IF_ERROR(e);
    auto host = cuda::PinnedMemory::Allocate(host_need);
    if (!host.ok()) return host.status();
    fetch.host = std::move(*host);
    auto dev = cuda::DeviceMemory::Allocate(dev_need);
    if (!dev.ok()) return dev.status();
    fetch.device = std::move(*dev);
    auto pipe = cuda::LayerPipeline::Create(spec.layers, cuda::DType::kBF16, &fetch.regions);
    if (!pipe.ok()) return pipe.status();
    fetch.pipeline = std::move(*pipe);
    // One fetch to open the data plane session before anything is timed.
    const BlockKey first = ComputeBlockKey(fingerprint, KvDtype::kBF16, *to_encode.front());
    auto got = fetch.client->FetchInto(first, absl::MakeSpan(fetch.host.as<uint8_t>(), host_need));
    if (!got.ok()) return got.status();
    if (fetch.transport == "UCX" && !fetch.client->HasDataPlane(0)) fetch.transport = "gRPC (no UCX session)";
    // The shared-memory client's first Get maps the node's arena; without that path, no shm rows.
    auto shm_first = fetch.shm_client->Get(first);
    if (!shm_first.ok()) return shm_first.status();
    if (!fetch.shm_client->HasSharedMemory(0)) {
      std::printf("the cache server offers no shared memory here: no shm rows\n");
      fetch.shm_client.reset();
    }
    std::printf("cache server in this process: %zu blocks as bf16 and fp8 (%.2f GB) put in %.1f s; fetch over %s, %d threads\n",
                to_encode.size(), payload_total / 1e9, Ms(Clock::now() - t_put) / 1e3, fetch.transport.c_str(),
                o.fetch_threads);
  }

  // Block-encoding throughput: full batches of full passages, forward only.
  std::vector<const std::vector<int32_t>*> enc_batch;
  for (size_t p = 0; p < passages.size() && enc_batch.size() < size_t(o.encode_batch); ++p) {
    if (int(passages[p].size()) == o.passage) enc_batch.push_back(&passages[p]);
  }
  auto enc_ms = MedianMs(o.warmup, o.runs, [&] { return encode_batch(enc_batch, false); });
  if (!enc_ms.ok()) return enc_ms.status();
  const double enc_tokens = double(enc_batch.size()) * o.passage;
  const double enc_tps = enc_tokens / (*enc_ms * 1e-3);
  const double layer_params = double(spec.NumParameters()) - 2.0 * spec.vocab * spec.hidden;
  const double enc_ceiling = base.gemm_tflops * 1e12 / (2.0 * layer_params);
  const double enc_ceiling_all = base.gemm_tflops * 1e12 / (2.0 * spec.NumParameters());

  // TTFT per length.
  const double weight_bytes = double(model.weight_bytes()) - double(spec.vocab) * spec.hidden * 2;  // embedding rows are gathered, not read
  std::vector<LengthResult> results;
  std::vector<cuda::SamplingParams> greedy(1);
  for (size_t li = 0; li < o.lengths.size(); ++li) {
    LengthResult r;
    r.total = o.lengths[li];
    r.blocks = prompt_blocks[li].size();
    const std::vector<int32_t> final_block = random_tokens(o.final_block);
    int32_t first_token = -1;
    // The final block's prefill over f.context (it starts at `position`), layer l waiting for
    // layer_ready[l] when given, then the first token.
    auto prefill_final = [&](cuda::ForwardSeq& f, int32_t position,
                             absl::Span<const cudaEvent_t> layer_ready) -> absl::Status {
      auto slots = model.AllocateSlots(o.final_block);
      if (!slots.ok()) return slots.status();
      f.tokens = final_block;
      f.slots = *slots;
      f.position = position;
      f.logit_rows = 1;
      absl::Status st = model.Forward({&f, 1}, layer_ready);
      if (st.ok()) st = model.Sample(greedy, {&first_token, 1});
      model.FreeSlots(*slots);
      return st;
    };
    auto block_run = [&]() -> absl::Status {
      // The request path: hash the blocks, find them in the GPU tier, prefill the final block
      // over them (re-encoded in the attention kernel), sample the first token.
      std::vector<cuda::GpuTier::Handle> held;
      cuda::ForwardSeq f;
      int32_t offset = 0;
      for (const auto& b : prompt_blocks[li]) {
        cuda::GpuTier::Handle h = tier.Get(ComputeBlockKey(fingerprint, KvDtype::kBF16, b));
        if (h == nullptr) return absl::InternalError("bench: block missing from the GPU tier");
        f.context.push_back(cuda::KvRun{h->memory.get(), int32_t(h->meta.num_tokens), offset});
        offset += h->meta.num_tokens;
        held.push_back(std::move(h));
      }
      return prefill_final(f, offset, {});
    };
    auto bm = MedianMs(o.warmup, std::max(o.runs, 10), block_run);
    if (!bm.ok()) return bm.status();
    r.block_ms = *bm;
    // The same request with the prefill replayed as a CUDA graph (the warm-up runs record it):
    // what a server gets for a request shape it has seen before.
    model.SetGraphs(true, true);
    auto bg = MedianMs(o.warmup, std::max(o.runs, 10), block_run);
    model.SetGraphs(true, false);
    if (!bg.ok()) return bg.status();
    r.block_graph_ms = *bg;
    r.block_floor_ms = (weight_bytes + double(r.total - o.final_block) * model.kv_bytes_per_token()) / (base.hbm_gbps * 1e9) * 1e3;
    if (!o.skip_fetch) {
      const std::vector<std::vector<int32_t>>& blocks = prompt_blocks[li];
      // The resident (GPU-tier, bf16) first token and logits to compare against.
      BENCH_RETURN_IF_ERROR(block_run());
      const int32_t resident_token = first_token;
      std::vector<float> resident_logits(spec.vocab), logits(spec.vocab);
      BENCH_RETURN_IF_ERROR(model.CopyLogits(absl::MakeSpan(resident_logits)));
      for (KvDtype dtype : kFetchDtypes) {
        // Where each block's payload lands (pinned, UCX path) and its KV goes (device), in
        // prompt order.
        std::vector<uint64_t> host_at(blocks.size() + 1, 0), dev_at(blocks.size() + 1, 0);
        std::vector<BlockKey> keys;
        for (size_t i = 0; i < blocks.size(); ++i) {
          const BlockMeta m{fingerprint, BlockKey{}, dtype, uint32_t(spec.layers), uint32_t(spec.kv_heads),
                            uint32_t(spec.head_dim), uint32_t(blocks[i].size())};
          keys.push_back(ComputeBlockKey(fingerprint, dtype, blocks[i]));
          dev_at[i + 1] = dev_at[i] + blocks[i].size() * model.kv_bytes_per_token();
          host_at[i + 1] = host_at[i] + PayloadBytes(m);
        }
        std::vector<std::optional<BlockView>> views(blocks.size());
        std::vector<BlockBytes> held(blocks.size());  // shm path: the leased blocks of a run
        auto device_at = [&](size_t i) -> void* { return fetch.device.as<char>() + dev_at[i]; };
        // Fetch and verify every block, `fetch_threads` at a time (block i on thread i % threads).
        // UCX: into the pinned buffer, then its whole payload goes to HBM on the pipeline's copy
        // stream (in arrival order, fp8 dequantized there), overlapping the fetches still
        // running. shm: a zero-copy Get (a lease, microseconds); the copies, reading the node's
        // mapped arena, then go layer by layer under the prefill (place_and_prefill), as the
        // engine does with blocks that arrive at the end of a fetch.
        std::mutex copy_mu;
        auto fetch_all = [&](FetchPath path) -> absl::Status {
          std::vector<absl::Status> errors(o.fetch_threads);
          std::vector<std::thread> threads;
          for (int t = 0; t < o.fetch_threads; ++t) {
            threads.emplace_back([&, t] {
              for (size_t i = t; i < blocks.size() && errors[t].ok(); i += o.fetch_threads) {
                absl::Span<const uint8_t> payload;
                if (path == FetchPath::kUcx) {
                  absl::Span<uint8_t> dst(fetch.host.as<uint8_t>() + host_at[i], host_at[i + 1] - host_at[i]);
                  auto n = fetch.client->FetchInto(keys[i], dst);
                  if (!n.ok()) { errors[t] = n.status(); break; }
                  payload = dst.subspan(0, *n);
                } else {
                  auto got = fetch.shm_client->Get(keys[i]);
                  if (!got.ok()) { errors[t] = got.status(); break; }
                  if (!got->verified) { errors[t] = absl::InternalError("bench: shm bytes not marked verified"); break; }
                  held[i] = *std::move(got);
                  payload = held[i].bytes;
                }
                // Re-hashed unless verified in this host's memory (the shm path; as the engine).
                auto v = BlockView::Parse(payload, path == FetchPath::kShm ? DataCheck::kTrusted : DataCheck::kVerify);
                if (!v.ok()) { errors[t] = v.status(); break; }
                views[i] = *v;
                if (path == FetchPath::kShm) continue;
                std::lock_guard<std::mutex> lock(copy_mu);
                const cuda::LayerCopy copy{*v, device_at(i)};
                errors[t] = fetch.pipeline->Enqueue({&copy, 1}, model.stream());
              }
            });
          }
          for (auto& th : threads) th.join();
          for (const auto& e : errors) BENCH_RETURN_IF_ERROR(e);
          return absl::OkStatus();
        };
        // The request's context runs: the blocks' device copies in prompt order.
        cuda::ForwardSeq context;
        int32_t context_len = 0;
        for (size_t i = 0; i < blocks.size(); ++i) {
          context.context.push_back(cuda::KvRun{device_at(i), int32_t(blocks[i].size()), context_len});
          context_len += blocks[i].size();
        }
        // The prefill's layer l waits for layer l of the last enqueued copy (the copy stream runs
        // in order, so every earlier copy has landed too).
        auto prefill_fetched = [&]() -> absl::Status {
          cuda::ForwardSeq f = context;
          return prefill_final(f, context_len, fetch.pipeline->layer_events());
        };
        // From pinned memory: layer-wise H2D of every block (layer 0 of all, then layer 1, ...)
        // under the prefill, whose layer l waits for layer l only.
        auto place_and_prefill = [&]() -> absl::Status {
          std::vector<cuda::LayerCopy> copies;
          for (size_t i = 0; i < blocks.size(); ++i) copies.push_back(cuda::LayerCopy{*views[i], device_at(i)});
          BENCH_RETURN_IF_ERROR(fetch.pipeline->Enqueue(copies, model.stream()));
          return prefill_fetched();
        };
        double pinned_ms = 0;
        for (FetchPath path : {FetchPath::kUcx, FetchPath::kShm}) {
          if (path == FetchPath::kShm && fetch.shm_client == nullptr) continue;
          FetchResult fr;
          fr.dtype = dtype;
          fr.path = path;
          std::vector<double> net;
          auto fm = MedianMs(o.warmup, std::max(o.runs, 10), [&]() -> absl::Status {
            const auto t0 = Clock::now();
            BENCH_RETURN_IF_ERROR(fetch_all(path));
            net.push_back(Ms(Clock::now() - t0));
            // Both wait for the copies: the leases may go after them.
            return path == FetchPath::kShm ? place_and_prefill() : prefill_fetched();
          });
          if (!fm.ok() && path == FetchPath::kShm) {  // report it, keep the other measurements
            BENCH_RETURN_IF_ERROR(model.Synchronize());
            std::printf("length %6d: fetched %s over shared memory FAILED: %s\n", r.total,
                        std::string(DtypeName(dtype)).c_str(), std::string(fm.status().message()).c_str());
            held.assign(blocks.size(), BlockBytes{});
            continue;
          }
          if (!fm.ok()) return fm.status();
          BENCH_RETURN_IF_ERROR(model.CopyLogits(absl::MakeSpan(logits)));
          double num = 0, den = 0;
          for (int v = 0; v < spec.vocab; ++v) {
            num += (double(logits[v]) - resident_logits[v]) * (double(logits[v]) - resident_logits[v]);
            den += double(resident_logits[v]) * resident_logits[v];
          }
          fr.logit_err = std::sqrt(num / den);
          fr.same_token = first_token == resident_token;
          if (fr.dtype == KvDtype::kBF16 && (!fr.same_token || fr.logit_err > 1e-6)) {
            return absl::InternalError("bench: fetched bf16 blocks gave other logits than the GPU-tier blocks");
          }
          fr.ms = *fm;
          fr.net_ms = Median(std::vector<double>(net.begin() + std::min<size_t>(net.size(), o.warmup), net.end()));
          if (path == FetchPath::kUcx) {  // views now point into the pinned buffer
            auto pm = MedianMs(o.warmup, std::max(o.runs, 10), place_and_prefill);
            if (!pm.ok()) return pm.status();
            pinned_ms = *pm;
          }
          held.assign(blocks.size(), BlockBytes{});
          fr.pinned_ms = pinned_ms;
          fr.gb = double(host_at.back()) / 1e9;
          fr.floor_ms = double(host_at.back()) / (base.h2d_gbps * 1e9) * 1e3;
          std::printf("length %6d: fetched %s block mode over %s %.2f ms (fetch+verify %.2f ms), from pinned memory %.2f ms; "
                      "%.2f GB / H2D = %.2f ms: %.2fx fetched, %.2fx pinned; logits rel err vs resident bf16 %.2e, "
                      "first token %s\n",
                      r.total, std::string(DtypeName(fr.dtype)).c_str(),
                      path == FetchPath::kUcx ? fetch.transport.c_str() : "shared memory", fr.ms, fr.net_ms,
                      fr.pinned_ms, fr.gb, fr.floor_ms, fr.ms / fr.floor_ms, fr.pinned_ms / fr.floor_ms, fr.logit_err,
                      fr.same_token ? "same" : "different");
          r.fetched.push_back(fr);
        }
      }
    }
    if (!o.skip_full) {
      std::vector<int32_t> all;
      for (const auto& b : prompt_blocks[li]) all.insert(all.end(), b.begin(), b.end());
      all.insert(all.end(), final_block.begin(), final_block.end());
      auto full_run = [&]() -> absl::Status {
        auto slots = model.AllocateSlots(all.size());
        if (!slots.ok()) return slots.status();
        cuda::ForwardSeq f;
        f.tokens = all;
        f.slots = *slots;
        f.logit_rows = 1;
        absl::Status st = model.Forward({&f, 1});
        if (st.ok()) st = model.Sample(greedy, {&first_token, 1});
        model.FreeSlots(*slots);
        return st;
      };
      auto fm = MedianMs(1, o.runs, full_run);
      if (!fm.ok()) return fm.status();
      r.full_ms = *fm;
      const double L = r.total;
      const double flops = 2.0 * layer_params * L + 2.0 * 2.0 * spec.layers * spec.heads * spec.head_dim * L * L / 2;
      r.full_floor_ms = flops / (base.gemm_tflops * 1e12) * 1e3;
    }
    std::printf("length %6d: %3d blocks, block mode %8.2f ms (prefill graph %.2f, floor %.2f), full mode %9.2f ms "
                "(floor %.1f), block/full %.4f\n",
                r.total, r.blocks, r.block_ms, r.block_graph_ms, r.block_floor_ms, r.full_ms, r.full_floor_ms,
                r.full_ms > 0 ? r.block_ms / r.full_ms : 0.0);
    std::fflush(stdout);
    results.push_back(r);
  }

  if (!o.skip_fetch) {
    std::printf("\n| total | payload | path | GB | H2D floor ms | fetched block mode ms | fetch+verify ms | pinned block mode ms | "
                "fetched / floor | pinned / floor | logits rel err vs bf16 GPU tier | first token |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& r : results) {
      for (const FetchResult& f : r.fetched) {
        std::printf("| %d | %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2e | %s |\n", r.total,
                    std::string(DtypeName(f.dtype)).c_str(), PathName(f.path), f.gb, f.floor_ms, f.ms, f.net_ms, f.pinned_ms,
                    f.ms / f.floor_ms, f.pinned_ms / f.floor_ms, f.logit_err, f.same_token ? "same" : "different");
      }
    }
  }

  // Decode: batch B, each sequence with decode_context tokens already prefilled.
  std::vector<DecodeResult> decodes;
  for (int B : o.decode_batches) {
    std::vector<cuda::SlotRange> slots;
    std::vector<int32_t> lens(B, o.decode_context), next(B);
    for (int b = 0; b < B; ++b) {
      auto s = model.AllocateSlots(o.decode_context + 2 * (std::max(o.warmup, 2) + o.runs * 4) + 8);
      if (!s.ok()) return s.status();
      slots.push_back(*s);
      const std::vector<int32_t> ctx = random_tokens(o.decode_context);
      cuda::ForwardSeq f;
      f.tokens = ctx;
      f.slots = *s;
      f.logit_rows = 1;
      BENCH_RETURN_IF_ERROR(model.Forward({&f, 1}));
      BENCH_RETURN_IF_ERROR(model.Sample(greedy, {&next[b], 1}));
    }
    std::vector<cuda::SamplingParams> sp(B);
    std::vector<cuda::ForwardSeq> seqs(B);
    auto step = [&]() -> absl::Status {
      for (int b = 0; b < B; ++b) {
        seqs[b].tokens = absl::MakeConstSpan(&next[b], 1);
        seqs[b].slots = slots[b];
        seqs[b].own_len = lens[b];
        seqs[b].position = lens[b];
        seqs[b].logit_rows = 1;
      }
      BENCH_RETURN_IF_ERROR(model.Forward(seqs));
      std::vector<int32_t> out(B);
      BENCH_RETURN_IF_ERROR(model.Sample(sp, absl::MakeSpan(out)));
      for (int b = 0; b < B; ++b) next[b] = out[b], ++lens[b];
      return absl::OkStatus();
    };
    // Each step launched kernel by kernel, then replayed as a CUDA graph (recorded during the
    // warm-up: a shape's second pass).
    for (bool graphs : {false, true}) {
      model.SetGraphs(graphs, false);
      auto ms = MedianMs(std::max(o.warmup, 2), o.runs * 4, step);
      if (!ms.ok()) return ms.status();
      DecodeResult d;
      d.batch = B;
      d.graphs = graphs;
      d.step_ms = *ms;
      d.tokens_per_s = B / (*ms * 1e-3);
      const double bytes = double(model.weight_bytes()) - double(spec.vocab) * spec.hidden * 2 +
                           double(B) * o.decode_context * model.kv_bytes_per_token();
      d.floor_tokens_per_s = B / (bytes / (base.hbm_gbps * 1e9));
      decodes.push_back(d);
    }
    for (auto s : slots) model.FreeSlots(s);
  }
  std::printf("decode steps replayed as CUDA graphs: %lld\n", static_cast<long long>(model.graph_replays()));

  // Report.
  std::printf("\n| total | blocks | block ms | block ms, prefill graph | block floor ms | full ms | full floor ms | "
              "block/full |\n|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : results) {
    std::printf("| %d | %d | %.2f | %.2f | %.2f | %.1f | %.1f | %.4f |\n", r.total, r.blocks, r.block_ms,
                r.block_graph_ms, r.block_floor_ms, r.full_ms, r.full_floor_ms,
                r.full_ms > 0 ? r.block_ms / r.full_ms : 0.0);
  }
  std::printf("\n| decode batch | context | CUDA graph | step ms | tokens/s | HBM-floor tokens/s | fraction |\n"
              "|---|---|---|---|---|---|---|\n");
  for (const auto& d : decodes) {
    std::printf("| %d | %d | %s | %.2f | %.0f | %.0f | %.2f |\n", d.batch, o.decode_context, d.graphs ? "yes" : "no",
                d.step_ms, d.tokens_per_s, d.floor_tokens_per_s, d.tokens_per_s / d.floor_tokens_per_s);
  }
  std::printf("\nblock encoding: %zu x %d-token passages per batch, %.1f ms/batch, %.0f tokens/s; GEMM ceiling %.0f tokens/s "
              "(2 x %.2fB layer params; %.0f with all %.2fB params): %.2f of ceiling\n",
              enc_batch.size(), o.passage, *enc_ms, enc_tps, enc_ceiling, layer_params / 1e9, enc_ceiling_all,
              spec.NumParameters() / 1e9, enc_tps / enc_ceiling);
  const TierStats ts = tier.Stats();
  std::printf("GPU tier: %llu blocks, %.2f GB, %llu hits, %llu misses\n", (unsigned long long)ts.blocks, ts.bytes / 1e9,
              (unsigned long long)ts.hits, (unsigned long long)ts.misses);

  // The worker's own path at this shape, last (the model's weights move into it): an Engine over
  // a CudaBackend whose GPU tier holds one block, so each request fetches its bf16 blocks again
  // from the cache server (the previous request's last block stays), `fetch_threads` at a time,
  // each made resident as it arrives; over UCX and over shared memory.
  std::vector<EngineResult> engine_results;
  auto measure_engine = [&]() -> absl::Status {
    CudaBackendOptions bo;
    bo.dtype = KvDtype::kBF16;
    bo.kv_pool_tokens = model.options().kv_pool_tokens;
    bo.max_batch_tokens = model.options().max_batch_tokens;
    bo.max_decode_batch = model.options().max_seqs;
    bo.max_logit_rows = model.options().max_logit_rows;
    bo.max_context_runs = model.options().max_context_runs;
    const uint64_t kv_bytes_per_token = model.kv_bytes_per_token();
    bo.gpu_tier_bytes = int64_t{o.passage} * int64_t(kv_bytes_per_token);
    // Over UCX the blocks land in pinned, reused host buffers, as in `kvblock worker`
    // (RuntimeOptions::pinned_buffer_bytes): a client of its own over a pool that holds the
    // longest request's blocks (a request keeps them until it ends).
    HostBufferPoolOptions po;
    for (const auto& blocks : prompt_blocks) {
      uint64_t rounded = 0;
      for (const auto& b : blocks) {
        const uint64_t bytes = b.size() * kv_bytes_per_token + kBlockHeaderBytes;
        rounded += (bytes + po.slab_rounding_bytes - 1) / po.slab_rounding_bytes * po.slab_rounding_bytes;
      }
      po.capacity_bytes = std::max(po.capacity_bytes, rounded);
    }
    auto pinned = cuda::CreatePinnedBufferPool(po);
    if (!pinned.ok()) return pinned.status();
    CacheClientOptions pinned_co = fetch.client->options();
    pinned_co.buffers = pinned->get();
    auto pinned_client = CacheClient::Create(pinned_co);
    if (!pinned_client.ok()) return pinned_client.status();
    auto backend = CreateCudaBackend(*std::move(model_or), config, bo);
    if (!backend.ok()) return backend.status();
    Backend* placing = backend->get();  // owned by the engines from here on
    EngineOptions eo;
    eo.kv_dtype = KvDtype::kBF16;
    eo.write_back = false;
    eo.fetch_threads = o.fetch_threads;
    auto over_ucx = Engine::Create(*std::move(backend), pinned_client->get(), fingerprint, eo);
    if (!over_ucx.ok()) return over_ucx.status();
    std::unique_ptr<Engine> over_shm;
    if (fetch.shm_client != nullptr) {
      auto e = (*over_ucx)->WithStore(fetch.shm_client.get(), eo);
      if (!e.ok()) return e.status();
      over_shm = *std::move(e);
    }
    // The shared-memory client's mapped regions go from the bench's HostRegions to the
    // backend's registrations, and back to nobody before the engines (and the backend) go.
    BackendRegions backend_regions(placing);
    fetch.relay.Attach(&backend_regions);
    absl::Cleanup detach = [&] { fetch.relay.Attach(nullptr); };
    for (size_t li = 0; li < o.lengths.size(); ++li) {
      GenerateRequest req;
      req.blocks = prompt_blocks[li];
      req.final_block = random_tokens(o.final_block);
      req.max_new_tokens = 1;
      uint64_t payload = 0;
      for (const auto& b : req.blocks) payload += b.size() * kv_bytes_per_token + kBlockHeaderBytes;
      std::optional<int32_t> first_token;  // every run of both paths must agree
      for (FetchPath path : {FetchPath::kUcx, FetchPath::kShm}) {
        Engine* engine = path == FetchPath::kUcx ? over_ucx->get() : over_shm.get();
        if (engine == nullptr) continue;
        EngineResult er;
        er.total = o.lengths[li];
        er.path = path;
        er.floor_ms = double(payload) / (base.h2d_gbps * 1e9) * 1e3;
        std::vector<double> ttft, fetch_ms;
        for (int run = 0; run < o.warmup + std::max(o.runs, 10); ++run) {
          absl::StatusOr<GenerateResult> g = engine->Generate(req);
          if (!g.ok()) return g.status();
          if (g->cache_misses != 0) return absl::InternalError("bench: the engine had to encode blocks the store holds");
          if (!first_token.has_value()) first_token = g->tokens.at(0);
          if (g->tokens.at(0) != *first_token) return absl::InternalError("bench: the engine's first token changed between runs");
          if (run < o.warmup) continue;
          ttft.push_back(g->timings.ttft_ms);
          fetch_ms.push_back(g->timings.fetch_ms);
          er.hits = g->cache_hits;
          er.fetched_bytes = g->fetched_bytes;
        }
        er.ttft_ms = Median(ttft);
        er.fetch_ms = Median(fetch_ms);
        std::printf("length %6d: engine, bf16 blocks over %s: TTFT %.2f ms (fetch %.2f ms; %lld blocks, %.2f GB fetched), "
                    "H2D floor %.2f ms: %.2fx\n",
                    er.total, path == FetchPath::kUcx ? fetch.transport.c_str() : "shared memory", er.ttft_ms, er.fetch_ms,
                    static_cast<long long>(er.hits), er.fetched_bytes / 1e9, er.floor_ms, er.ttft_ms / er.floor_ms);
        std::fflush(stdout);
        engine_results.push_back(er);
      }
    }
    const HostBufferPoolStats ps = (*pinned)->Stats();
    std::printf("engine path over %s: pinned buffers %llu takes (%llu reused), %.2f GB held; %llu reads fell back to "
                "pageable memory\n",
                fetch.transport.c_str(), (unsigned long long)ps.takes, (unsigned long long)ps.reuses, ps.bytes_held / 1e9,
                (unsigned long long)(*pinned_client)->buffer_fallbacks());
    return absl::OkStatus();
  };
  if (!o.skip_fetch) {
    // Reported, not fatal: the measurements above stand on their own.
    if (absl::Status st = measure_engine(); !st.ok()) {
      std::printf("engine path FAILED: %s\n", std::string(st.message()).c_str());
    }
    std::printf("\n| total | engine path | TTFT ms | fetch ms | blocks fetched | GB fetched | H2D floor ms (all blocks) | TTFT / floor |\n"
                "|---|---|---|---|---|---|---|---|\n");
    for (const EngineResult& e : engine_results) {
      std::printf("| %d | %s | %.2f | %.2f | %lld | %.2f | %.2f | %.2f |\n", e.total, PathName(e.path), e.ttft_ms,
                  e.fetch_ms, static_cast<long long>(e.hits), e.fetched_bytes / 1e9, e.floor_ms, e.ttft_ms / e.floor_ms);
    }
  }

  if (!o.json_path.empty()) {
    std::string j = absl::StrFormat(
        "{\n \"gpu\": \"%s\",\n \"model\": \"llama-3-8b shape, random bf16\",\n \"final_block\": %d,\n \"passage\": %d,\n"
        " \"runs\": %d,\n \"warmup\": %d,\n \"h2d_gbps\": %.2f,\n \"hbm_copy_gbps\": %.1f,\n \"gemm_tflops\": %.1f,\n"
        " \"encode_tokens_per_s\": %.0f,\n \"encode_ceiling_tokens_per_s\": %.0f,\n \"lengths\": [",
        prop.name, o.final_block, o.passage, o.runs, o.warmup, base.h2d_gbps, base.hbm_gbps, base.gemm_tflops, enc_tps,
        enc_ceiling);
    std::vector<std::string> items;
    for (const auto& r : results) {
      items.push_back(absl::StrFormat(
          "{\"total\": %d, \"blocks\": %d, \"block_ms\": %.3f, \"block_graph_ms\": %.3f, \"block_floor_ms\": %.3f, "
          "\"full_ms\": %.2f, \"full_floor_ms\": %.2f, \"ratio\": %.5f, \"fetched\": [%s]}",
          r.total, r.blocks, r.block_ms, r.block_graph_ms, r.block_floor_ms, r.full_ms, r.full_floor_ms, r.full_ms > 0 ? r.block_ms / r.full_ms : 0.0,
          absl::StrJoin(r.fetched, ", ", [](std::string* out, const FetchResult& f) {
            absl::StrAppend(out, absl::StrFormat(
                "{\"dtype\": \"%s\", \"path\": \"%s\", \"gb\": %.3f, \"ms\": %.3f, \"fetch_verify_ms\": %.3f, \"pinned_ms\": %.3f, "
                "\"h2d_floor_ms\": %.3f, \"logit_rel_err\": %.3e, \"same_first_token\": %s}",
                std::string(DtypeName(f.dtype)), PathName(f.path), f.gb, f.ms, f.net_ms, f.pinned_ms, f.floor_ms, f.logit_err,
                f.same_token ? "true" : "false"));
          })));
    }
    j += absl::StrJoin(items, ", ") + "],\n \"decode\": [";
    items.clear();
    for (const auto& d : decodes) {
      items.push_back(absl::StrFormat("{\"batch\": %d, \"context\": %d, \"cuda_graph\": %s, \"step_ms\": %.3f, \"tokens_per_s\": %.1f, \"floor_tokens_per_s\": %.1f}",
                                      d.batch, o.decode_context, d.graphs ? "true" : "false", d.step_ms, d.tokens_per_s,
                                      d.floor_tokens_per_s));
    }
    j += absl::StrJoin(items, ", ") + "],\n \"engine\": [";
    items.clear();
    for (const EngineResult& e : engine_results) {
      items.push_back(absl::StrFormat("{\"total\": %d, \"path\": \"%s\", \"ttft_ms\": %.3f, \"fetch_ms\": %.3f, "
                                      "\"blocks_fetched\": %d, \"gb_fetched\": %.3f, \"h2d_floor_ms\": %.3f}",
                                      e.total, PathName(e.path), e.ttft_ms, e.fetch_ms, static_cast<int>(e.hits),
                                      e.fetched_bytes / 1e9, e.floor_ms));
    }
    j += absl::StrJoin(items, ", ") + "]\n}\n";
    std::ofstream(o.json_path) << j;
  }
  return absl::OkStatus();
}

#endif  // KVBLOCK_WITH_CUDA

void AddBenchCommand(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  auto opts = std::make_shared<BenchTtftOptions>();
  CLI::App* ttft = bench->add_subcommand("ttft", "GPU time-to-first-token: block vs full mode, decode, encoding (Llama-3-8B shape)");
  ttft->add_option("--lengths", opts->lengths, "total prompt lengths (tokens)")->delimiter(',');
  ttft->add_option("--final-block", opts->final_block, "final block length (tokens)");
  ttft->add_option("--passage", opts->passage, "cached block length (tokens)");
  ttft->add_option("--runs", opts->runs, "timed runs per measurement (median)");
  ttft->add_option("--warmup", opts->warmup, "untimed runs first");
  ttft->add_option("--decode-context", opts->decode_context, "decode context per sequence (tokens)");
  ttft->add_option("--decode-batches", opts->decode_batches, "decode batch sizes")->delimiter(',');
  ttft->add_option("--encode-batch", opts->encode_batch, "passages per encoding batch");
  ttft->add_flag("--skip-full", opts->skip_full, "skip full-mode prefill");
  ttft->add_flag("--skip-fetch", opts->skip_fetch, "skip block mode with blocks fetched from a cache server");
  ttft->add_option("--fetch-threads", opts->fetch_threads, "parallel fetches in fetched block mode");
  ttft->add_option("--json", opts->json_path, "also write results as JSON");
  ttft->add_option("--seed", opts->seed, "seed of weights and tokens");
  ttft->callback([opts] {
    const absl::Status st = RunBenchTtft(*opts);
    if (!st.ok()) {
      std::cerr << "bench ttft: " << st << "\n";
      throw CLI::RuntimeError(1);
    }
  });
}

}  // namespace kvblock
