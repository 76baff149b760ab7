// HostRegionListener: told when a client maps a cache node's shared host memory (the same-host
// data plane, services/shm_data_plane.h) and before it unmaps it, so a GPU worker can register
// the region once (e.g. cudaHostRegister) and copy blocks to the device straight from it.
// HostRegionRelay: a listener to hand the client when the one that uses the regions exists only
// later, or changes (a worker's backend is made after its cache client).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
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

// Remembers the regions mapped and not yet unmapped, and forwards both calls to its target.
// Thread-safe.
class HostRegionRelay final : public HostRegionListener {
 public:
  void OnMapped(absl::Span<const uint8_t> region) override;
  void OnUnmapping(absl::Span<const uint8_t> region) override;
  // Forwards to `target` (borrowed until the next Attach; null: to nobody) from now on: the
  // previous target hears OnUnmapping, the new one OnMapped, for every region mapped now.
  void Attach(HostRegionListener* target);

 private:
  absl::Mutex mu_;
  std::vector<absl::Span<const uint8_t>> mapped_ ABSL_GUARDED_BY(mu_);
  HostRegionListener* target_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace kvblock
