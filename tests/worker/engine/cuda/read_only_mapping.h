// ReadOnlyMapping (GPU tests): a copy of some bytes in a private anonymous mapping that is then
// made read-only, as the same-host data path maps a cache node's arena: what HostRegions must
// register (cudaHostRegisterReadOnly) and copy from.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "absl/types/span.h"
#include "gtest/gtest.h"

namespace kvblock::testing {

class ReadOnlyMapping {
 public:
  explicit ReadOnlyMapping(absl::Span<const uint8_t> bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    length_ = (bytes.size() + page - 1) / page * page;
    void* p = mmap(nullptr, length_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    if (p == MAP_FAILED) return;
    base_ = static_cast<uint8_t*>(p);
    std::memcpy(base_, bytes.data(), bytes.size());
    EXPECT_EQ(mprotect(base_, length_, PROT_READ), 0);
  }
  ~ReadOnlyMapping() {
    if (base_ != nullptr) munmap(base_, length_);
  }
  ReadOnlyMapping(const ReadOnlyMapping&) = delete;
  ReadOnlyMapping& operator=(const ReadOnlyMapping&) = delete;

  // The whole mapping (page-rounded) and the copied bytes at its start.
  absl::Span<const uint8_t> region() const { return {base_, length_}; }
  const uint8_t* data() const { return base_; }

 private:
  uint8_t* base_ = nullptr;
  size_t length_ = 0;
};

}  // namespace kvblock::testing
