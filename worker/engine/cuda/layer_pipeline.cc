// LayerPipeline; see layer_pipeline.h.
#include "worker/engine/cuda/layer_pipeline.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/kernels.h"

namespace kvblock::cuda {

absl::StatusOr<std::unique_ptr<LayerPipeline>> LayerPipeline::Create(int32_t layers, DType dtype,
                                                                     HostRegions* regions) {
  if (layers <= 0) return absl::InvalidArgumentError("LayerPipeline: layers must be positive");
  std::unique_ptr<LayerPipeline> p(new LayerPipeline(dtype, regions));
  for (cudaStream_t* st : {&p->copy_stream_, &p->stream_}) {
    if (auto s = CudaStatus(cudaStreamCreateWithFlags(st, cudaStreamNonBlocking), "cudaStreamCreate"); !s.ok()) {
      return s;
    }
  }
  p->events_.assign(layers, nullptr);
  p->copied_.assign(layers, nullptr);
  std::vector<cudaEvent_t*> all = {&p->start_, &p->drained_};
  for (size_t l = 0; l < size_t(layers); ++l) all.insert(all.end(), {&p->events_[l], &p->copied_[l]});
  for (cudaEvent_t* e : all) {
    if (auto s = CudaStatus(cudaEventCreateWithFlags(e, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
      return s;
    }
  }
  return p;
}

LayerPipeline::~LayerPipeline() {
  for (const std::vector<cudaEvent_t>* v : {&events_, &copied_}) {
    for (cudaEvent_t e : *v) {
      if (e != nullptr) cudaEventDestroy(e);
    }
  }
  for (cudaEvent_t e : {start_, drained_}) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  for (cudaStream_t st : {copy_stream_, stream_}) {
    if (st != nullptr) cudaStreamDestroy(st);
  }
}

absl::Status LayerPipeline::Synchronize() const {
  for (cudaStream_t st : {copy_stream_, stream_}) {
    if (auto s = CudaStatus(cudaStreamSynchronize(st), "cudaStreamSynchronize"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

char* LayerPipeline::LayerDestination(const LayerCopy& b, uint32_t l) const {
  return static_cast<char*>(b.device) + uint64_t{l} * 2 * LayerElements(b.block.meta()) * DTypeBytes(dtype_);
}

absl::Status LayerPipeline::AddCopy(void* dst, absl::Span<const uint8_t> src, std::vector<CopyPiece>& pieces) const {
  if (regions_ != nullptr) return regions_->AddPieces(dst, src.data(), src.size(), pieces);
  pieces.push_back(CopyPiece{dst, src.data(), src.size()});
  return absl::OkStatus();
}

absl::Status LayerPipeline::Enqueue(absl::Span<const LayerCopy> blocks, cudaStream_t after) {
  const uint32_t layers = static_cast<uint32_t>(events_.size());
  const KvDtype placed = dtype_ == DType::kF32 ? KvDtype::kF32 : KvDtype::kBF16;
  uint64_t fp8_bytes = 0;
  for (const LayerCopy& b : blocks) {
    const BlockMeta& m = b.block.meta();
    const bool fp8 = m.dtype == KvDtype::kFP8E4M3;
    if (m.num_layers != layers || (!fp8 && m.dtype != placed) || b.device == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("LayerPipeline: a block must have ", layers, " layers, be fp8 or ",
                                                     std::string(DtypeName(placed)), " and have a destination"));
    }
    if (fp8) fp8_bytes += DataBytes(m);
  }
  if (fp8_bytes > staging_.bytes()) {
    if (auto s = Synchronize(); !s.ok()) return s;
    staging_.Reset();
    absl::StatusOr<DeviceMemory> m = DeviceMemory::Allocate(fp8_bytes);
    if (!m.ok()) return m.status();
    staging_ = std::move(*m);
  }
  // The copies start after `after`'s work and once the last Enqueue's dequantizations have read
  // the staging buffer.
  if (auto s = CudaStatus(cudaEventRecord(start_, after), "cudaEventRecord"); !s.ok()) return s;
  if (auto s = CudaStatus(cudaEventRecord(drained_, stream_), "cudaEventRecord"); !s.ok()) return s;
  for (cudaEvent_t e : {start_, drained_}) {
    if (auto s = CudaStatus(cudaStreamWaitEvent(copy_stream_, e, 0), "cudaStreamWaitEvent"); !s.ok()) return s;
  }
  for (uint32_t l = 0; l < layers; ++l) {
    // Layer l of every block: copies on the copy stream, then fp8 dequantizations on stream_
    // (which then records event l), while the copy stream goes on with layer l + 1.
    std::vector<std::pair<const LayerCopy*, const char*>> staged;
    std::vector<CopyPiece> pieces;  // the layer's copies, submitted at once
    char* stage = staging_.as<char>();  // fp8 blocks' layers, each block at its DataBytes offset
    for (const LayerCopy& b : blocks) {
      const BlockMeta& m = b.block.meta();
      const absl::Span<const uint8_t> src = b.block.Layer(l);
      if (m.dtype != KvDtype::kFP8E4M3) {
        if (auto s = AddCopy(LayerDestination(b, l), src, pieces); !s.ok()) return s;
        continue;
      }
      char* s8 = stage + uint64_t{l} * src.size();
      if (auto s = AddCopy(s8, src, pieces); !s.ok()) return s;
      staged.emplace_back(&b, s8);
      stage += DataBytes(m);
    }
    if (auto s = CopyPiecesToDevice(pieces, copy_stream_); !s.ok()) return s;
    if (auto s = CudaStatus(cudaEventRecord(copied_[l], copy_stream_), "cudaEventRecord"); !s.ok()) return s;
    if (auto s = CudaStatus(cudaStreamWaitEvent(stream_, copied_[l], 0), "cudaStreamWaitEvent"); !s.ok()) return s;
    for (const auto& [b, s8] : staged) {
      const BlockMeta& m = b->block.meta();
      if (auto s = DequantizeFp8Layer(s8, static_cast<int32_t>(m.num_kv_heads), static_cast<int32_t>(m.num_tokens),
                                      static_cast<int32_t>(m.head_dim), dtype_, LayerDestination(*b, l), stream_);
          !s.ok()) {
        return s;
      }
    }
    if (auto s = CudaStatus(cudaEventRecord(events_[l], stream_), "cudaEventRecord"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace kvblock::cuda
