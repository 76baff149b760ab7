// LayerPipeline; see layer_pipeline.h.
#include "worker/engine/cuda/layer_pipeline.h"

#include "absl/strings/str_cat.h"
#include "kernels/cuda/kernels.h"

namespace kvblock::cuda {

absl::StatusOr<std::unique_ptr<LayerPipeline>> LayerPipeline::Create(int32_t layers) {
  if (layers <= 0) return absl::InvalidArgumentError("LayerPipeline: layers must be positive");
  std::unique_ptr<LayerPipeline> p(new LayerPipeline());
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

absl::Status LayerPipeline::Enqueue(absl::Span<const LayerCopy> blocks, cudaStream_t after) {
  const uint32_t layers = static_cast<uint32_t>(events_.size());
  for (const LayerCopy& b : blocks) {
    const BlockMeta& m = b.block.meta();
    if (m.num_layers != layers || m.dtype == KvDtype::kFP8E4M3 || b.device == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LayerPipeline: a block must have ", layers, " layers, a non-fp8 dtype and a destination"));
    }
  }
  if (auto s = CudaStatus(cudaEventRecord(start_, after), "cudaEventRecord"); !s.ok()) return s;
  if (auto s = CudaStatus(cudaStreamWaitEvent(stream_, start_, 0), "cudaStreamWaitEvent"); !s.ok()) return s;
  for (uint32_t l = 0; l < layers; ++l) {
    for (const LayerCopy& b : blocks) {
      const absl::Span<const uint8_t> src = b.block.Layer(l);
      char* dst = static_cast<char*>(b.device) + uint64_t{l} * src.size();
      if (auto s = CudaStatus(cudaMemcpyAsync(dst, src.data(), src.size(), cudaMemcpyHostToDevice, stream_),
                              "layer H2D");
          !s.ok()) {
        return s;
      }
    }
    if (auto s = CudaStatus(cudaEventRecord(events_[l], stream_), "cudaEventRecord"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace kvblock::cuda
