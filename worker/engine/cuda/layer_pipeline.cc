// LayerPipeline; see layer_pipeline.h.
#include "worker/engine/cuda/layer_pipeline.h"

#include "absl/strings/str_cat.h"
#include "kernels/cuda/kernels.h"

namespace kvblock::cuda {

absl::StatusOr<std::unique_ptr<LayerPipeline>> LayerPipeline::Create(int32_t layers, DType dtype,
                                                                     HostRegions* regions) {
  if (layers <= 0) return absl::InvalidArgumentError("LayerPipeline: layers must be positive");
  std::unique_ptr<LayerPipeline> p(new LayerPipeline(dtype, regions));
  if (auto s = CudaStatus(cudaStreamCreateWithFlags(&p->stream_, cudaStreamNonBlocking), "cudaStreamCreate");
      !s.ok()) {
    return s;
  }
  if (auto s = CudaStatus(cudaEventCreateWithFlags(&p->start_, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
    return s;
  }
  p->events_.assign(layers, nullptr);
  for (cudaEvent_t& e : p->events_) {
    if (auto s = CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"); !s.ok()) {
      return s;
    }
  }
  return p;
}

LayerPipeline::~LayerPipeline() {
  for (cudaEvent_t e : events_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (start_ != nullptr) cudaEventDestroy(start_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status LayerPipeline::CopyIn(void* dst, absl::Span<const uint8_t> src) {
  if (regions_ != nullptr) return regions_->CopyToDevice(dst, src.data(), src.size(), stream_);
  return CudaStatus(cudaMemcpyAsync(dst, src.data(), src.size(), cudaMemcpyHostToDevice, stream_), "layer H2D");
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
    if (auto s = CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); !s.ok()) return s;
    staging_.Reset();
    absl::StatusOr<DeviceMemory> m = DeviceMemory::Allocate(fp8_bytes);
    if (!m.ok()) return m.status();
    staging_ = std::move(*m);
  }
  if (auto s = CudaStatus(cudaEventRecord(start_, after), "cudaEventRecord"); !s.ok()) return s;
  if (auto s = CudaStatus(cudaStreamWaitEvent(stream_, start_, 0), "cudaStreamWaitEvent"); !s.ok()) return s;
  const int es = DTypeBytes(dtype_);
  for (uint32_t l = 0; l < layers; ++l) {
    char* stage = staging_.as<char>();  // fp8 blocks' layers, each block at its DataBytes offset
    for (const LayerCopy& b : blocks) {
      const BlockMeta& m = b.block.meta();
      const absl::Span<const uint8_t> src = b.block.Layer(l);
      char* dst = static_cast<char*>(b.device) + uint64_t{l} * 2 * LayerElements(m) * es;
      if (m.dtype != KvDtype::kFP8E4M3) {
        if (auto s = CopyIn(dst, src); !s.ok()) return s;
        continue;
      }
      char* s8 = stage + uint64_t{l} * src.size();
      if (auto s = CopyIn(s8, src); !s.ok()) return s;
      if (auto s = DequantizeFp8Layer(s8, static_cast<int32_t>(m.num_kv_heads), static_cast<int32_t>(m.num_tokens),
                                      static_cast<int32_t>(m.head_dim), dtype_, dst, stream_);
          !s.ok()) {
        return s;
      }
      stage += DataBytes(m);
    }
    if (auto s = CudaStatus(cudaEventRecord(events_[l], stream_), "cudaEventRecord"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace kvblock::cuda
