#include "cache/block_store.h"

namespace kvblock {

std::string_view StoreTierName(StoreTier tier) {
  switch (tier) {
    case StoreTier::kNone:
      return "none";
    case StoreTier::kGpu:
      return "gpu";
    case StoreTier::kMemory:
      return "memory";
    case StoreTier::kDisk:
      return "disk";
    case StoreTier::kRemote:
      return "remote";
  }
  return "unknown";
}

}  // namespace kvblock
