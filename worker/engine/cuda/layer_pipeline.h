// LayerPipeline: the layer-wise fetch path's last hop. Block payloads that arrived from the cache
// cluster into pinned host memory go to HBM on a copy stream of their own, layer-major across
// blocks (layer 0 of every block, then layer 1, ...; a layer's copies in one
// cudaMemcpyBatchAsync), recording one event per layer. CudaModel::Forward(seqs, layer_events()) makes layer l's attention wait for event l
// only, so the compute of layer l overlaps the copy of layers l+1...
// fp8-e4m3 payloads (half the bytes of bf16 over the wire and the PCIe link) are copied into a
// device staging buffer and dequantized into the model's dtype (the attention kernel stays
// untouched) on a second stream, layer by layer, so the copy of layer l + 1 runs under the
// dequantization of layer l; other payloads must already be in the model's dtype.
//
// Copies go through a HostRegions when one is given, so payloads lying in a tracked host region
// (a co-located cache node's arena) are read as registered memory.
//
// Thread safety: none; one pipeline per compute stream (callers serialize use).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/block_payload.h"
#include "kernels/cuda/layouts.h"
#include "worker/engine/cuda/device_memory.h"
#include "worker/engine/cuda/host_regions.h"

namespace kvblock::cuda {

struct LayerCopy {
  BlockView block;         // verified payload; its bytes in pinned host memory (else copies block)
  void* device = nullptr;  // destination: the block's K/V in the model's dtype, layer-major
};

class LayerPipeline {
 public:
  // One copy stream and `layers` events; blocks are placed in `dtype`; `regions` (nullable,
  // borrowed, must outlive the pipeline) registers the host regions copies read from. INTERNAL
  // for CUDA failures.
  static absl::StatusOr<std::unique_ptr<LayerPipeline>> Create(int32_t layers, DType dtype,
                                                               HostRegions* regions = nullptr);
  ~LayerPipeline();
  LayerPipeline(const LayerPipeline&) = delete;
  LayerPipeline& operator=(const LayerPipeline&) = delete;

  // Enqueues every block's layers in layer-major order after the work already on `after` (which
  // may still read the destinations), recording event l once layer l of every block is queued.
  // Host bytes must stay valid until the events complete. INVALID_ARGUMENT for a block whose
  // layer count is not the pipeline's, a non-fp8 payload not in the pipeline's dtype or a null
  // destination; RESOURCE_EXHAUSTED if the fp8 staging cannot grow (it grows to the largest
  // request's fp8 bytes, synchronizing once).
  absl::Status Enqueue(absl::Span<const LayerCopy> blocks, cudaStream_t after);
  // Event l: layer l of the last Enqueue is on the device.
  absl::Span<const cudaEvent_t> layer_events() const { return events_; }
  // The stream the events are recorded on: synchronizing it waits for every complete Enqueue.
  cudaStream_t stream() const { return stream_; }
  // Waits for all the pipeline's work, that of a failed Enqueue included. INTERNAL on a CUDA
  // error.
  absl::Status Synchronize() const;

 private:
  LayerPipeline(DType dtype, HostRegions* regions) : dtype_(dtype), regions_(regions) {}
  // Appends one host-to-device copy's pieces (through regions_ when set) to `pieces`.
  absl::Status AddCopy(void* dst, absl::Span<const uint8_t> src, std::vector<CopyPiece>& pieces) const;
  // Where layer l of block b goes on the device.
  char* LayerDestination(const LayerCopy& b, uint32_t l) const;
  const DType dtype_;
  HostRegions* const regions_;
  DeviceMemory staging_;  // fp8 layers before dequantization
  cudaStream_t copy_stream_ = nullptr;  // host-to-device copies
  cudaStream_t stream_ = nullptr;       // fp8 dequantization, then event l for layer l
  cudaEvent_t start_ = nullptr;         // `after`'s work at the last Enqueue
  cudaEvent_t drained_ = nullptr;       // stream_'s work at the last Enqueue (staging is free)
  std::vector<cudaEvent_t> copied_;     // layer l of the last Enqueue copied
  std::vector<cudaEvent_t> events_;
};

}  // namespace kvblock::cuda
