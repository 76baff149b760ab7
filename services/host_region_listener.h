// HostRegionListener: told when a client maps a cache node's shared host memory (the same-host
// data plane, services/shm_data_plane.h) and before it unmaps it, so a GPU worker can register
// the region once (e.g. cudaHostRegister) and copy blocks to the device straight from it.
#pragma once

#include <cstdint>

#include "absl/types/span.h"

namespace kvblock {

// Borrowed by the client (nullable); must outlive it. Called from client threads, once per
// region: OnMapped after the mapping exists, OnUnmapping before it goes (after every BlockBytes
// pointing into it is gone).
class HostRegionListener {
 public:
  virtual ~HostRegionListener() = default;
  virtual void OnMapped(absl::Span<const uint8_t> region) = 0;
  virtual void OnUnmapping(absl::Span<const uint8_t> region) = 0;
};

}  // namespace kvblock
