// HostRegions; see host_regions.h.
#include "worker/engine/cuda/host_regions.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/kernels.h"

namespace kvblock::cuda {
namespace {

// cudaHostRegisterReadOnly where the device supports it: the same-host data path maps a node's
// arena read-only, and pinning a read-only mapping for writing fails.
unsigned RegisterFlags() {
  static const unsigned flags = [] {
    int device = 0, read_only = 0;
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported, device) == cudaSuccess &&
        read_only != 0) {
      return unsigned{cudaHostRegisterReadOnly};
    }
    cudaGetLastError();
    return unsigned{cudaHostRegisterDefault};
  }();
  return flags;
}

}  // namespace

absl::Status CopyPiecesToDevice(absl::Span<const CopyPiece> pieces, cudaStream_t stream) {
  // One copy, or the legacy default stream (which cudaMemcpyBatchAsync refuses): a copy each.
  if (pieces.size() == 1 || stream == nullptr) {
    for (const CopyPiece& p : pieces) {
      if (auto s = CudaStatus(cudaMemcpyAsync(p.dst, p.src, p.bytes, cudaMemcpyHostToDevice, stream), "H2D");
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }
  if (pieces.empty()) return absl::OkStatus();
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  for (const CopyPiece& p : pieces) {
    dsts.push_back(p.dst);
    srcs.push_back(p.src);
    sizes.push_back(p.bytes);
  }
  cudaMemcpyAttributes attr = {};
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  size_t attr_index = 0;
  return CudaStatus(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), pieces.size(), &attr,
                                         &attr_index, 1, stream),
                    "cudaMemcpyBatchAsync");
}

HostRegions::HostRegions(uint64_t chunk_bytes)
    : chunk_bytes_(chunk_bytes > 0 && chunk_bytes % 4096 == 0 ? chunk_bytes : kDefaultChunkBytes) {}

HostRegions::~HostRegions() {
  absl::MutexLock lock(&mu_);
  for (Region& r : regions_) {
    for (size_t c = 0; c < r.chunks.size(); ++c) {
      if (r.chunks[c] == Region::kOurs) cudaHostUnregister(const_cast<uint8_t*>(r.base + c * chunk_bytes_));
    }
  }
}

bool HostRegions::Add(absl::Span<const uint8_t> region) {
  if (region.empty()) return false;
  absl::MutexLock lock(&mu_);
  for (const Region& r : regions_) {
    if (region.data() < r.base + r.length && r.base < region.data() + region.size()) return false;
  }
  Region r;
  r.base = region.data();
  r.length = region.size();
  r.chunks.assign((r.length + chunk_bytes_ - 1) / chunk_bytes_, Region::kUnregistered);
  regions_.push_back(std::move(r));
  return true;
}

void HostRegions::Remove(absl::Span<const uint8_t> region) {
  absl::MutexLock lock(&mu_);
  auto it = std::find_if(regions_.begin(), regions_.end(),
                         [&](const Region& r) { return r.base == region.data() && r.length == region.size(); });
  if (it == regions_.end()) return;
  for (size_t c = 0; c < it->chunks.size(); ++c) {
    if (it->chunks[c] == Region::kUnregistered) continue;
    if (it->chunks[c] == Region::kOurs) cudaHostUnregister(const_cast<uint8_t*>(it->base + c * chunk_bytes_));
    registered_bytes_ -= std::min(chunk_bytes_, it->length - c * chunk_bytes_);
  }
  regions_.erase(it);
}

HostRegions::Region* HostRegions::FindLocked(const uint8_t* p) {
  for (Region& r : regions_) {
    if (p >= r.base && p < r.base + r.length) return &r;
  }
  return nullptr;
}

absl::Status HostRegions::RegisterLocked(Region& r, size_t chunk) {
  if (r.chunks[chunk] != Region::kUnregistered) return absl::OkStatus();
  const uint64_t length = std::min(chunk_bytes_, r.length - chunk * chunk_bytes_);
  void* at = const_cast<uint8_t*>(r.base + chunk * chunk_bytes_);
  const cudaError_t err = cudaHostRegister(at, length, RegisterFlags());
  if (err == cudaErrorHostMemoryAlreadyRegistered) {
    cudaGetLastError();  // registered by someone else in this process: use it, leave it to them
    r.chunks[chunk] = Region::kTheirs;
  } else if (auto s = CudaStatus(err, "cudaHostRegister"); !s.ok()) {
    return s;
  } else {
    r.chunks[chunk] = Region::kOurs;
  }
  registered_bytes_ += length;
  return absl::OkStatus();
}

absl::Status HostRegions::AddPieces(void* dst, const void* src, size_t bytes, std::vector<CopyPiece>& out) {
  if (bytes == 0) return absl::OkStatus();
  const auto* from = static_cast<const uint8_t*>(src);
  auto* to = static_cast<uint8_t*>(dst);
  absl::MutexLock lock(&mu_);
  Region* r = FindLocked(from);
  if (r == nullptr || from + bytes > r->base + r->length) {
    out.push_back(CopyPiece{dst, src, bytes});
    return absl::OkStatus();
  }
  for (size_t done = 0; done < bytes;) {
    const uint64_t at = static_cast<uint64_t>(from + done - r->base);
    const size_t chunk = at / chunk_bytes_;
    if (auto s = RegisterLocked(*r, chunk); !s.ok()) return s;
    const size_t n = std::min<uint64_t>(bytes - done, (chunk + 1) * chunk_bytes_ - at);
    out.push_back(CopyPiece{to + done, from + done, n});
    done += n;
  }
  return absl::OkStatus();
}

absl::Status HostRegions::CopyToDevice(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  std::vector<CopyPiece> pieces;
  if (auto s = AddPieces(dst, src, bytes, pieces); !s.ok()) return s;
  return CopyPiecesToDevice(pieces, stream);
}

uint64_t HostRegions::registered_bytes() const {
  absl::MutexLock lock(&mu_);
  return registered_bytes_;
}

}  // namespace kvblock::cuda
