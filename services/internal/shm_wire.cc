// Socket helpers of the shared-memory data plane's wire format (shm_wire.h).
#include "services/internal/shm_wire.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace kvblock::internal::shm {
absl::Status ErrnoStatus(std::string_view what, int err) {
  return absl::UnavailableError(absl::StrCat(std::string(what), ": ", std::strerror(err)));
}

void CloseFds(absl::Span<const int> fds) {
  for (int fd : fds) close(fd);
}

absl::Status SendFrame(int fd, uint32_t type, absl::Span<const uint8_t> body,
                       absl::Span<const int> fds) {
  if (body.size() > kMaxBodyBytes || fds.size() > kMaxFdsPerFrame) {
    return absl::InternalError("shm frame too large");
  }
  FrameHeader header{type, static_cast<uint32_t>(body.size())};
  iovec iov[2] = {{&header, sizeof(header)},
                  {const_cast<uint8_t*>(body.data()), body.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = body.empty() ? 1 : 2;
  std::vector<char> control;
  if (!fds.empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  // SOCK_SEQPACKET: the whole frame goes as one message or not at all.
  for (;;) {
    const ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n >= 0) {
      if (static_cast<size_t>(n) != sizeof(header) + body.size()) {
        return absl::UnavailableError("shm socket: short send");
      }
      return absl::OkStatus();
    }
    if (errno != EINTR) return ErrnoStatus("shm socket: sendmsg", errno);
  }
}

absl::StatusOr<Frame> RecvFrame(int fd, absl::Time deadline, int stop_fd, bool accept_fds) {
  for (;;) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("shm socket: timeout");
    // Waits in slices of at most 1 s so an infinite deadline needs no special case.
    const int ms = static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1000));
    const int r = poll(fds, stop_fd >= 0 ? 2 : 1, ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("shm socket: poll", errno);
    }
    if (stop_fd >= 0 && (fds[1].revents & POLLIN)) return absl::CancelledError("stopping");
    if (fds[0].revents != 0) break;
  }
  Frame frame;
  // One byte more than the largest frame, so an oversized one shows as truncated. Not zeroed:
  // only the bytes received are read.
  constexpr size_t kBufferBytes = sizeof(FrameHeader) + kMaxBodyBytes + 1;
  const std::unique_ptr<uint8_t[]> buffer = std::make_unique_for_overwrite<uint8_t[]>(kBufferBytes);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerFrame)];
  iovec iov{buffer.get(), kBufferBytes};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoStatus("shm socket: recvmsg", errno);
  if (n == 0) return absl::UnavailableError("shm socket: closed by the peer");
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const size_t first = frame.fds.size();
    frame.fds.resize(first + count);
    std::memcpy(frame.fds.data() + first, CMSG_DATA(c), count * sizeof(int));
  }
  absl::Status bad;
  FrameHeader header{};
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    bad = absl::InvalidArgumentError("shm frame truncated (too large)");
  } else if (static_cast<size_t>(n) == kBufferBytes) {
    bad = absl::InvalidArgumentError("shm frame larger than the limit");
  } else if (static_cast<size_t>(n) < sizeof(FrameHeader)) {
    bad = absl::InvalidArgumentError("shm frame shorter than its header");
  } else {
    std::memcpy(&header, buffer.get(), sizeof(header));
    if (header.length != static_cast<size_t>(n) - sizeof(FrameHeader)) {
      bad = absl::InvalidArgumentError("shm frame length does not match its header");
    } else if (!accept_fds && !frame.fds.empty()) {
      bad = absl::InvalidArgumentError("shm frame carries descriptors");
    }
  }
  if (!bad.ok()) {
    CloseFds(frame.fds);
    return bad;
  }
  frame.type = header.type;
  frame.body.assign(buffer.get() + sizeof(FrameHeader), buffer.get() + n);
  return frame;
}

absl::StatusOr<int> ConnectUnix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shm socket path '", path, "' is empty or longer than ",
                     sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("shm socket: socket", errno);
  int r;
  do {
    r = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    const int err = errno;
    close(fd);
    return ErrnoStatus(absl::StrCat("shm socket: connect to ", path), err);
  }
  return fd;
}

}  // namespace kvblock::internal::shm
