// The wire format of the shared-memory data plane (services/shm_data_plane.h) and the socket
// helpers both ends use. A connection is a Unix SOCK_SEQPACKET socket: every message is one
// frame (FrameHeader + body) and arrives whole. Host byte order: both ends are on one host.
//
//   client                         server
//   kHello {token}            ->
//                             <-   kHelloAck {code, num_regions}  (code != 0: then closed)
//                             <-   kRegions {first, count, lengths[count]} + count fds, until
//                                  num_regions fds were sent
//   kAcquire {key}            ->
//                             <-   kAcquired {code, region, offset, length, lease, tier}
//   kRelease {lease ids}      ->   (no answer)
//
// Anything else (unknown type, wrong body size, a frame before kHello, fds from the client, an
// unknown lease id) is a protocol error: the server closes the connection and drops its leases.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "services/session_tokens.h"

namespace kvblock::internal::shm {

enum FrameType : uint32_t {
  kHello = 1,
  kHelloAck = 2,
  kRegions = 3,
  kAcquire = 4,
  kAcquired = 5,
  kRelease = 6,
};

struct FrameHeader {
  uint32_t type;    // FrameType
  uint32_t length;  // body bytes after the header
};
struct HelloBody {
  uint8_t token[SessionTokens::kTokenBytes];
};
struct HelloAckBody {
  int32_t code;  // absl::StatusCode
  uint32_t num_regions;
};
struct RegionsHeader {
  uint32_t first;  // index of the first region in this frame
  uint32_t count;  // regions (and fds) in this frame; uint64_t lengths[count] follow
};
struct AcquireBody {
  uint64_t key_hi;
  uint64_t key_lo;
};
// code: OK; NOT_FOUND (absent on the node); FAILED_PRECONDITION (present but not in shared
// memory, e.g. only on disk: fetch it another way); RESOURCE_EXHAUSTED (lease limit); other
// codes as the store returned them.
struct AcquiredBody {
  int32_t code;  // absl::StatusCode
  uint32_t region;
  uint64_t offset;
  uint64_t length;
  uint64_t lease;
  uint32_t tier;  // StoreTier that answered (kMemory, or kDisk when promoted for this read)
  uint32_t pad;
};

// Largest frame body (bytes); a kRelease carries at most this / 8 lease ids.
inline constexpr uint32_t kMaxBodyBytes = 64 << 10;
inline constexpr uint32_t kMaxReleaseIds = kMaxBodyBytes / sizeof(uint64_t);
// Region fds per kRegions frame (the kernel caps one message at SCM_MAX_FD = 253).
inline constexpr uint32_t kMaxFdsPerFrame = 200;

// Sends one frame, with `fds` attached (SCM_RIGHTS; the sender keeps its own copies).
// UNAVAILABLE with errno's text when the socket fails.
absl::Status SendFrame(int fd, uint32_t type, absl::Span<const uint8_t> body,
                       absl::Span<const int> fds = {});

template <typename T>
absl::Status SendStruct(int fd, uint32_t type, const T& body) {
  return SendFrame(fd, type, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&body),
                                                 sizeof(T)));
}

struct Frame {
  uint32_t type = 0;
  std::vector<uint8_t> body;
  std::vector<int> fds;  // received descriptors (close-on-exec); the caller owns them
};

// Waits for the next frame until `deadline` (or until `stop_fd`, when >= 0, is readable).
// UNAVAILABLE when the peer closed the socket or it failed; DEADLINE_EXCEEDED after the
// deadline; CANCELLED when stop_fd fired; INVALID_ARGUMENT for a malformed frame (truncated,
// header length not matching the body, or fds when `accept_fds` is false: they are closed).
absl::StatusOr<Frame> RecvFrame(int fd, absl::Time deadline, int stop_fd, bool accept_fds);

// Copies a frame body into a fixed-size struct; INVALID_ARGUMENT unless the sizes match.
template <typename T>
absl::StatusOr<T> BodyAs(const Frame& frame) {
  if (frame.body.size() != sizeof(T)) {
    return absl::InvalidArgumentError("shm frame body has the wrong size");
  }
  T out;
  std::memcpy(&out, frame.body.data(), sizeof(T));
  return out;
}

// UNAVAILABLE "what: strerror(err)".
absl::Status ErrnoStatus(std::string_view what, int err);
// Closes every descriptor in `fds`.
void CloseFds(absl::Span<const int> fds);

// Connects a SOCK_SEQPACKET socket to `path` (close-on-exec). UNAVAILABLE with errno's text.
absl::StatusOr<int> ConnectUnix(const std::string& path);

}  // namespace kvblock::internal::shm
