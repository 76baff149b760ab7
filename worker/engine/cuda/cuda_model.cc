// CudaModel; see cuda_model.h.
#include "worker/engine/cuda/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"

namespace kvblock::cuda {
namespace {

#define KV_RETURN_IF_ERROR(expr)          \
  do {                                    \
    absl::Status _st = (expr);            \
    if (!_st.ok()) return _st;            \
  } while (0)

constexpr size_t kAlign = 256;
constexpr size_t kMaxGraphs = 64;
size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Byte offsets of the per-Forward tables inside the staging buffers.
struct StagingLayout {
  size_t tokens, positions, gather, cache_offsets, seqs, segs, total;
  StagingLayout(int64_t t, int64_t r, int64_t s, int64_t segs_total) {
    size_t at = 0;
    tokens = at, at += AlignUp(t * 4);
    positions = at, at += AlignUp(t * 4);
    gather = at, at += AlignUp(r * 4);
    cache_offsets = at, at += AlignUp(t * 8);
    seqs = at, at += AlignUp(s * sizeof(AttnSequence));
    this->segs = at, at += AlignUp(segs_total * sizeof(AttnSegment));
    total = at;
  }
};

}  // namespace

absl::Status CudaModelSpec::Validate() const {
  if (vocab <= 0 || hidden <= 0 || intermediate <= 0 || layers <= 0 || heads <= 0 ||
      kv_heads <= 0 || head_dim <= 0 || !(rms_eps > 0.f)) {
    return absl::InvalidArgumentError("CudaModelSpec: sizes and rms_eps must be positive");
  }
  if (heads % kv_heads != 0) {
    return absl::InvalidArgumentError("CudaModelSpec: heads must be a multiple of kv_heads");
  }
  if (head_dim % 2 != 0 || static_cast<int>(inv_freq.size()) != head_dim / 2) {
    return absl::InvalidArgumentError("CudaModelSpec: inv_freq must hold head_dim / 2 values");
  }
  return absl::OkStatus();
}

int64_t CudaModelSpec::NumParameters() const {
  const int64_t per_layer = int64_t{heads + 2 * kv_heads} * head_dim * hidden +
                            int64_t{heads} * head_dim * hidden + 3 * int64_t{intermediate} * hidden +
                            2 * int64_t{hidden};
  return per_layer * layers + int64_t{vocab} * hidden * (tied_embeddings ? 1 : 2) + hidden;
}

absl::Status CudaModelOptions::Validate() const {
  if (max_batch_tokens <= 0 || kv_pool_tokens <= 0 || max_seqs <= 0 || max_context_runs < 0 ||
      max_logit_rows <= 0) {
    return absl::InvalidArgumentError("CudaModelOptions: sizes must be positive");
  }
  return absl::OkStatus();
}

CudaModel::CudaModel(const CudaModelSpec& spec, const CudaModelOptions& options)
    : spec_(spec), options_(options), es_(DTypeBytes(options.dtype)) {}

CudaModel::~CudaModel() {
  ClearGraphs();
  blas_.reset();
  if (staging_free_ != nullptr) cudaEventDestroy(staging_free_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::CreateRandom(const CudaModelSpec& spec,
                                                                   const CudaModelOptions& options,
                                                                   uint64_t seed) {
  KV_RETURN_IF_ERROR(spec.Validate());
  KV_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<CudaModel> m(new CudaModel(spec, options));
  KV_RETURN_IF_ERROR(m->Init(true, seed, nullptr));
  return m;
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::FromHost(const CudaModelSpec& spec,
                                                               const CudaModelOptions& options,
                                                               const HostModel& weights) {
  KV_RETURN_IF_ERROR(spec.Validate());
  KV_RETURN_IF_ERROR(options.Validate());
  if (static_cast<int>(weights.layers.size()) != spec.layers) {
    return absl::InvalidArgumentError("CudaModel::FromHost: layer count differs from the spec");
  }
  std::unique_ptr<CudaModel> m(new CudaModel(spec, options));
  KV_RETURN_IF_ERROR(m->Init(false, 0, &weights));
  return m;
}

absl::Status CudaModel::Init(bool random, uint64_t seed, const HostModel* host) {
  const CudaModelSpec& s = spec_;
  KV_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                "cudaStreamCreate"));
  KV_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&staging_free_, cudaEventDisableTiming),
                                "cudaEventCreate"));
  auto blas = Blas::Create(stream_);
  if (!blas.ok()) return blas.status();
  blas_ = std::move(*blas);
  int dev = 0;
  KV_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&dev), "cudaGetDevice"));
  KV_RETURN_IF_ERROR(CudaStatus(
      cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute"));

  // Weights: one allocation, sliced. Sizes in elements.
  const int64_t H = s.hidden, qkv_out = int64_t{s.heads + 2 * s.kv_heads} * s.head_dim,
                attn = int64_t{s.heads} * s.head_dim, I = s.intermediate;
  struct Piece {
    void** slot;
    int64_t elems;
    int64_t fan_in;  // 0: a norm weight (around 1); -1: a bias (small)
  };
  std::vector<Piece> pieces;
  pieces.push_back({&embed_, int64_t{s.vocab} * H, H});
  pieces.push_back({&final_norm_, H, 0});
  if (!s.tied_embeddings) pieces.push_back({&lm_head_, int64_t{s.vocab} * H, H});
  layers_.assign(s.layers, Layer{});
  for (Layer& l : layers_) {
    l = Layer{};
    pieces.push_back({&l.input_norm, H, 0});
    pieces.push_back({&l.post_norm, H, 0});
    pieces.push_back({&l.qkv, qkv_out * H, H});
    if (s.qkv_bias) pieces.push_back({&l.qkv_bias, qkv_out, -1});
    pieces.push_back({&l.o, H * attn, attn});
    if (s.o_bias) pieces.push_back({&l.o_bias, H, -1});
    pieces.push_back({&l.gate_up, 2 * I * H, H});
    if (s.mlp_bias) pieces.push_back({&l.gate_up_bias, 2 * I, -1});
    pieces.push_back({&l.down, H * I, I});
    if (s.mlp_bias) pieces.push_back({&l.down_bias, H, -1});
  }
  size_t total = 0;
  for (const Piece& p : pieces) total += AlignUp(p.elems * es_);
  auto w = DeviceMemory::Allocate(total);
  if (!w.ok()) return w.status();
  weights_ = std::move(*w);
  size_t at = 0;
  for (const Piece& p : pieces) {
    *p.slot = static_cast<char*>(weights_.get()) + at;
    at += AlignUp(p.elems * es_);
  }
  if (s.tied_embeddings) lm_head_ = embed_;

  if (random) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> norm_dist(0.9f, 1.1f);
    std::vector<float> ones(H);
    for (size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      if (p.fan_in == 0) {
        for (float& x : ones) x = norm_dist(rng);
        auto dev = DeviceMemory::Allocate(H * 4);
        if (!dev.ok()) return dev.status();
        KV_RETURN_IF_ERROR(CudaStatus(
            cudaMemcpyAsync(dev->get(), ones.data(), H * 4, cudaMemcpyHostToDevice, stream_), "H2D"));
        KV_RETURN_IF_ERROR(Cast(DType::kF32, options_.dtype, dev->get(), *p.slot, H, stream_));
        KV_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "sync"));
      } else {
        // Embedding rows of unit scale; projections with variance 1 / fan_in.
        const float scale = p.fan_in < 0 ? 0.02f
                                         : (*p.slot == embed_ ? 1.f : std::sqrt(3.f / p.fan_in));
        KV_RETURN_IF_ERROR(FillRandom(options_.dtype, *p.slot, p.elems, seed * 1000003 + i, scale, stream_));
      }
    }
  } else {
    // Upload f32 pieces (through one f32 staging buffer) and convert.
    std::vector<std::pair<void*, std::vector<std::pair<const float*, int64_t>>>> uploads;
    uploads.push_back({embed_, {{host->embed, int64_t{s.vocab} * H}}});
    uploads.push_back({final_norm_, {{host->final_norm, H}}});
    if (!s.tied_embeddings) uploads.push_back({lm_head_, {{host->lm_head, int64_t{s.vocab} * H}}});
    const int64_t q_out = attn, kv_out = int64_t{s.kv_heads} * s.head_dim;
    for (int li = 0; li < s.layers; ++li) {
      const HostLayer& h = host->layers[li];
      Layer& l = layers_[li];
      uploads.push_back({l.input_norm, {{h.input_norm, H}}});
      uploads.push_back({l.post_norm, {{h.post_norm, H}}});
      uploads.push_back({l.qkv, {{h.q.weight, q_out * H}, {h.k.weight, kv_out * H}, {h.v.weight, kv_out * H}}});
      if (s.qkv_bias) uploads.push_back({l.qkv_bias, {{h.q.bias, q_out}, {h.k.bias, kv_out}, {h.v.bias, kv_out}}});
      uploads.push_back({l.o, {{h.o.weight, H * attn}}});
      if (s.o_bias) uploads.push_back({l.o_bias, {{h.o.bias, H}}});
      uploads.push_back({l.gate_up, {{h.gate.weight, I * H}, {h.up.weight, I * H}}});
      if (s.mlp_bias) uploads.push_back({l.gate_up_bias, {{h.gate.bias, I}, {h.up.bias, I}}});
      uploads.push_back({l.down, {{h.down.weight, H * I}}});
      if (s.mlp_bias) uploads.push_back({l.down_bias, {{h.down.bias, H}}});
    }
    int64_t largest = 0;
    for (const auto& u : uploads) {
      int64_t n = 0;
      for (const auto& [ptr, elems] : u.second) {
        if (ptr == nullptr) return absl::InvalidArgumentError("CudaModel::FromHost: missing tensor");
        n += elems;
      }
      largest = std::max(largest, n);
    }
    auto tmp = DeviceMemory::Allocate(largest * 4);
    if (!tmp.ok()) return tmp.status();
    for (const auto& [dst, parts] : uploads) {
      int64_t n = 0;
      for (const auto& [ptr, elems] : parts) {
        KV_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(tmp->as<float>() + n, ptr, elems * 4,
                                                 cudaMemcpyHostToDevice),
                                      "H2D weights"));
        n += elems;
      }
      KV_RETURN_IF_ERROR(Cast(DType::kF32, options_.dtype, tmp->get(), dst, n, stream_));
      KV_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "sync"));
    }
  }

  auto inv = DeviceMemory::Allocate(s.inv_freq.size() * 4);
  if (!inv.ok()) return inv.status();
  inv_freq_ = std::move(*inv);
  KV_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(inv_freq_.get(), s.inv_freq.data(),
                                           s.inv_freq.size() * 4, cudaMemcpyHostToDevice),
                                "H2D inv_freq"));

  auto pool = DeviceMemory::Allocate(static_cast<size_t>(kv_bytes_per_token()) * options_.kv_pool_tokens);
  if (!pool.ok()) return pool.status();
  kv_pool_ = std::move(*pool);
  free_slots_ = {SlotRange{0, options_.kv_pool_tokens}};

  const int64_t T = options_.max_batch_tokens, S = options_.max_seqs, R = options_.max_logit_rows;
  struct Act {
    DeviceMemory* mem;
    size_t bytes;
  };
  for (const Act& a : {Act{&hidden_, size_t(T * H * es_)}, Act{&normed_, size_t(T * H * es_)},
                       Act{&qkv_, size_t(T * qkv_out * es_)}, Act{&attn_, size_t(T * attn * es_)},
                       Act{&delta_, size_t(T * H * es_)}, Act{&gate_up_, size_t(T * 2 * I * es_)},
                       Act{&act_, size_t(T * I * es_)}, Act{&gathered_, size_t(R * H * es_)},
                       Act{&logits_, size_t(R * s.vocab * 4)}}) {
    auto m = DeviceMemory::Allocate(a.bytes);
    if (!m.ok()) return m.status();
    *a.mem = std::move(*m);
  }
  const StagingLayout lay(T, R, S, int64_t{s.layers} * (options_.max_context_runs + S));
  auto sh = PinnedMemory::Allocate(lay.total);
  if (!sh.ok()) return sh.status();
  staging_host_ = std::move(*sh);
  auto sd = DeviceMemory::Allocate(lay.total);
  if (!sd.ok()) return sd.status();
  staging_dev_ = std::move(*sd);
  auto ph = PinnedMemory::Allocate(R * (sizeof(SamplingParams) + 4));
  if (!ph.ok()) return ph.status();
  sampling_host_ = std::move(*ph);
  auto pd = DeviceMemory::Allocate(R * (sizeof(SamplingParams) + 4));
  if (!pd.ok()) return pd.status();
  sampling_dev_ = std::move(*pd);
  KV_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(staging_free_, stream_), "cudaEventRecord"));
  return CudaStatus(cudaStreamSynchronize(stream_), "init sync");
}

int64_t CudaModel::kv_bytes_per_token() const {
  return int64_t{spec_.layers} * 2 * spec_.kv_heads * spec_.head_dim * es_;
}

void* CudaModel::PoolK(int32_t layer) const {
  const int64_t plane = int64_t{spec_.kv_heads} * options_.kv_pool_tokens * spec_.head_dim;
  return static_cast<char*>(kv_pool_.get()) + (int64_t{layer} * 2) * plane * es_;
}
void* CudaModel::PoolV(int32_t layer) const {
  const int64_t plane = int64_t{spec_.kv_heads} * options_.kv_pool_tokens * spec_.head_dim;
  return static_cast<char*>(kv_pool_.get()) + (int64_t{layer} * 2 + 1) * plane * es_;
}

absl::StatusOr<SlotRange> CudaModel::AllocateSlots(int64_t count) {
  if (count <= 0) return absl::InvalidArgumentError("AllocateSlots: count must be positive");
  for (size_t i = 0; i < free_slots_.size(); ++i) {
    if (free_slots_[i].count >= count) {
      SlotRange r{free_slots_[i].begin, count};
      free_slots_[i].begin += count;
      free_slots_[i].count -= count;
      if (free_slots_[i].count == 0) free_slots_.erase(free_slots_.begin() + i);
      return r;
    }
  }
  return absl::ResourceExhaustedError(absl::StrCat("KV pool: no free range of ", count, " slots"));
}

void CudaModel::FreeSlots(SlotRange range) {
  if (range.count <= 0) return;
  auto it = std::lower_bound(free_slots_.begin(), free_slots_.end(), range,
                             [](const SlotRange& a, const SlotRange& b) { return a.begin < b.begin; });
  it = free_slots_.insert(it, range);
  // Coalesce with neighbours.
  if (it + 1 != free_slots_.end() && it->begin + it->count == (it + 1)->begin) {
    it->count += (it + 1)->count;
    free_slots_.erase(it + 1);
  }
  if (it != free_slots_.begin() && (it - 1)->begin + (it - 1)->count == it->begin) {
    (it - 1)->count += it->count;
    free_slots_.erase(it);
  }
}

absl::Status CudaModel::Linear(const void* x, const void* w, const void* bias, int32_t m,
                               int32_t n, int32_t k, void* y) {
  if (bias != nullptr) {
    KV_RETURN_IF_ERROR(BroadcastRows(options_.dtype, bias, m, n, y, n, stream_));
  }
  return blas_->Linear(options_.dtype, x, 0, w, m, n, k, options_.dtype, y, 0,
                       bias != nullptr ? 1.f : 0.f);
}

absl::Status CudaModel::Forward(absl::Span<const ForwardSeq> seqs, absl::Span<const cudaEvent_t> layer_ready) {
  const CudaModelSpec& s = spec_;
  const DType dt = options_.dtype;
  if (seqs.empty()) return absl::InvalidArgumentError("Forward: no sequences");
  if (!layer_ready.empty() && static_cast<int64_t>(layer_ready.size()) != s.layers) {
    return absl::InvalidArgumentError("Forward: layer_ready needs one event per layer");
  }
  if (static_cast<int64_t>(seqs.size()) > options_.max_seqs) {
    return absl::InvalidArgumentError("Forward: more sequences than max_seqs");
  }
  int64_t T = 0, runs = 0, rows = 0, max_q = 0, max_keys = 0;
  for (const ForwardSeq& q : seqs) {
    if (q.tokens.empty()) return absl::InvalidArgumentError("Forward: a sequence has no new tokens");
    if (q.own_len < 0 || q.own_len + static_cast<int64_t>(q.tokens.size()) > q.slots.count ||
        q.slots.begin < 0 || q.slots.begin + q.slots.count > options_.kv_pool_tokens) {
      return absl::InvalidArgumentError("Forward: new tokens do not fit the sequence's slots");
    }
    for (int32_t id : q.tokens) {
      if (id < 0 || id >= s.vocab) {
        return absl::InvalidArgumentError(absl::StrCat("Forward: token id ", id, " outside the vocabulary"));
      }
    }
    int64_t keys = q.own_len + static_cast<int64_t>(q.tokens.size());
    for (const KvRun& r : q.context) {
      if (r.data == nullptr || r.num_tokens < 0) return absl::InvalidArgumentError("Forward: bad context run");
      keys += r.num_tokens;
    }
    T += q.tokens.size();
    runs += q.context.size();
    if (q.logit_rows < 0 || q.logit_rows > static_cast<int64_t>(q.tokens.size())) {
      return absl::InvalidArgumentError("Forward: logit_rows outside [0, new tokens]");
    }
    rows += q.logit_rows;
    max_q = std::max<int64_t>(max_q, q.tokens.size());
    max_keys = std::max(max_keys, keys);
  }
  if (T > options_.max_batch_tokens) return absl::InvalidArgumentError("Forward: more tokens than max_batch_tokens");
  if (runs > options_.max_context_runs) return absl::InvalidArgumentError("Forward: too many context runs");
  if (rows > options_.max_logit_rows) return absl::InvalidArgumentError("Forward: more logit rows than max_logit_rows");
  if (max_keys > std::numeric_limits<int32_t>::max()) return absl::InvalidArgumentError("Forward: context too long");
  const int64_t S = seqs.size();
  const int64_t segs_per_layer = runs + S;
  const StagingLayout lay(T, rows, S, segs_per_layer * s.layers);

  // The previous Forward's table copy must be done before the pinned staging is rewritten.
  KV_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(staging_free_), "cudaEventSynchronize"));
  char* host = staging_host_.as<char>();
  char* dev = staging_dev_.as<char>();
  auto* tokens = reinterpret_cast<int32_t*>(host + lay.tokens);
  auto* positions = reinterpret_cast<int32_t*>(host + lay.positions);
  auto* gather = reinterpret_cast<int32_t*>(host + lay.gather);
  auto* offsets = reinterpret_cast<int64_t*>(host + lay.cache_offsets);
  auto* aseqs = reinterpret_cast<AttnSequence*>(host + lay.seqs);
  auto* segs = reinterpret_cast<AttnSegment*>(host + lay.segs);
  const int64_t D = s.head_dim, KVH = s.kv_heads, qkv_stride = int64_t{s.heads + 2 * s.kv_heads} * D;
  const int64_t P = options_.kv_pool_tokens;
  int64_t t = 0, r = 0, seg = 0;
  for (int64_t i = 0; i < S; ++i) {
    const ForwardSeq& q = seqs[i];
    const int64_t n = q.tokens.size();
    AttnSequence& as = aseqs[i];
    as = AttnSequence{};
    as.q = static_cast<char*>(qkv_.get()) + t * qkv_stride * es_;
    as.o = static_cast<char*>(attn_.get()) + t * int64_t{s.heads} * D * es_;
    as.q_len = static_cast<int32_t>(n);
    as.seg_begin = static_cast<int32_t>(seg);
    int64_t ctx = 0;
    for (const KvRun& run : q.context) ctx += run.num_tokens;
    as.num_keys = static_cast<int32_t>(ctx + q.own_len + n);
    as.causal_start = static_cast<int32_t>(ctx + q.own_len);
    for (int64_t j = 0; j < n; ++j, ++t) {
      tokens[t] = q.tokens[j];
      positions[t] = q.position + static_cast<int32_t>(j);
      offsets[t] = (q.slots.begin + q.own_len + j) * D;
    }
    for (int64_t j = q.logit_rows; j > 0; --j) gather[r++] = static_cast<int32_t>(t - j);
    // Segment rows for layer 0; other layers are the same with shifted pointers.
    for (const KvRun& run : q.context) {
      AttnSegment& g = segs[seg++];
      g.k = run.data;
      g.v = static_cast<const char*>(run.data) + KVH * run.num_tokens * D * es_;
      g.head_stride = int64_t{run.num_tokens} * D;
      g.num_tokens = run.num_tokens;
      g.rope_offset = run.rope_offset;
    }
    AttnSegment& own = segs[seg++];
    own.k = static_cast<char*>(PoolK(0)) + q.slots.begin * D * es_;
    own.v = static_cast<char*>(PoolV(0)) + q.slots.begin * D * es_;
    own.head_stride = P * D;
    own.num_tokens = static_cast<int32_t>(q.own_len + n);
    own.rope_offset = 0;
    as.seg_end = static_cast<int32_t>(seg);
  }
  // Replicate the segment table per layer.
  const int64_t pool_layer_bytes = 2 * KVH * P * D * es_;
  for (int32_t l = 1; l < s.layers; ++l) {
    AttnSegment* dst = segs + l * segs_per_layer;
    int64_t k = 0;
    for (int64_t i = 0; i < S; ++i) {
      for (const KvRun& run : seqs[i].context) {
        dst[k] = segs[k];
        const int64_t run_layer_bytes = 2 * KVH * int64_t{run.num_tokens} * D * es_;
        dst[k].k = static_cast<const char*>(segs[k].k) + l * run_layer_bytes;
        dst[k].v = static_cast<const char*>(segs[k].v) + l * run_layer_bytes;
        ++k;
      }
      dst[k] = segs[k];
      dst[k].k = static_cast<const char*>(segs[k].k) + l * pool_layer_bytes;
      dst[k].v = static_cast<const char*>(segs[k].v) + l * pool_layer_bytes;
      ++k;
    }
  }
  KV_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(dev, host, lay.total, cudaMemcpyHostToDevice, stream_), "H2D tables"));
  KV_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(staging_free_, stream_), "cudaEventRecord"));

  AttentionParams ap;
  ap.dtype = dt;
  ap.num_heads = s.heads;
  ap.num_kv_heads = s.kv_heads;
  ap.head_dim = s.head_dim;
  ap.scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
  ap.q_stride = qkv_stride;
  ap.o_stride = int64_t{s.heads} * D;
  ap.seqs = reinterpret_cast<const AttnSequence*>(dev + lay.seqs);
  ap.num_seqs = static_cast<int32_t>(S);
  ap.inv_freq = inv_freq_.as<float>();
  ap.max_q_len = static_cast<int32_t>(max_q);
  ap.max_keys = static_cast<int32_t>(max_keys);
  auto plan = PlanAttention(ap, num_sms_);
  if (!plan.ok()) return plan.status();
  if (plan->workspace_bytes > attn_ws_.bytes()) {
    KV_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "sync"));
    auto ws = DeviceMemory::Allocate(plan->workspace_bytes);
    if (!ws.ok()) return ws.status();
    attn_ws_ = std::move(*ws);
    ClearGraphs();  // they hold the old workspace's address
  }

  logit_rows_ = static_cast<int32_t>(rows);
  // Everything after the tables: reads them from the device only, so it can be recorded once as
  // a CUDA graph per shape and replayed (the attention kernel reads key counts and K/V pointers
  // from the tables; its split count is part of the shape).
  auto run = [&]() -> absl::Status {
    const int32_t Ti = static_cast<int32_t>(T), H = s.hidden;
    KV_RETURN_IF_ERROR(Embedding(dt, reinterpret_cast<const int32_t*>(dev + lay.tokens), Ti, embed_,
                                 s.vocab, H, hidden_.get(), stream_));
    RopeStoreParams rp;
    rp.dtype = dt;
    rp.qkv = qkv_.get();
    rp.qkv_stride = qkv_stride;
    rp.num_tokens = Ti;
    rp.num_heads = s.heads;
    rp.num_kv_heads = s.kv_heads;
    rp.head_dim = s.head_dim;
    rp.positions = reinterpret_cast<const int32_t*>(dev + lay.positions);
    rp.cache_offsets = reinterpret_cast<const int64_t*>(dev + lay.cache_offsets);
    rp.cache_head_stride = P * D;
    rp.inv_freq = inv_freq_.as<float>();
    const int32_t attn_dim = s.heads * s.head_dim, I = s.intermediate;
    for (int32_t l = 0; l < s.layers; ++l) {
      const Layer& w = layers_[l];
      KV_RETURN_IF_ERROR(AddRmsNorm(dt, hidden_.get(), l == 0 ? nullptr : delta_.get(), w.input_norm,
                                    Ti, H, s.rms_eps, normed_.get(), stream_));
      KV_RETURN_IF_ERROR(Linear(normed_.get(), w.qkv, w.qkv_bias, Ti, static_cast<int32_t>(qkv_stride), H, qkv_.get()));
      rp.k_cache = PoolK(l);
      rp.v_cache = PoolV(l);
      KV_RETURN_IF_ERROR(RopeStore(rp, stream_));
      ap.segs = reinterpret_cast<const AttnSegment*>(dev + lay.segs) + l * segs_per_layer;
      if (!layer_ready.empty()) {
        KV_RETURN_IF_ERROR(CudaStatus(cudaStreamWaitEvent(stream_, layer_ready[l], 0), "cudaStreamWaitEvent"));
      }
      KV_RETURN_IF_ERROR(Attention(ap, *plan, attn_ws_.get(), stream_));
      KV_RETURN_IF_ERROR(Linear(attn_.get(), w.o, w.o_bias, Ti, H, attn_dim, delta_.get()));
      KV_RETURN_IF_ERROR(AddRmsNorm(dt, hidden_.get(), delta_.get(), w.post_norm, Ti, H, s.rms_eps,
                                    normed_.get(), stream_));
      KV_RETURN_IF_ERROR(Linear(normed_.get(), w.gate_up, w.gate_up_bias, Ti, 2 * I, H, gate_up_.get()));
      KV_RETURN_IF_ERROR(SwiGlu(dt, gate_up_.get(), 2 * int64_t{I}, Ti, I, act_.get(), stream_));
      KV_RETURN_IF_ERROR(Linear(act_.get(), w.down, w.down_bias, Ti, H, I, delta_.get()));
    }
    if (rows == 0) return absl::OkStatus();
    // Only the rows that need logits: gather them (the embedding kernel gathers rows of any
    // table), then the final norm and the LM head on those rows alone.
    KV_RETURN_IF_ERROR(AddRmsNorm(dt, hidden_.get(), delta_.get(), final_norm_, Ti, H, s.rms_eps,
                                  normed_.get(), stream_));
    KV_RETURN_IF_ERROR(Embedding(dt, reinterpret_cast<const int32_t*>(dev + lay.gather), logit_rows_,
                                 normed_.get(), Ti, H, gathered_.get(), stream_));
    return blas_->Linear(dt, gathered_.get(), 0, lm_head_, logit_rows_, s.vocab, H, DType::kF32,
                         logits_.get(), 0);
  };
  const bool graphed = layer_ready.empty() && (T == S ? options_.decode_graphs : options_.prefill_graphs);
  if (!graphed) return run();
  const GraphKey key{S, T, max_q, runs, rows, plan->splits};
  auto it = std::find_if(graphs_.begin(), graphs_.end(), [&](const Graph& g) { return g.key == key; });
  if (it == graphs_.end()) {
    // The first pass of a shape runs eagerly (cuBLAS settles its workspace and algorithms);
    // the second is captured. Shapes are few in practice; a runaway set starts over.
    if (graphs_.size() >= kMaxGraphs) ClearGraphs();
    graphs_.push_back(Graph{key, nullptr});
    return run();
  }
  if (it->exec == nullptr) {
    KV_RETURN_IF_ERROR(CudaStatus(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
                                  "cudaStreamBeginCapture"));
    const absl::Status st = run();
    cudaGraph_t graph = nullptr;
    const absl::Status end = CudaStatus(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
    if (!st.ok() || !end.ok()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return st.ok() ? end : st;
    }
    const absl::Status inst = CudaStatus(cudaGraphInstantiate(&it->exec, graph, 0), "cudaGraphInstantiate");
    cudaGraphDestroy(graph);
    KV_RETURN_IF_ERROR(inst);
  }
  ++graph_replays_;
  return CudaStatus(cudaGraphLaunch(it->exec, stream_), "cudaGraphLaunch");
}

void CudaModel::ClearGraphs() {
  for (Graph& g : graphs_) {
    if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
  }
  graphs_.clear();
}

void CudaModel::SetGraphs(bool decode, bool prefill) {
  options_.decode_graphs = decode;
  options_.prefill_graphs = prefill;
  ClearGraphs();
}

absl::Status CudaModel::Sample(absl::Span<const SamplingParams> params, absl::Span<int32_t> tokens) {
  if (static_cast<int32_t>(params.size()) != logit_rows_ || tokens.size() != params.size()) {
    return absl::InvalidArgumentError("Sample: one params entry and one token per logits row");
  }
  if (params.empty()) return absl::OkStatus();
  const size_t pbytes = params.size() * sizeof(SamplingParams);
  KV_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "sync"));  // staging reuse
  std::memcpy(sampling_host_.get(), params.data(), pbytes);
  KV_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(sampling_dev_.get(), sampling_host_.get(), pbytes,
                                                cudaMemcpyHostToDevice, stream_),
                                "H2D sampling"));
  auto* out_dev = reinterpret_cast<int32_t*>(sampling_dev_.as<char>() +
                                             options_.max_logit_rows * sizeof(SamplingParams));
  KV_RETURN_IF_ERROR(kvblock::cuda::Sample(logits_.as<float>(), logit_rows_, spec_.vocab, spec_.vocab,
                                           reinterpret_cast<const SamplingParams*>(sampling_dev_.get()),
                                           out_dev, stream_));
  auto* out_host = reinterpret_cast<int32_t*>(sampling_host_.as<char>() + options_.max_logit_rows * sizeof(SamplingParams));
  KV_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(out_host, out_dev, params.size() * 4,
                                                cudaMemcpyDeviceToHost, stream_),
                                "D2H tokens"));
  KV_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "sync"));
  for (size_t i = 0; i < params.size(); ++i) {
    if (out_host[i] < 0) return absl::InternalError("Sample: logits contain NaN");
    tokens[i] = out_host[i];
  }
  return absl::OkStatus();
}

absl::Status CudaModel::CopyLogits(absl::Span<float> out) {
  const size_t n = size_t(logit_rows_) * spec_.vocab;
  if (out.size() < n) return absl::InvalidArgumentError("CopyLogits: output too small");
  KV_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(out.data(), logits_.get(), n * 4, cudaMemcpyDeviceToHost, stream_), "D2H logits"));
  return CudaStatus(cudaStreamSynchronize(stream_), "sync");
}

absl::Status CudaModel::ExportKv(SlotRange slots, int64_t begin, int64_t n, void* dst) {
  if (begin < 0 || n <= 0 || begin + n > slots.count) return absl::InvalidArgumentError("ExportKv: range outside the slots");
  const int64_t D = spec_.head_dim, KVH = spec_.kv_heads, P = options_.kv_pool_tokens;
  for (int32_t l = 0; l < spec_.layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      char* d = static_cast<char*>(dst) + ((int64_t{l} * 2 + kv) * KVH * n * D) * es_;
      const char* src = static_cast<const char*>(kv == 0 ? PoolK(l) : PoolV(l)) + (slots.begin + begin) * D * es_;
      KV_RETURN_IF_ERROR(CudaStatus(cudaMemcpy2DAsync(d, n * D * es_, src, P * D * es_, n * D * es_, KVH,
                                                      cudaMemcpyDeviceToDevice, stream_),
                                    "ExportKv copy"));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaModel::ImportKv(const void* src, int64_t n, SlotRange slots, int64_t at,
                                 int32_t rope_offset) {
  if (at < 0 || n <= 0 || at + n > slots.count) return absl::InvalidArgumentError("ImportKv: range outside the slots");
  const int64_t D = spec_.head_dim, KVH = spec_.kv_heads, P = options_.kv_pool_tokens;
  for (int32_t l = 0; l < spec_.layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const char* s = static_cast<const char*>(src) + ((int64_t{l} * 2 + kv) * KVH * n * D) * es_;
      char* d = static_cast<char*>(kv == 0 ? PoolK(l) : PoolV(l)) + (slots.begin + at) * D * es_;
      KV_RETURN_IF_ERROR(CudaStatus(cudaMemcpy2DAsync(d, P * D * es_, s, n * D * es_, n * D * es_, KVH,
                                                      cudaMemcpyDeviceToDevice, stream_),
                                    "ImportKv copy"));
      if (kv == 0 && rope_offset != 0) {
        KV_RETURN_IF_ERROR(ReencodeK(options_.dtype, d, d, spec_.kv_heads, static_cast<int32_t>(n),
                                     spec_.head_dim, P * D, rope_offset, inv_freq_.as<float>(), stream_));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Synchronize() { return CudaStatus(cudaStreamSynchronize(stream_), "sync"); }

}  // namespace kvblock::cuda
