// HostRegionRelay; see host_region_listener.h.
#include "services/host_region_listener.h"

#include <algorithm>

namespace kvblock {

void HostRegionRelay::OnMapped(absl::Span<const uint8_t> region) {
  absl::MutexLock lock(&mu_);
  mapped_.push_back(region);
  if (target_ != nullptr) target_->OnMapped(region);
}

void HostRegionRelay::OnUnmapping(absl::Span<const uint8_t> region) {
  absl::MutexLock lock(&mu_);
  std::erase_if(mapped_, [&](absl::Span<const uint8_t> r) { return r.data() == region.data(); });
  if (target_ != nullptr) target_->OnUnmapping(region);
}

void HostRegionRelay::Attach(HostRegionListener* target) {
  absl::MutexLock lock(&mu_);
  if (target_ != nullptr) {
    for (absl::Span<const uint8_t> r : mapped_) target_->OnUnmapping(r);
  }
  target_ = target;
  if (target_ != nullptr) {
    for (absl::Span<const uint8_t> r : mapped_) target_->OnMapped(r);
  }
}

}  // namespace kvblock
