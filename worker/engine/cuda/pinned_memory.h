// Page-locked host buffers for blocks fetched from the cache cluster: the HostBufferPool
// allocator over cudaHostAlloc (portable: pinned for every CUDA context of the process), so a
// CacheClient's reads over UCX land in memory the GPU copies from by DMA at the link's rate, and
// the slow pinning is paid once per slab, not per block (cache/host_buffer_pool.h).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "cache/host_buffer_pool.h"

namespace kvblock::cuda {

// allocate: cudaHostAlloc(cudaHostAllocPortable), RESOURCE_EXHAUSTED with the CUDA error when it
// fails; deallocate: cudaFreeHost, INTERNAL with the CUDA error. Usable from any thread.
HostBufferAllocator PinnedHostAllocator();

// A pool of pinned buffers. FAILED_PRECONDITION when no CUDA device is usable; INVALID_ARGUMENT
// for bad options. Slabs are pinned lazily, at the Take that first needs them.
absl::StatusOr<std::unique_ptr<HostBufferPool>> CreatePinnedBufferPool(
    const HostBufferPoolOptions& options);

}  // namespace kvblock::cuda
