// The same-host shared-memory data plane (shm_data_plane.h): server and client.
#include "services/shm_data_plane.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <optional>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "services/internal/shm_wire.h"
#include "services/session_tokens.h"

namespace kvblock {
namespace {

namespace wire = internal::shm;
using wire::ErrnoStatus;

}  // namespace

// ------------------------------------------------------------------------------------------------
// Server

absl::Status ShmServerOptions::Validate() const {
  if (socket_path.empty()) return absl::InvalidArgumentError("ShmServerOptions.socket_path is empty");
  if (socket_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("ShmServerOptions.socket_path is longer than ",
                                                   sizeof(sockaddr_un{}.sun_path) - 1, " bytes"));
  }
  if (token_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ShmServerOptions.token_ttl <= 0");
  }
  if (max_connections < 1 || max_connections > 4096) {
    return absl::InvalidArgumentError("ShmServerOptions.max_connections must be in [1, 4096]");
  }
  if (max_leases_per_connection < 1) {
    return absl::InvalidArgumentError("ShmServerOptions.max_leases_per_connection < 1");
  }
  if (io_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ShmServerOptions.io_timeout <= 0");
  }
  return absl::OkStatus();
}

struct ShmServer::Impl {
  struct Connection {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  // What one connection holds; touched only by its thread.
  struct Session {
    bool authenticated = false;
    uint64_t next_lease = 1;
    absl::flat_hash_map<uint64_t, BlockBytes> leases;
  };

  ~Impl() {
    if (stop_fd >= 0) {
      const uint64_t one = 1;
      // The eventfd stays readable from here on: every thread polling it stops.
      [[maybe_unused]] ssize_t n = write(stop_fd, &one, sizeof(one));
    }
    if (acceptor.joinable()) acceptor.join();
    for (auto& c : conns) c->thread.join();  // each closes its socket (dropping its leases)
    conns.clear();
    if (listen_fd >= 0) {
      close(listen_fd);
      unlink(options.socket_path.c_str());
    }
    if (stop_fd >= 0) close(stop_fd);
  }

  absl::Status Listen();
  void AcceptLoop();
  void Serve(int fd);
  // Handles one frame; an error closes the connection.
  absl::Status Handle(int fd, const wire::Frame& frame, Session& session);
  absl::Status Hello(int fd, const wire::Frame& frame, Session& session);
  absl::Status Acquire(int fd, const wire::Frame& frame, Session& session);
  absl::Status Release(const wire::Frame& frame, Session& session);

  ShmServerOptions options;
  BlockStore* store = nullptr;
  const Arena* arena = nullptr;
  CacheServiceObserver* observer = nullptr;
  std::unique_ptr<SessionTokens> tokens;
  int listen_fd = -1;
  int stop_fd = -1;
  std::thread acceptor;
  std::list<std::unique_ptr<Connection>> conns;  // acceptor thread, then ~Impl
  std::atomic<int> connections{0};
  std::atomic<uint64_t> leases{0};
};

absl::Status ShmServer::Impl::Listen() {
  const std::string& path = options.socket_path;
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat("shm socket path ", path, " exists and is not a socket"));
    }
    // A socket file: in use when someone accepts on it, else left by a process that died.
    absl::StatusOr<int> probe = wire::ConnectUnix(path);
    if (probe.ok()) {
      close(*probe);
      return absl::AlreadyExistsError(
          absl::StrCat("another server listens on the shm socket ", path));
    }
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(absl::StrCat("unlink of the stale shm socket ", path), errno);
    }
  }
  listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) return ErrnoStatus("shm socket: socket", errno);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (bind(listen_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(listen_fd);
    listen_fd = -1;
    return ErrnoStatus(absl::StrCat("shm socket: bind to ", path), err);
  }
  if (listen(listen_fd, 64) != 0) return ErrnoStatus("shm socket: listen", errno);
  stop_fd = eventfd(0, EFD_CLOEXEC);
  if (stop_fd < 0) return ErrnoStatus("shm socket: eventfd", errno);
  return absl::OkStatus();
}

void ShmServer::Impl::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    const int r = poll(fds, 2, 1000);
    // Join the threads of closed connections and forget expired tokens.
    for (auto it = conns.begin(); it != conns.end();) {
      if ((*it)->done.load(std::memory_order_acquire)) {
        (*it)->thread.join();
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
    tokens->Sweep();
    if (r < 0 && errno != EINTR) return;
    if (r <= 0) continue;
    if (fds[1].revents != 0) return;
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors or a connection that died in the backlog: try again shortly rather
      // than spin on a listener that stays readable.
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
        absl::SleepFor(absl::Milliseconds(10));
      }
      continue;
    }
    if (connections.load() >= static_cast<int>(options.max_connections)) {
      close(fd);  // the client reads end-of-stream: UNAVAILABLE
      continue;
    }
    // A client that stops reading must not wedge its thread (and shutdown) in sendmsg.
    const timeval send_timeout = absl::ToTimeval(options.io_timeout);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout)) != 0) {
      close(fd);
      continue;
    }
    connections.fetch_add(1);
    auto c = std::make_unique<Connection>();
    c->fd = fd;
    Connection* raw = c.get();
    c->thread = std::thread([this, raw] {
      Serve(raw->fd);
      connections.fetch_sub(1);
      raw->done.store(true, std::memory_order_release);
    });
    conns.push_back(std::move(c));
  }
}

void ShmServer::Impl::Serve(int fd) {
  Session session;
  const absl::Time hello_deadline = absl::Now() + options.io_timeout;
  for (;;) {
    absl::StatusOr<wire::Frame> frame = wire::RecvFrame(
        fd, session.authenticated ? absl::InfiniteFuture() : hello_deadline, stop_fd,
        /*accept_fds=*/false);
    if (!frame.ok()) break;  // closed, stopping, timed out or malformed
    if (!Handle(fd, *frame, session).ok()) break;
  }
  leases.fetch_sub(session.leases.size());
  session.leases.clear();  // the store's bytes may go now
  close(fd);
}

absl::Status ShmServer::Impl::Handle(int fd, const wire::Frame& frame, Session& session) {
  if (frame.type == wire::kHello) return Hello(fd, frame, session);
  if (!session.authenticated) return absl::UnauthenticatedError("frame before hello");
  switch (frame.type) {
    case wire::kAcquire:
      return Acquire(fd, frame, session);
    case wire::kRelease:
      return Release(frame, session);
    default:
      return absl::InvalidArgumentError("unknown shm frame type");
  }
}

absl::Status ShmServer::Impl::Hello(int fd, const wire::Frame& frame, Session& session) {
  if (session.authenticated) return absl::InvalidArgumentError("second hello");
  absl::StatusOr<wire::HelloBody> hello = wire::BodyAs<wire::HelloBody>(frame);
  if (!hello.ok()) return hello.status();
  const uint32_t n = static_cast<uint32_t>(arena->num_regions());
  if (!tokens->Redeem(std::string_view(reinterpret_cast<const char*>(hello->token),
                                       sizeof(hello->token)))) {
    const wire::HelloAckBody refused{static_cast<int32_t>(absl::StatusCode::kUnauthenticated), 0};
    if (absl::Status s = wire::SendStruct(fd, wire::kHelloAck, refused); !s.ok()) return s;
    return absl::UnauthenticatedError("bad shm session token");
  }
  session.authenticated = true;
  if (absl::Status s = wire::SendStruct(fd, wire::kHelloAck, wire::HelloAckBody{0, n}); !s.ok()) {
    return s;
  }
  for (uint32_t first = 0; first < n; first += wire::kMaxFdsPerFrame) {
    const uint32_t count = std::min(wire::kMaxFdsPerFrame, n - first);
    std::vector<uint8_t> body(sizeof(wire::RegionsHeader) + count * sizeof(uint64_t));
    const wire::RegionsHeader header{first, count};
    std::memcpy(body.data(), &header, sizeof(header));
    std::vector<int> fds(count);
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t length = arena->region_length(first + i);
      std::memcpy(body.data() + sizeof(header) + i * sizeof(uint64_t), &length, sizeof(length));
      fds[i] = arena->region_fd(first + i);
    }
    if (absl::Status s = wire::SendFrame(fd, wire::kRegions, body, fds); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ShmServer::Impl::Acquire(int fd, const wire::Frame& frame, Session& session) {
  absl::StatusOr<wire::AcquireBody> request = wire::BodyAs<wire::AcquireBody>(frame);
  if (!request.ok()) return request.status();
  wire::AcquiredBody answer{};
  if (session.leases.size() >= options.max_leases_per_connection) {
    answer.code = static_cast<int32_t>(absl::StatusCode::kResourceExhausted);
  } else {
    absl::StatusOr<BlockBytes> block = store->Get(BlockKey{request->key_hi, request->key_lo});
    std::optional<ArenaLocation> where;
    if (block.ok() && !block->bytes.empty()) where = arena->Locate(block->bytes.data());
    if (!block.ok()) {
      answer.code = static_cast<int32_t>(block.status().code());
      if (observer != nullptr && absl::IsNotFound(block.status())) observer->OnGet(StoreTier::kNone);
    } else if (!where.has_value()) {
      // Present, but not in the shared arena (e.g. a write-back buffer): not local.
      answer.code = static_cast<int32_t>(absl::StatusCode::kFailedPrecondition);
    } else {
      answer.region = where->region;
      answer.offset = where->offset;
      answer.length = block->bytes.size();
      answer.lease = session.next_lease++;
      answer.tier = static_cast<uint32_t>(block->tier);
      if (observer != nullptr) {
        observer->OnGet(block->tier);
        observer->OnBytes("shm", "out", block->bytes.size());
      }
      session.leases.emplace(answer.lease, *std::move(block));
      leases.fetch_add(1);
    }
  }
  return wire::SendStruct(fd, wire::kAcquired, answer);
}

absl::Status ShmServer::Impl::Release(const wire::Frame& frame, Session& session) {
  if (frame.body.empty() || frame.body.size() % sizeof(uint64_t) != 0) {
    return absl::InvalidArgumentError("release body is not a list of lease ids");
  }
  for (size_t i = 0; i < frame.body.size(); i += sizeof(uint64_t)) {
    uint64_t id;
    std::memcpy(&id, frame.body.data() + i, sizeof(id));
    if (session.leases.erase(id) == 0) return absl::InvalidArgumentError("unknown lease id");
    leases.fetch_sub(1);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShmServer>> ShmServer::Start(ShmServerOptions options,
                                                            BlockStore* store, const Arena* arena,
                                                            CacheServiceObserver* observer) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (store == nullptr || arena == nullptr || arena->num_regions() == 0) {
    return absl::InvalidArgumentError("ShmServer needs a store and its arena");
  }
  for (uint32_t i = 0; i < arena->num_regions(); ++i) {
    if (arena->region_fd(i) < 0) {
      return absl::FailedPreconditionError(
          "the memory tier's arena is not shared (MemoryTierOptions::shared_arena)");
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->store = store;
  impl->arena = arena;
  impl->observer = observer;
  impl->tokens = std::make_unique<SessionTokens>(impl->options.token_ttl);
  if (absl::Status s = impl->Listen(); !s.ok()) return s;
  Impl* raw = impl.get();
  impl->acceptor = std::thread([raw] { raw->AcceptLoop(); });
  return std::unique_ptr<ShmServer>(new ShmServer(std::move(impl)));
}

ShmServer::ShmServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShmServer::~ShmServer() = default;

const std::string& ShmServer::socket_path() const { return impl_->options.socket_path; }

absl::Status ShmServer::OpenLocalSession(v1::OpenDataPlaneResponse* response) {
  absl::StatusOr<std::string> token = impl_->tokens->Mint();
  if (!token.ok()) return token.status();
  response->set_shm_socket_path(impl_->options.socket_path);
  response->set_shm_token(*std::move(token));
  return absl::OkStatus();
}

int ShmServer::connections() const { return impl_->connections.load(); }
uint64_t ShmServer::leases() const { return impl_->leases.load(); }

// ------------------------------------------------------------------------------------------------
// Client

absl::Status ShmClientOptions::Validate() const {
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ShmClientOptions.timeout <= 0");
  }
  return absl::OkStatus();
}

// The socket and the mappings. Every BlockBytes handed out holds it (through its lease), so
// the socket stays open, the node keeps the leased bytes, and the mappings stay, until the last
// one is gone.
struct ShmClient::Connection {
  ~Connection() {
    if (fd >= 0) close(fd);  // the node drops any leases left
    for (absl::Span<const uint8_t> region : regions) {
      if (listener != nullptr) listener->OnUnmapping(region);
      munmap(const_cast<uint8_t*>(region.data()), region.size());
    }
  }

  // Tells the node a lease is done (a SOCK_SEQPACKET frame is sent whole, so this needs no lock
  // against Acquire). A failed send is harmless: the node drops the lease when the socket
  // closes.
  void Release(uint64_t lease) const {
    [[maybe_unused]] absl::Status s = wire::SendStruct(fd, wire::kRelease, lease);
  }

  // Receives the kRegions frames of the handshake and maps every region read-only.
  absl::Status MapRegions(uint32_t count, absl::Time deadline);

  int fd = -1;
  HostRegionListener* listener = nullptr;
  absl::Duration timeout;
  std::vector<absl::Span<const uint8_t>> regions;  // immutable after Connect
  absl::Mutex request_mu;                          // one ACQUIRE round trip at a time
  std::atomic<bool> broken{false};
};

namespace {

// Holds one lease on the node; its last holder sends RELEASE.
struct Lease {
  Lease(std::shared_ptr<const ShmClient::Connection> c, uint64_t i)
      : connection(std::move(c)), id(i) {}
  ~Lease() { connection->Release(id); }
  std::shared_ptr<const ShmClient::Connection> connection;
  uint64_t id;
};

}  // namespace

absl::Status ShmClient::Connection::MapRegions(uint32_t count, absl::Time deadline) {
  while (regions.size() < count) {
    absl::StatusOr<wire::Frame> frame = wire::RecvFrame(fd, deadline, -1, /*accept_fds=*/true);
    if (!frame.ok()) return frame.status();
    struct FdCloser {
      ~FdCloser() { wire::CloseFds(*fds); }
      const std::vector<int>* fds;
    } closer{&frame->fds};
    wire::RegionsHeader header{};
    if (frame->type != wire::kRegions || frame->body.size() < sizeof(header)) {
      return absl::UnavailableError("shm handshake: expected the node's regions");
    }
    std::memcpy(&header, frame->body.data(), sizeof(header));
    if (header.first != regions.size() || header.count != frame->fds.size() ||
        header.count > count - regions.size() ||
        frame->body.size() != sizeof(header) + header.count * sizeof(uint64_t)) {
      return absl::UnavailableError("shm handshake: malformed regions frame");
    }
    for (uint32_t i = 0; i < header.count; ++i) {
      uint64_t length;
      std::memcpy(&length, frame->body.data() + sizeof(header) + i * sizeof(uint64_t),
                  sizeof(length));
      struct stat st {};
      if (fstat(frame->fds[i], &st) != 0) return ErrnoStatus("shm handshake: fstat", errno);
      if (length == 0 || static_cast<uint64_t>(st.st_size) < length) {
        return absl::UnavailableError("shm handshake: region larger than its memfd");
      }
      void* base = mmap(nullptr, length, PROT_READ, MAP_SHARED | MAP_NORESERVE, frame->fds[i], 0);
      if (base == MAP_FAILED) return ErrnoStatus(absl::StrCat("mmap of ", length, " bytes"), errno);
      regions.emplace_back(static_cast<const uint8_t*>(base), length);
      if (listener != nullptr) listener->OnMapped(regions.back());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShmClient>> ShmClient::Connect(const std::string& socket_path,
                                                              std::string_view token,
                                                              const ShmClientOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (token.size() != SessionTokens::kTokenBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("shm session token must be ", SessionTokens::kTokenBytes, " bytes"));
  }
  absl::StatusOr<int> fd = wire::ConnectUnix(socket_path);
  if (!fd.ok()) return absl::UnavailableError(fd.status().message());
  auto connection = std::make_shared<Connection>();
  connection->fd = *fd;
  connection->listener = options.region_listener;
  connection->timeout = options.timeout;
  const absl::Time deadline = absl::Now() + options.timeout;
  wire::HelloBody hello;
  std::memcpy(hello.token, token.data(), sizeof(hello.token));
  if (absl::Status s = wire::SendStruct(*fd, wire::kHello, hello); !s.ok()) return s;
  absl::StatusOr<wire::Frame> frame = wire::RecvFrame(*fd, deadline, -1, /*accept_fds=*/false);
  if (!frame.ok()) {
    if (absl::IsDeadlineExceeded(frame.status())) return frame.status();
    return absl::UnavailableError(frame.status().message());
  }
  absl::StatusOr<wire::HelloAckBody> ack = wire::BodyAs<wire::HelloAckBody>(*frame);
  if (frame->type != wire::kHelloAck || !ack.ok()) {
    return absl::UnavailableError("shm handshake: malformed answer to hello");
  }
  if (ack->code != 0) {
    return absl::Status(static_cast<absl::StatusCode>(ack->code),
                        absl::StrCat("the node at ", socket_path, " refused the shm session"));
  }
  if (ack->num_regions == 0 || ack->num_regions > (1u << 20)) {
    return absl::UnavailableError("shm handshake: implausible region count");
  }
  if (absl::Status s = connection->MapRegions(ack->num_regions, deadline); !s.ok()) {
    if (absl::IsDeadlineExceeded(s)) return s;
    return absl::UnavailableError(s.message());
  }
  return std::unique_ptr<ShmClient>(new ShmClient(std::move(connection)));
}

ShmClient::ShmClient(std::shared_ptr<Connection> connection)
    : connection_(std::move(connection)) {}

ShmClient::~ShmClient() = default;

bool ShmClient::healthy() const { return !connection_->broken.load(); }
size_t ShmClient::num_regions() const { return connection_->regions.size(); }

absl::StatusOr<BlockBytes> ShmClient::Acquire(const BlockKey& key) {
  Connection& c = *connection_;
  absl::MutexLock lock(&c.request_mu);
  if (c.broken.load()) return absl::UnavailableError("shm connection broke earlier");
  // Any failure below leaves the stream's state unknown: no further ACQUIREs on it (its
  // socket stays open while earlier leases are held, so their bytes stay put).
  auto fail = [&c](absl::Status s) {
    c.broken.store(true);
    return s;
  };
  if (absl::Status s = wire::SendStruct(c.fd, wire::kAcquire, wire::AcquireBody{key.hi, key.lo});
      !s.ok()) {
    return fail(s);
  }
  absl::StatusOr<wire::Frame> frame =
      wire::RecvFrame(c.fd, absl::Now() + c.timeout, -1, /*accept_fds=*/false);
  if (!frame.ok()) {
    return fail(absl::IsDeadlineExceeded(frame.status())
                    ? frame.status()
                    : absl::UnavailableError(frame.status().message()));
  }
  absl::StatusOr<wire::AcquiredBody> a = wire::BodyAs<wire::AcquiredBody>(*frame);
  if (frame->type != wire::kAcquired || !a.ok()) {
    return fail(absl::UnavailableError("shm: malformed answer to acquire"));
  }
  if (a->code != 0) {
    return absl::Status(static_cast<absl::StatusCode>(a->code),
                        absl::StrCat("shm acquire of ", key.ToHex(), ": ",
                                     a->code == static_cast<int32_t>(absl::StatusCode::kNotFound)
                                         ? "absent on the node"
                                     : a->code == static_cast<int32_t>(
                                                      absl::StatusCode::kFailedPrecondition)
                                         ? "not in the node's shared memory"
                                         : "refused by the node"));
  }
  if (a->region >= c.regions.size() || a->length == 0 ||
      a->offset > c.regions[a->region].size() ||
      a->length > c.regions[a->region].size() - a->offset ||
      a->tier > static_cast<uint32_t>(StoreTier::kRemote)) {
    return fail(absl::UnavailableError("shm: acquire answer outside the node's regions"));
  }
  BlockBytes out;
  out.bytes = c.regions[a->region].subspan(a->offset, a->length);
  out.owner = std::make_shared<Lease>(connection_, a->lease);
  out.tier = static_cast<StoreTier>(a->tier);
  out.verified = true;  // the node verified it on Put; it never left this host's memory
  return out;
}

}  // namespace kvblock
