// CudaBackend; see cuda_backend.h.
#include "worker/engine/cuda/cuda_backend.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cpu/rope.h"
#include "worker/engine/cuda/gpu_tier.h"
#include "worker/engine/cuda/host_regions.h"
#include "worker/engine/cuda/layer_pipeline.h"

namespace kvblock {
namespace {

using cuda::CudaModel;
using cuda::CudaStatus;
using cuda::DeviceMemory;
using cuda::DType;

#define CB_RETURN_IF_ERROR(expr) \
  do {                           \
    absl::Status _st = (expr);   \
    if (!_st.ok()) return _st;   \
  } while (0)

std::optional<DType> AsCudaDtype(KvDtype d) {
  if (d == KvDtype::kF32) return DType::kF32;
  if (d == KvDtype::kBF16) return DType::kBF16;
  return std::nullopt;
}

// The device memory of the GPU tier's blocks: a stream-ordered pool that keeps what evicted
// blocks give back (it never releases memory to the device), so placing a block costs no
// cudaMalloc and evicting one no device-wide synchronization (cudaFree's).
struct BlockMemoryPool {
  BlockMemoryPool() = default;
  BlockMemoryPool(const BlockMemoryPool&) = delete;
  BlockMemoryPool& operator=(const BlockMemoryPool&) = delete;
  ~BlockMemoryPool() {
    if (pool != nullptr) cudaMemPoolDestroy(pool);  // deferred until its last block is freed
  }
  absl::Status Create() {
    int device = 0;
    CB_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    CB_RETURN_IF_ERROR(CudaStatus(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate"));
    uint64_t keep_all = UINT64_MAX;
    return CudaStatus(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all),
                      "cudaMemPoolSetAttribute");
  }
  cudaMemPool_t pool = nullptr;
};

// The model, its block tier and the lock every call takes. Shared with the sequences so that a
// sequence can give its slots back even after the backend object is gone. Members are destroyed
// in reverse order: the tier's blocks go back to the pool (on the model's stream) first.
struct State {
  State(std::unique_ptr<CudaModel> m, const cuda::GpuTierOptions& tier_options,
        const CudaBackendOptions& o)
      : model_stream(m->stream()), model(std::move(m)), tier(tier_options), options(o) {}
  // A tier block's memory: from the pool in `stream`'s order, given back in the model stream's
  // order once the last handle goes (every read of it, on the model stream, is enqueued by then).
  absl::StatusOr<DeviceMemory> BlockMemory(uint64_t bytes, cudaStream_t stream) const {
    return DeviceMemory::AllocateFromPool(bytes, block_pool.pool, stream, model_stream);
  }
  BlockMemoryPool block_pool;
  const cudaStream_t model_stream;
  absl::Mutex mu;
  std::unique_ptr<CudaModel> model ABSL_GUARDED_BY(mu);
  cuda::GpuTier tier;
  const CudaBackendOptions options;
  // Host memory that fetched payloads may lie in (a co-located cache node's arena), registered
  // as copies read it.
  cuda::HostRegions host_regions;
  // MakeResident's copies, on the pipeline's own stream beside the model's (fp8 dequantized
  // there); its own lock, so placing blocks never waits for a model pass.
  absl::Mutex upload_mu;
  std::unique_ptr<cuda::LayerPipeline> upload ABSL_GUARDED_BY(upload_mu);
  // The copies of blocks appended since a sequence's last pass, layer by layer under that pass.
  std::unique_ptr<cuda::LayerPipeline> place ABSL_GUARDED_BY(mu);
};

class CudaKvSequence final : public KvSequence {
 public:
  CudaKvSequence(std::shared_ptr<State> state, int64_t capacity)
      : state_(std::move(state)), capacity_(capacity) {}
  ~CudaKvSequence() override {
    if (!slots_.has_value()) return;
    absl::MutexLock lock(&state_->mu);
    state_->model->FreeSlots(*slots_);
  }

  int64_t length() const override { return context_tokens_ + own_len_; }
  int64_t capacity() const override { return capacity_; }

  std::shared_ptr<State> state_;
  int64_t capacity_;
  std::vector<cuda::GpuTier::Handle> blocks_;  // keeps the context runs' memory alive
  // Blocks appended since the last pass whose K/V are still to be copied into their context
  // run (from the payload the caller keeps until that pass); the GPU tier takes them after it.
  struct PendingBlock {
    cuda::LayerCopy copy;
    cuda::GpuTier::Handle block;
  };
  std::vector<PendingBlock> pending_;
  std::vector<cuda::KvRun> context_;
  int64_t context_tokens_ = 0;
  std::optional<cuda::SlotRange> slots_;  // allocated at the first own token
  int64_t own_len_ = 0;
};

class CudaBackendImpl final : public CudaBackend {
 public:
  CudaBackendImpl(std::shared_ptr<State> state, const ModelConfig& config)
      : state_(std::move(state)), config_(config) {}

  std::string_view name() const override { return "cuda"; }
  const ModelConfig& config() const override { return config_; }

  absl::StatusOr<std::unique_ptr<KvSequence>> NewSequence(int64_t capacity) override {
    if (capacity <= 0) return absl::InvalidArgumentError("sequence capacity must be > 0");
    return std::unique_ptr<KvSequence>(new CudaKvSequence(state_, capacity));
  }

  absl::Status Forward(KvSequence& seq_base, absl::Span<const int32_t> tokens, int64_t logit_rows,
                       absl::Span<float> logits) override;
  absl::Status ForwardBatch(absl::Span<KvSequence* const> seqs,
                            absl::Span<const absl::Span<const int32_t>> tokens) override;
  absl::Status DecodeStep(absl::Span<KvSequence* const> seqs, absl::Span<const int32_t> tokens,
                          absl::Span<float> logits) override;
  absl::Status AppendBlock(KvSequence& seq_base, const BlockView& block) override;
  ResidentBlock FindResident(const BlockKey& key, int64_t num_tokens) override;
  ResidentBlock MakeResident(const BlockView& block) override;
  absl::Status AppendResident(KvSequence& seq_base, const ResidentBlock& block) override;
  absl::Status ReadKv(const KvSequence& seq_base, int64_t begin, int64_t n, absl::Span<float> k,
                      absl::Span<float> v) const override;

  TierStats GpuTierStats() const override { return state_->tier.Stats(); }
  void AddHostRegion(absl::Span<const uint8_t> region) override { state_->host_regions.Add(region); }
  void RemoveHostRegion(absl::Span<const uint8_t> region) override { state_->host_regions.Remove(region); }

 private:
  // Own slots for everything the context runs leave of the capacity.
  absl::Status EnsureSlots(CudaKvSequence& seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // AppendBlock's argument checks (geometry, capacity).
  absl::Status CheckAppend(const CudaKvSequence& seq, const BlockMeta& m) const;
  // Whether the next block can be a context run (read in place from the GPU tier): the sequence
  // has no own tokens yet and a run left; else blocks are copied into its own slots.
  bool TakesContextRun(const CudaKvSequence& seq) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  void AddContextRun(CudaKvSequence& seq, cuda::GpuTier::Handle h)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // Copies n tokens of layer-major device K/V (block positions, re-encoded on the way) into the
  // sequence's own slots; waits for the copy.
  absl::Status CopyIntoSlots(CudaKvSequence& seq, const void* kv, int64_t n)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // Forward of checked arguments: consecutive model passes of at most max_batch_tokens tokens
  // and max_logit_rows logits rows. Enqueued; waits only to copy logits.
  absl::Status ForwardChunks(CudaKvSequence& seq, absl::Span<const int32_t> tokens,
                             int64_t logit_rows, absl::Span<float> logits)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // The new tokens of distinct sequences (checked; each at most max_batch_tokens), each asking
  // for its last `logit_rows` logits, in as few model passes as the limits allow (tokens,
  // sequences, context runs, logits rows), in order; the logits go to `logits` sequence after
  // sequence. Waits only to copy logits.
  absl::Status RunPasses(absl::Span<KvSequence* const> seqs,
                         absl::Span<const absl::Span<const int32_t>> tokens, int32_t logit_rows,
                         absl::Span<float> logits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // The meta of `m`'s block as the GPU tier and the copy pipelines place it (the model's dtype),
  // or nullopt if they cannot: another geometry, a dtype other than the model's or fp8, or more
  // than the tier's budget.
  std::optional<BlockMeta> PlacedMeta(const BlockMeta& m) const;
  // Enqueues the pending copies of `seqs` on the placement pipeline, layer-major, after the
  // model stream's work; returns the events a pass's layers wait for (none if nothing is
  // pending).
  absl::StatusOr<absl::Span<const cudaEvent_t>> EnqueuePending(absl::Span<const CudaKvSequence* const> seqs) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // After a pass that waited for them: the pending blocks of `seq` go to the GPU tier.
  void PublishPending(CudaKvSequence& seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // model.Forward(seqs, ready); if it fails, the model stream still waits for the copies (the
  // blocks' memory goes back to the pool in its order).
  absl::Status ForwardWaiting(CudaModel& model, absl::Span<const cuda::ForwardSeq> seqs,
                              absl::Span<const cudaEvent_t> ready) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // The block's K/V in the model's dtype on the device (payload layout without fp8 scales).
  absl::StatusOr<DeviceMemory> Upload(const BlockView& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);
  // Positions [at, at + n) of one piece of the sequence as f32, payload layout ([layers][K|V]
  // [kv_heads][n][head_dim]) on the host; K as the sequence sees it (re-encoded).
  absl::Status ReadPiece(const CudaKvSequence& seq, int run, int64_t at, int64_t n,
                         std::vector<float>& out) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu);

  std::shared_ptr<State> state_;
  ModelConfig config_;
};

absl::Status CudaBackendImpl::EnsureSlots(CudaKvSequence& seq) {
  if (seq.slots_.has_value()) return absl::OkStatus();
  absl::StatusOr<cuda::SlotRange> r = state_->model->AllocateSlots(seq.capacity_ - seq.context_tokens_);
  if (!r.ok()) return r.status();
  seq.slots_ = *r;
  return absl::OkStatus();
}

absl::Status CudaBackendImpl::Forward(KvSequence& seq_base, absl::Span<const int32_t> tokens,
                                      int64_t logit_rows, absl::Span<float> logits) {
  auto& seq = static_cast<CudaKvSequence&>(seq_base);
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = config_.vocab_size;
  if (n == 0) return absl::InvalidArgumentError("Forward: no tokens");
  if (logit_rows < 0 || logit_rows > n) return absl::InvalidArgumentError("Forward: logit_rows outside [0, tokens]");
  if (static_cast<int64_t>(logits.size()) < logit_rows * vocab) {
    return absl::InvalidArgumentError("Forward: logits span too small");
  }
  // Checked before any chunk runs, so a bad call leaves the sequence as it was.
  for (int32_t id : tokens) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary of ", vocab));
    }
  }
  if (seq.length() + n > seq.capacity()) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: ", n, " tokens exceed the sequence's capacity left (",
                                                   seq.capacity() - seq.length(), ")"));
  }
  absl::MutexLock lock(&state_->mu);
  CB_RETURN_IF_ERROR(ForwardChunks(seq, tokens, logit_rows, logits));
  // Without logits nothing waited yet: surface asynchronous faults to this caller.
  return logit_rows == 0 ? state_->model->Synchronize() : absl::OkStatus();
}

absl::Status CudaBackendImpl::ForwardChunks(CudaKvSequence& seq, absl::Span<const int32_t> tokens,
                                            int64_t logit_rows, absl::Span<float> logits) {
  CudaModel& model = *state_->model;
  CB_RETURN_IF_ERROR(EnsureSlots(seq));
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = config_.vocab_size;
  const int64_t first_logit = n - logit_rows;
  const int64_t max_tokens = state_->options.max_batch_tokens, max_rows = state_->options.max_logit_rows;
  const CudaKvSequence* self = &seq;
  absl::StatusOr<absl::Span<const cudaEvent_t>> ready = EnqueuePending({&self, 1});
  if (!ready.ok()) return ready.status();
  int64_t row = 0;
  for (int64_t i = 0; i < n;) {
    int64_t end = std::min(n, i + max_tokens);
    if (end > first_logit) end = std::min(end, std::max(i, first_logit) + max_rows);
    const int64_t rows = std::max<int64_t>(0, end - std::max(i, first_logit));
    cuda::ForwardSeq f;
    f.tokens = tokens.subspan(i, end - i);
    f.context = seq.context_;
    f.slots = *seq.slots_;
    f.own_len = static_cast<int32_t>(seq.own_len_);
    f.position = static_cast<int32_t>(seq.length());
    f.logit_rows = static_cast<int32_t>(rows);
    CB_RETURN_IF_ERROR(ForwardWaiting(model, {&f, 1}, *ready));  // later chunks follow on the stream
    *ready = {};
    PublishPending(seq);
    seq.own_len_ += end - i;
    if (rows > 0) {
      CB_RETURN_IF_ERROR(model.CopyLogits(logits.subspan(row * vocab, rows * vocab)));
      row += rows;
    }
    i = end;
  }
  return absl::OkStatus();
}

absl::Status CudaBackendImpl::RunPasses(absl::Span<KvSequence* const> seqs,
                                        absl::Span<const absl::Span<const int32_t>> tokens,
                                        int32_t logit_rows, absl::Span<float> logits) {
  CudaModel& model = *state_->model;
  const int64_t vocab = config_.vocab_size;
  std::vector<const CudaKvSequence*> all;
  for (KvSequence* s : seqs) {
    CB_RETURN_IF_ERROR(EnsureSlots(static_cast<CudaKvSequence&>(*s)));
    all.push_back(static_cast<const CudaKvSequence*>(s));
  }
  absl::StatusOr<absl::Span<const cudaEvent_t>> ready = EnqueuePending(all);
  if (!ready.ok()) return ready.status();
  const size_t max_seqs = static_cast<size_t>(state_->options.max_decode_batch);
  const size_t max_runs = static_cast<size_t>(state_->options.max_context_runs);
  const int64_t max_tokens = state_->options.max_batch_tokens;
  const int64_t max_rows = model.options().max_logit_rows;
  std::vector<cuda::ForwardSeq> group;
  size_t begin = 0, runs = 0;
  int64_t group_tokens = 0;
  auto run_group = [&](size_t end) -> absl::Status {
    if (group.empty()) return absl::OkStatus();
    CB_RETURN_IF_ERROR(ForwardWaiting(model, group, *ready));  // later groups follow on the stream
    *ready = {};
    for (KvSequence* s : seqs) PublishPending(static_cast<CudaKvSequence&>(*s));
    if (logit_rows > 0) {
      CB_RETURN_IF_ERROR(model.CopyLogits(
          logits.subspan(begin * logit_rows * vocab, (end - begin) * logit_rows * vocab)));
    }
    for (size_t i = begin; i < end; ++i) {
      static_cast<CudaKvSequence&>(*seqs[i]).own_len_ += static_cast<int64_t>(tokens[i].size());
    }
    group.clear();
    begin = end;
    runs = 0;
    group_tokens = 0;
    return absl::OkStatus();
  };
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto& seq = static_cast<CudaKvSequence&>(*seqs[i]);
    const int64_t n = static_cast<int64_t>(tokens[i].size());
    if (group.size() == max_seqs || runs + seq.context_.size() > max_runs ||
        group_tokens + n > max_tokens ||
        static_cast<int64_t>(group.size() + 1) * logit_rows > max_rows) {
      CB_RETURN_IF_ERROR(run_group(i));
    }
    cuda::ForwardSeq f;
    f.tokens = tokens[i];
    f.context = seq.context_;
    f.slots = *seq.slots_;
    f.own_len = static_cast<int32_t>(seq.own_len_);
    f.position = static_cast<int32_t>(seq.length());
    f.logit_rows = logit_rows;
    runs += seq.context_.size();
    group_tokens += n;
    group.push_back(std::move(f));
  }
  return run_group(seqs.size());
}

absl::Status CudaBackendImpl::ForwardBatch(absl::Span<KvSequence* const> seqs,
                                           absl::Span<const absl::Span<const int32_t>> tokens) {
  if (absl::Status s = CheckForwardBatch(seqs, tokens); !s.ok()) return s;
  absl::MutexLock lock(&state_->mu);
  // Sequences longer than one pass run alone in chunks; the others share passes.
  std::vector<KvSequence*> shared;
  std::vector<absl::Span<const int32_t>> shared_tokens;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (static_cast<int64_t>(tokens[i].size()) > state_->options.max_batch_tokens) {
      CB_RETURN_IF_ERROR(ForwardChunks(static_cast<CudaKvSequence&>(*seqs[i]), tokens[i], 0, {}));
    } else {
      shared.push_back(seqs[i]);
      shared_tokens.push_back(tokens[i]);
    }
  }
  if (!shared.empty()) CB_RETURN_IF_ERROR(RunPasses(shared, shared_tokens, 0, {}));
  // Nothing waited yet: surface asynchronous faults to this caller.
  return state_->model->Synchronize();
}

absl::Status CudaBackendImpl::DecodeStep(absl::Span<KvSequence* const> seqs,
                                         absl::Span<const int32_t> tokens,
                                         absl::Span<float> logits) {
  if (absl::Status s = CheckDecodeStep(seqs, tokens, logits); !s.ok()) return s;
  std::vector<absl::Span<const int32_t>> one_each(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) one_each[i] = tokens.subspan(i, 1);
  absl::MutexLock lock(&state_->mu);
  return RunPasses(seqs, one_each, 1, logits);
}

absl::StatusOr<DeviceMemory> CudaBackendImpl::Upload(const BlockView& block) {
  CudaModel& model = *state_->model;
  const BlockMeta& m = block.meta();
  const DType want = model.options().dtype;
  const int64_t elems = static_cast<int64_t>(2 * LayerElements(m) * m.num_layers);
  absl::StatusOr<DeviceMemory> out = DeviceMemory::Allocate(elems * cuda::DTypeBytes(want));
  if (!out.ok()) return out.status();
  cudaStream_t stream = model.stream();
  // Host bytes to send and their device type: the payload's data as is for f32/bf16 (layers are
  // contiguous), else f32 dequantized here.
  std::vector<float> dequantized;
  const void* host;
  DType src;
  if (std::optional<DType> d = AsCudaDtype(m.dtype)) {
    host = block.Layer(0).data();
    src = *d;
  } else {
    dequantized.resize(elems);
    const int64_t le = static_cast<int64_t>(LayerElements(m));
    for (uint32_t l = 0; l < m.num_layers; ++l) {
      block.ReadLayerF32(l, dequantized.data() + 2 * l * le, dequantized.data() + (2 * l + 1) * le);
    }
    host = dequantized.data();
    src = DType::kF32;
  }
  const size_t src_bytes = elems * cuda::DTypeBytes(src);
  if (src == want) {
    CB_RETURN_IF_ERROR(state_->host_regions.CopyToDevice(out->get(), host, src_bytes, stream));
  } else {
    absl::StatusOr<DeviceMemory> tmp = DeviceMemory::Allocate(src_bytes);
    if (!tmp.ok()) return tmp.status();
    CB_RETURN_IF_ERROR(state_->host_regions.CopyToDevice(tmp->get(), host, src_bytes, stream));
    CB_RETURN_IF_ERROR(cuda::Cast(src, want, tmp->get(), out->get(), elems, stream));
    CB_RETURN_IF_ERROR(model.Synchronize());  // before tmp is freed
  }
  CB_RETURN_IF_ERROR(model.Synchronize());
  return out;
}

absl::Status CudaBackendImpl::CheckAppend(const CudaKvSequence& seq, const BlockMeta& m) const {
  if (m.num_layers != config_.num_layers || m.num_kv_heads != config_.num_kv_heads ||
      m.head_dim != config_.head_dim) {
    return absl::InvalidArgumentError("AppendBlock: the block's geometry is not the model's");
  }
  if (seq.length() + m.num_tokens > seq.capacity()) {
    return absl::InvalidArgumentError("AppendBlock: the block exceeds the sequence's capacity");
  }
  return absl::OkStatus();
}

bool CudaBackendImpl::TakesContextRun(const CudaKvSequence& seq) const {
  return seq.own_len_ == 0 &&
         static_cast<int64_t>(seq.context_.size()) < state_->options.max_context_runs;
}

void CudaBackendImpl::AddContextRun(CudaKvSequence& seq, cuda::GpuTier::Handle h) {
  const int64_t n = h->meta.num_tokens;
  seq.context_.push_back(cuda::KvRun{h->memory.get(), static_cast<int32_t>(n),
                                     static_cast<int32_t>(seq.length())});
  seq.blocks_.push_back(std::move(h));
  seq.context_tokens_ += n;
}

absl::Status CudaBackendImpl::CopyIntoSlots(CudaKvSequence& seq, const void* kv, int64_t n) {
  CudaModel& model = *state_->model;
  CB_RETURN_IF_ERROR(EnsureSlots(seq));
  CB_RETURN_IF_ERROR(model.ImportKv(kv, n, *seq.slots_, seq.own_len_, static_cast<int32_t>(seq.length())));
  CB_RETURN_IF_ERROR(model.Synchronize());  // before the source may be freed
  seq.own_len_ += n;
  return absl::OkStatus();
}

absl::Status CudaBackendImpl::AppendBlock(KvSequence& seq_base, const BlockView& block) {
  auto& seq = static_cast<CudaKvSequence&>(seq_base);
  const BlockMeta& m = block.meta();
  CB_RETURN_IF_ERROR(CheckAppend(seq, m));
  const int64_t n = m.num_tokens;
  absl::MutexLock lock(&state_->mu);
  CudaModel& model = *state_->model;
  if (TakesContextRun(seq) && n * model.kv_bytes_per_token() <= state_->options.gpu_tier_bytes) {
    // Into the GPU tier (the engine's FindResident counted the lookup), read in place from there.
    cuda::GpuTier::Handle h = state_->tier.Find(m.key);
    if (std::optional<BlockMeta> placed = PlacedMeta(m); h == nullptr && placed.has_value()) {
      // Copied under the next pass, layer by layer, then into the tier.
      absl::StatusOr<DeviceMemory> mem = state_->BlockMemory(DataBytes(*placed), model.stream());
      if (!mem.ok()) return mem.status();
      h = std::make_shared<const cuda::GpuBlock>(cuda::GpuBlock{*placed, std::move(*mem)});
      seq.pending_.push_back({cuda::LayerCopy{block, h->memory.get()}, h});
    } else if (h == nullptr) {
      absl::StatusOr<DeviceMemory> mem = Upload(block);
      if (!mem.ok()) return mem.status();
      BlockMeta placed = m;
      placed.dtype = model.options().dtype == DType::kF32 ? KvDtype::kF32 : KvDtype::kBF16;
      CB_RETURN_IF_ERROR(state_->tier.Insert(m.key, cuda::GpuBlock{placed, std::move(*mem)}));
      h = state_->tier.Find(m.key);  // present: inserts happen under our lock only
      if (h == nullptr) return absl::InternalError("AppendBlock: block vanished from the GPU tier");
    }
    AddContextRun(seq, std::move(h));
    return absl::OkStatus();
  }
  absl::StatusOr<DeviceMemory> mem = Upload(block);
  if (!mem.ok()) return mem.status();
  return CopyIntoSlots(seq, mem->get(), n);
}

Backend::ResidentBlock CudaBackendImpl::FindResident(const BlockKey& key, int64_t num_tokens) {
  cuda::GpuTier::Handle h = state_->tier.Get(key);
  if (h == nullptr || static_cast<int64_t>(h->meta.num_tokens) != num_tokens) return nullptr;
  return h;
}

std::optional<BlockMeta> CudaBackendImpl::PlacedMeta(const BlockMeta& m) const {
  BlockMeta placed = m;
  placed.dtype = state_->options.dtype;
  if (m.num_layers != config_.num_layers || m.num_kv_heads != config_.num_kv_heads ||
      m.head_dim != config_.head_dim || (m.dtype != placed.dtype && m.dtype != KvDtype::kFP8E4M3) ||
      static_cast<int64_t>(DataBytes(placed)) > state_->options.gpu_tier_bytes) {
    return std::nullopt;
  }
  return placed;
}

absl::StatusOr<absl::Span<const cudaEvent_t>> CudaBackendImpl::EnqueuePending(
    absl::Span<const CudaKvSequence* const> seqs) const {
  std::vector<cuda::LayerCopy> copies;
  for (const CudaKvSequence* seq : seqs) {
    for (const CudaKvSequence::PendingBlock& p : seq->pending_) copies.push_back(p.copy);
  }
  if (copies.empty()) return absl::Span<const cudaEvent_t>();
  if (absl::Status s = state_->place->Enqueue(copies, state_->model->stream()); !s.ok()) {
    state_->place->Synchronize().IgnoreError();  // no copy still writes when the memory goes
    return s;
  }
  return state_->place->layer_events();
}

absl::Status CudaBackendImpl::ForwardWaiting(CudaModel& model, absl::Span<const cuda::ForwardSeq> seqs,
                                             absl::Span<const cudaEvent_t> ready) {
  absl::Status s = model.Forward(seqs, ready);
  if (!s.ok() && !ready.empty()) {
    // Best effort on a failing device: the pass's error is the one to report.
    CudaStatus(cudaStreamWaitEvent(model.stream(), ready.back(), 0), "cudaStreamWaitEvent").IgnoreError();
  }
  return s;
}

void CudaBackendImpl::PublishPending(CudaKvSequence& seq) {
  // A tier that cannot take a block (it alone exceeds the budget) leaves it to the sequence.
  for (const CudaKvSequence::PendingBlock& p : seq.pending_) {
    state_->tier.Insert(p.block->meta.key, p.block).IgnoreError();
  }
  seq.pending_.clear();
}

Backend::ResidentBlock CudaBackendImpl::MakeResident(const BlockView& block) {
  const BlockMeta& m = block.meta();
  // Payloads the tier takes: the model's geometry, in its dtype or fp8 (dequantized on the
  // GPU); AppendBlock converts the others.
  const std::optional<BlockMeta> placed = PlacedMeta(m);
  if (!placed.has_value()) return nullptr;
  if (ResidentBlock h = state_->tier.Find(m.key)) return h;
  absl::StatusOr<DeviceMemory> mem;
  {
    absl::MutexLock lock(&state_->upload_mu);
    cuda::LayerPipeline& pipe = *state_->upload;
    mem = state_->BlockMemory(DataBytes(*placed), pipe.stream());
    if (!mem.ok()) return nullptr;
    const cuda::LayerCopy copy{block, mem->get()};
    const bool enqueued = pipe.Enqueue({&copy, 1}, pipe.stream()).ok();
    // Also after a failed Enqueue: no copy may still write the memory once it goes.
    if (!pipe.Synchronize().ok() || !enqueued) return nullptr;
  }
  if (!state_->tier.Insert(m.key, cuda::GpuBlock{*placed, std::move(*mem)}).ok()) return nullptr;
  return state_->tier.Find(m.key);  // null if already evicted by a concurrent insert
}

absl::Status CudaBackendImpl::AppendResident(KvSequence& seq_base, const ResidentBlock& block) {
  auto& seq = static_cast<CudaKvSequence&>(seq_base);
  if (block == nullptr) return absl::InvalidArgumentError("AppendResident: null block");
  // FindResident handed out a GPU-tier handle.
  cuda::GpuTier::Handle h = std::static_pointer_cast<const cuda::GpuBlock>(block);
  CB_RETURN_IF_ERROR(CheckAppend(seq, h->meta));
  absl::MutexLock lock(&state_->mu);
  if (TakesContextRun(seq)) {
    AddContextRun(seq, std::move(h));
    return absl::OkStatus();
  }
  return CopyIntoSlots(seq, h->memory.get(), h->meta.num_tokens);
}

absl::Status CudaBackendImpl::ReadPiece(const CudaKvSequence& seq, int run, int64_t at, int64_t n,
                                        std::vector<float>& out) const {
  CudaModel& model = *state_->model;
  const DType dt = model.options().dtype;
  const int es = cuda::DTypeBytes(dt);
  const int64_t L = config_.num_layers, KVH = config_.num_kv_heads, D = config_.head_dim;
  const int64_t elems = L * 2 * KVH * n * D;
  cudaStream_t stream = model.stream();
  absl::StatusOr<DeviceMemory> piece = DeviceMemory::Allocate(elems * es);
  if (!piece.ok()) return piece.status();
  if (run < 0) {
    CB_RETURN_IF_ERROR(model.ExportKv(*seq.slots_, at, n, piece->get()));
  } else {
    const cuda::KvRun& r = seq.context_[run];
    for (int64_t l = 0; l < L; ++l) {
      for (int kv = 0; kv < 2; ++kv) {
        char* dst = piece->as<char>() + (l * 2 + kv) * KVH * n * D * es;
        const char* src = static_cast<const char*>(r.data) + ((l * 2 + kv) * KVH * r.num_tokens + at) * D * es;
        CB_RETURN_IF_ERROR(CudaStatus(cudaMemcpy2DAsync(dst, n * D * es, src, int64_t{r.num_tokens} * D * es,
                                                        n * D * es, KVH, cudaMemcpyDeviceToDevice, stream),
                                      "ReadKv copy"));
        if (kv == 0) {
          CB_RETURN_IF_ERROR(cuda::ReencodeK(dt, dst, dst, static_cast<int32_t>(KVH), static_cast<int32_t>(n),
                                             static_cast<int32_t>(D), n * D, r.rope_offset, model.inv_freq(),
                                             stream));
        }
      }
    }
  }
  DeviceMemory f32;
  const void* src = piece->get();
  if (dt != DType::kF32) {
    absl::StatusOr<DeviceMemory> m = DeviceMemory::Allocate(elems * 4);
    if (!m.ok()) return m.status();
    f32 = std::move(*m);
    CB_RETURN_IF_ERROR(cuda::Cast(dt, DType::kF32, piece->get(), f32.get(), elems, stream));
    src = f32.get();
  }
  out.resize(elems);
  CB_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(out.data(), src, elems * 4, cudaMemcpyDeviceToHost, stream), "D2H KV"));
  return model.Synchronize();
}

absl::Status CudaBackendImpl::ReadKv(const KvSequence& seq_base, int64_t begin, int64_t n, absl::Span<float> k,
                                     absl::Span<float> v) const {
  const auto& seq = static_cast<const CudaKvSequence&>(seq_base);
  const int64_t L = config_.num_layers, KVH = config_.num_kv_heads, D = config_.head_dim;
  if (begin < 0 || n <= 0 || begin + n > seq.length()) {
    return absl::InvalidArgumentError("ReadKv: range outside the sequence");
  }
  if (static_cast<int64_t>(k.size()) != L * KVH * n * D || static_cast<int64_t>(v.size()) != L * KVH * n * D) {
    return absl::InvalidArgumentError("ReadKv: k and v must hold layers * kv_heads * n * head_dim floats");
  }
  absl::MutexLock lock(&state_->mu);
  // Blocks appended since the last pass: copied now (again by that pass; the same bytes).
  const CudaKvSequence* self = &seq;
  absl::StatusOr<absl::Span<const cudaEvent_t>> ready = EnqueuePending({&self, 1});
  if (!ready.ok()) return ready.status();
  if (!ready->empty()) {
    CB_RETURN_IF_ERROR(CudaStatus(cudaStreamWaitEvent(state_->model->stream(), ready->back(), 0), "ReadKv wait"));
  }
  // The sequence's pieces in order: context runs, then the own slots (run -1).
  std::vector<float> host;
  int64_t pos = 0;
  const int runs = static_cast<int>(seq.context_.size());
  for (int run = 0; run <= runs; ++run) {
    const int64_t len = run < runs ? seq.context_[run].num_tokens : seq.own_len_;
    const int64_t a = std::max(begin, pos), b = std::min(begin + n, pos + len);
    if (a < b) {
      const int64_t cnt = b - a;
      CB_RETURN_IF_ERROR(ReadPiece(seq, run < runs ? run : -1, a - pos, cnt, host));
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t h = 0; h < KVH; ++h) {
          const int64_t dst = ((l * KVH + h) * n + (a - begin)) * D;
          std::memcpy(k.data() + dst, host.data() + ((l * 2) * KVH + h) * cnt * D, cnt * D * 4);
          std::memcpy(v.data() + dst, host.data() + ((l * 2 + 1) * KVH + h) * cnt * D, cnt * D * 4);
        }
      }
    }
    pos += len;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaBackendOptions::Validate() const {
  if (dtype != KvDtype::kF32 && dtype != KvDtype::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: dtype must be f32 or bf16, not ", std::string(DtypeName(dtype))));
  }
  if (kv_pool_tokens <= 0 || max_batch_tokens <= 0 || max_logit_rows <= 0 || max_context_runs < 0 ||
      max_decode_batch <= 0 || gpu_tier_bytes <= 0) {
    return absl::InvalidArgumentError("cuda backend: sizes must be positive");
  }
  if (max_decode_batch > max_batch_tokens) {
    return absl::InvalidArgumentError("cuda backend: max_decode_batch exceeds max_batch_tokens");
  }
  return absl::OkStatus();
}

namespace cuda {

absl::StatusOr<CudaModelSpec> SpecFromConfig(const ModelConfig& c, int64_t rope_seq_len) {
  CudaModelSpec s;
  s.vocab = static_cast<int32_t>(c.vocab_size);
  s.hidden = static_cast<int32_t>(c.hidden_size);
  s.intermediate = static_cast<int32_t>(c.intermediate_size);
  s.layers = static_cast<int32_t>(c.num_layers);
  s.heads = static_cast<int32_t>(c.num_heads);
  s.kv_heads = static_cast<int32_t>(c.num_kv_heads);
  s.head_dim = static_cast<int32_t>(c.head_dim);
  s.rms_eps = c.rms_norm_eps;
  s.tied_embeddings = c.tie_word_embeddings;
  s.qkv_bias = c.qkv_bias;
  s.o_bias = c.o_bias;
  s.mlp_bias = c.mlp_bias;
  s.inv_freq.resize(c.head_dim / 2);
  CB_RETURN_IF_ERROR(kernels::ComputeRopeInvFreq(c.rope, static_cast<int>(c.head_dim), rope_seq_len,
                                                 absl::MakeSpan(s.inv_freq)));
  CB_RETURN_IF_ERROR(s.Validate());
  return s;
}

HostModel HostModelFromWeights(const ModelWeights& w) {
  HostModel h;
  h.embed = w.embed();
  h.final_norm = w.final_norm();
  h.lm_head = w.lm_head().weight;  // the embedding itself when tied
  auto lin = [](const LinearWeights& x) { return HostLinear{x.weight, x.bias}; };
  for (const LayerWeights& l : w.layers()) {
    HostLayer hl;
    hl.input_norm = l.input_norm;
    hl.post_norm = l.post_attention_norm;
    hl.q = lin(l.q), hl.k = lin(l.k), hl.v = lin(l.v), hl.o = lin(l.o);
    hl.gate = lin(l.gate), hl.up = lin(l.up), hl.down = lin(l.down);
    h.layers.push_back(hl);
  }
  return h;
}

}  // namespace cuda

absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const ModelWeights& weights,
                                                               const ModelConfig& config,
                                                               const CudaBackendOptions& options) {
  CB_RETURN_IF_ERROR(options.Validate());
  int devices = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&devices); err != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda backend: no CUDA device (", cudaGetErrorString(err), ")"));
  }
  // The Engine keeps sequences within max_position_embeddings, where every RoPE table is static.
  absl::StatusOr<cuda::CudaModelSpec> spec = cuda::SpecFromConfig(config, config.max_position_embeddings);
  if (!spec.ok()) return spec.status();
  cuda::CudaModelOptions mo;
  mo.dtype = *AsCudaDtype(options.dtype);
  mo.max_batch_tokens = options.max_batch_tokens;
  mo.kv_pool_tokens = options.kv_pool_tokens;
  mo.max_seqs = options.max_decode_batch;
  mo.max_context_runs = options.max_context_runs;
  mo.max_logit_rows = std::max(options.max_logit_rows, options.max_decode_batch);
  absl::StatusOr<std::unique_ptr<CudaModel>> model =
      CudaModel::FromHost(*spec, mo, cuda::HostModelFromWeights(weights));
  if (!model.ok()) return model.status();
  return CreateCudaBackend(std::move(*model), config, options);
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(std::unique_ptr<cuda::CudaModel> model,
                                                               const ModelConfig& config,
                                                               const CudaBackendOptions& options) {
  CB_RETURN_IF_ERROR(options.Validate());
  if (model == nullptr) return absl::InvalidArgumentError("cuda backend: no model");
  const cuda::CudaModelOptions& mo = model->options();
  const cuda::CudaModelSpec& spec = model->spec();
  if (mo.dtype != *AsCudaDtype(options.dtype) || options.max_batch_tokens > mo.max_batch_tokens ||
      options.kv_pool_tokens > mo.kv_pool_tokens || options.max_decode_batch > mo.max_seqs ||
      options.max_context_runs > mo.max_context_runs ||
      std::max(options.max_logit_rows, options.max_decode_batch) > mo.max_logit_rows ||
      spec.layers != config.num_layers || spec.kv_heads != config.num_kv_heads ||
      spec.head_dim != config.head_dim || spec.vocab != config.vocab_size) {
    return absl::InvalidArgumentError("cuda backend: the model's shape or limits do not match the options");
  }
  cuda::GpuTierOptions to;
  to.capacity_bytes = options.gpu_tier_bytes;
  auto state = std::make_shared<State>(std::move(model), to, options);
  CB_RETURN_IF_ERROR(state->block_pool.Create());
  absl::StatusOr<std::unique_ptr<cuda::LayerPipeline>> upload =
      cuda::LayerPipeline::Create(spec.layers, mo.dtype, &state->host_regions);
  if (!upload.ok()) return upload.status();
  absl::StatusOr<std::unique_ptr<cuda::LayerPipeline>> place =
      cuda::LayerPipeline::Create(spec.layers, mo.dtype, &state->host_regions);
  if (!place.ok()) return place.status();
  {
    absl::MutexLock lock(&state->upload_mu);
    state->upload = std::move(*upload);
  }
  {
    absl::MutexLock lock(&state->mu);
    state->place = std::move(*place);
  }
  return std::unique_ptr<CudaBackend>(new CudaBackendImpl(std::move(state), config));
}

}  // namespace kvblock
