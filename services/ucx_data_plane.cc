#include "services/ucx_data_plane.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>

#include "absl/algorithm/container.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "cache/block_payload.h"
#include "services/blocking_executor.h"
#include "services/session_tokens.h"
#include "ucp/api/ucp.h"

namespace kvblock {
namespace {

// Active message ids and headers of the data-plane protocol (host byte order: both ends of a
// connection run this code on the same architecture family, x86-64 / aarch64 little-endian).
enum AmId : uint32_t { kAmHello = 1, kAmHelloAck = 2, kAmFetch = 3, kAmData = 4 };
constexpr size_t kTokenBytes = SessionTokens::kTokenBytes;

struct HelloHeader {
  uint64_t hello_id;
  uint8_t token[kTokenBytes];
};
struct HelloAckHeader {
  uint64_t hello_id;
  int32_t code;  // absl::StatusCode
  uint32_t pad;
};
struct FetchHeader {
  uint64_t request_id;
  uint64_t key_hi;
  uint64_t key_lo;
};
struct DataHeader {
  uint64_t request_id;
  uint64_t offset;  // of this segment in the payload
  uint64_t total;   // payload bytes
  int32_t code;     // absl::StatusCode; non-zero: no data follows, the fetch failed
  uint32_t pad;
};

absl::Status FromUcs(ucs_status_t s, std::string_view what) {
  if (s == UCS_OK) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(std::string(what), ": ", ucs_status_string(s)));
}

// Registers `cb` for active messages `id` on `worker`, called with `arg`.
absl::Status SetAmHandler(ucp_worker_h worker, uint32_t id, ucp_am_recv_callback_t cb, void* arg) {
  ucp_am_handler_param_t hp{};
  hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG;
  hp.id = id;
  hp.cb = cb;
  hp.arg = arg;
  return FromUcs(ucp_worker_set_am_recv_handler(worker, &hp), "am handler");
}

absl::StatusOr<sockaddr_in> ParseHostPort(const std::string& address) {
  std::vector<std::string> parts = absl::StrSplit(address, absl::MaxSplits(':', 1));
  int port = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not host:port"));
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  std::string host = parts[0] == "localhost" ? "127.0.0.1" : parts[0];
  if (inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", parts[0], "' is not an IPv4 address (the data plane dials numerically)"));
  }
  return sa;
}

// A ucp context + worker driven by one progress thread. Other threads post closures with Run();
// the thread sleeps in poll() on the worker's event fd and an eventfd for posted work.
class WorkerLoop {
 public:
  ~WorkerLoop() { Stop(); }

  absl::Status Init(std::function<void()> on_tick) {
    on_tick_ = std::move(on_tick);
    ucp_config_t* config = nullptr;
    if (auto s = FromUcs(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read"); !s.ok()) {
      return s;
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    ucs_status_t st = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    if (auto s = FromUcs(st, "ucp_init"); !s.ok()) return s;
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    if (auto s = FromUcs(ucp_worker_create(context_, &wp, &worker_), "ucp_worker_create");
        !s.ok()) {
      return s;
    }
    if (auto s = FromUcs(ucp_worker_get_efd(worker_, &worker_fd_), "ucp_worker_get_efd"); !s.ok()) {
      return s;
    }
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) return absl::InternalError("eventfd failed");
    return absl::OkStatus();
  }

  void StartThread() {
    thread_ = std::thread([this] { Loop(); });
  }

  // Runs `fn` on the progress thread (asynchronously).
  void Post(std::function<void()> fn) {
    {
      absl::MutexLock l(&mu_);
      queue_.push_back(std::move(fn));
    }
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  }

  // Runs `fn` on the progress thread and waits for it.
  void Run(std::function<void()> fn) {
    if (std::this_thread::get_id() == thread_.get_id()) {
      fn();
      return;
    }
    absl::Notification done;
    Post([&] {
      fn();
      done.Notify();
    });
    done.WaitForNotification();
  }

  // Runs `last` on the progress thread, then stops it. Idempotent.
  void Stop(std::function<void()> last = nullptr) {
    if (thread_.joinable()) {
      Run([&] {
        if (last) last();
        // Let close requests finish.
        for (int i = 0; i < 1000 && ucp_worker_progress(worker_) != 0; ++i) {
        }
        stop_ = true;
      });
      thread_.join();
    }
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    worker_ = nullptr;
    if (context_ != nullptr) ucp_cleanup(context_);
    context_ = nullptr;
    if (wake_fd_ >= 0) close(wake_fd_);
    wake_fd_ = -1;
  }

  ucp_context_h context() const { return context_; }
  ucp_worker_h worker() const { return worker_; }

 private:
  void Loop() {
    while (!stop_) {
      std::deque<std::function<void()>> work;
      {
        absl::MutexLock l(&mu_);
        work.swap(queue_);
      }
      for (auto& fn : work) fn();
      if (stop_) break;
      while (ucp_worker_progress(worker_) != 0) {
      }
      if (on_tick_) on_tick_();
      {
        absl::MutexLock l(&mu_);
        if (!queue_.empty()) continue;
      }
      if (ucp_worker_arm(worker_) == UCS_ERR_BUSY) continue;
      pollfd fds[2] = {{worker_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      poll(fds, 2, 100);
      uint64_t v;
      [[maybe_unused]] ssize_t n = read(wake_fd_, &v, sizeof(v));
    }
  }

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int worker_fd_ = -1;
  int wake_fd_ = -1;
  std::thread thread_;
  bool stop_ = false;  // progress thread only
  std::function<void()> on_tick_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
};

// Closes an endpoint, progressing the worker (bounded) until the close completes. `force`:
// cancel what is in flight without telling the peer; else flush it and disconnect.
void CloseEp(ucp_worker_h worker, ucp_ep_h ep, bool force) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
  if (req != nullptr && UCS_PTR_IS_PTR(req)) {
    for (int i = 0; i < 100000 && ucp_request_check_status(req) == UCS_INPROGRESS; ++i) {
      ucp_worker_progress(worker);
    }
    ucp_request_free(req);
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Server

absl::Status UcxServerOptions::Validate() const {
  if (absl::StatusOr<sockaddr_in> a = ParseHostPort(listen); !a.ok()) return a.status();
  if (max_inflight_bytes < (1u << 20)) {
    return absl::InvalidArgumentError("max_inflight_bytes must be at least 1 MiB");
  }
  if (token_ttl <= absl::ZeroDuration()) return absl::InvalidArgumentError("token_ttl <= 0");
  if (read_threads < 1 || read_threads > 256) {
    return absl::InvalidArgumentError("read_threads must be in [1, 256]");
  }
  if (max_reads_per_session < 1) return absl::InvalidArgumentError("max_reads_per_session < 1");
  return absl::OkStatus();
}

struct UcxServer::Impl {
  struct PendingFetch {
    uint64_t request_id;
    BlockKey key;
  };
  struct Endpoint {
    uint64_t id = 0;  // unique for the server's life (a ucp_ep_h may be reused once closed)
    bool authenticated = false;
    bool closing = false;
    absl::Time created;
    uint64_t inflight_bytes = 0;
    uint32_t reading = 0;  // fetches whose store read runs on a reader thread
    std::deque<PendingFetch> queued;
  };
  // One reply (all segments of one fetch) in flight; freed when its last send completes.
  struct Reply {
    Impl* impl;
    ucp_ep_h ep;
    BlockBytes block;
    std::vector<DataHeader> headers;
    int remaining = 0;
    uint64_t bytes = 0;
  };

  // After a failed Start (the progress thread never ran) release what was created; after
  // ~UcxServer these are already gone.
  ~Impl() {
    if (listener != nullptr) ucp_listener_destroy(listener);
    for (auto& [span, memh] : regions) ucp_mem_unmap(loop.context(), memh);
  }

  UcxServerOptions options;
  BlockStore* store = nullptr;
  CacheServiceObserver* observer = nullptr;
  WorkerLoop loop;
  ucp_listener_h listener = nullptr;
  std::string address;
  std::vector<std::pair<absl::Span<const uint8_t>, ucp_mem_h>> regions;
  // Store reads (RocksDB may block on disk), so one slow read never stalls the progress thread
  // and every other transfer. Created last in Start, destroyed first in ~UcxServer.
  std::unique_ptr<BlockingExecutor> readers;
  // Progress thread only.
  absl::flat_hash_map<ucp_ep_h, Endpoint> eps;
  uint64_t next_ep_id = 1;
  absl::Time last_sweep = absl::InfinitePast();
  bool stopping = false;  // ~UcxServer began: endpoints are gone, the reader pool is going

  std::unique_ptr<SessionTokens> tokens;  // created in Start (the ttl is an option)
  mutable absl::Mutex mu;
  int authenticated ABSL_GUARDED_BY(mu) = 0;

  static void OnConnect(ucp_conn_request_h request, void* arg) {
    Impl* self = static_cast<Impl*>(arg);
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                   UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.conn_request = request;
    p.err_mode =
        self->options.peer_error_handling ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    p.err_handler.cb = &Impl::OnEpError;
    p.err_handler.arg = self;
    ucp_ep_h ep = nullptr;
    if (ucp_ep_create(self->loop.worker(), &p, &ep) != UCS_OK) return;
    Endpoint& e = self->eps[ep];
    e.created = absl::Now();
    e.id = self->next_ep_id++;
  }

  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    Impl* self = static_cast<Impl*>(arg);
    auto it = self->eps.find(ep);
    if (it == self->eps.end()) return;
    it->second.closing = true;  // closed by the next sweep (not from inside a callback)
  }

  void DropEp(ucp_ep_h ep) {
    auto it = eps.find(ep);
    if (it == eps.end()) return;
    if (it->second.authenticated) {
      absl::MutexLock l(&mu);
      --authenticated;
    }
    eps.erase(it);
    CloseEp(loop.worker(), ep, /*force=*/true);
  }

  void Sweep() {
    const absl::Time now = absl::Now();
    if (now - last_sweep < absl::Milliseconds(100)) return;
    last_sweep = now;
    std::vector<ucp_ep_h> drop;
    for (auto& [ep, e] : eps) {
      // Closing endpoints go once their replies are done; unauthenticated ones after 10 s.
      if ((e.closing && e.inflight_bytes == 0) ||
          (!e.authenticated && now - e.created > absl::Seconds(10))) {
        drop.push_back(ep);
      }
    }
    for (ucp_ep_h ep : drop) DropEp(ep);
    tokens->Sweep();
  }

  static ucs_status_t OnHello(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param) {
    Impl* self = static_cast<Impl*>(arg);
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) || param->reply_ep == nullptr) {
      return UCS_OK;
    }
    ucp_ep_h ep = param->reply_ep;
    auto it = self->eps.find(ep);
    HelloAckHeader ack{0, static_cast<int32_t>(absl::StatusCode::kUnauthenticated), 0};
    if (header_length == sizeof(HelloHeader) && it != self->eps.end()) {
      HelloHeader h;
      std::memcpy(&h, header, sizeof(h));
      ack.hello_id = h.hello_id;
      const bool valid = self->tokens->Redeem(
          std::string_view(reinterpret_cast<const char*>(h.token), kTokenBytes));
      if (valid) {
        if (!it->second.authenticated) {
          absl::MutexLock l(&self->mu);
          ++self->authenticated;
        }
        it->second.authenticated = true;
        ack.code = 0;
      }
    }
    self->SendSmall(ep, kAmHelloAck, &ack, sizeof(ack));
    if (ack.code != 0 && it != self->eps.end()) it->second.closing = true;
    return UCS_OK;
  }

  // Sends a header-only message; the header is copied into the request's lifetime.
  void SendSmall(ucp_ep_h ep, uint32_t id, const void* header, size_t n) {
    auto* copy = new std::vector<uint8_t>(static_cast<const uint8_t*>(header),
                                          static_cast<const uint8_t*>(header) + n);
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = [](void* req, ucs_status_t, void* user) {
      delete static_cast<std::vector<uint8_t>*>(user);
      ucp_request_free(req);
    };
    p.user_data = copy;
    ucs_status_ptr_t r = ucp_am_send_nbx(ep, id, copy->data(), n, nullptr, 0, &p);
    if (r == nullptr || UCS_PTR_IS_ERR(r)) delete copy;
  }

  static ucs_status_t OnFetch(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param) {
    Impl* self = static_cast<Impl*>(arg);
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) || param->reply_ep == nullptr ||
        header_length != sizeof(FetchHeader)) {
      return UCS_OK;
    }
    FetchHeader h;
    std::memcpy(&h, header, sizeof(h));
    ucp_ep_h ep = param->reply_ep;
    auto it = self->eps.find(ep);
    // An endpoint this server dropped (it is closing, or the server is stopping) gets no
    // answer: its client sees the disconnect (UNAVAILABLE), not a refusal.
    if (it == self->eps.end() || self->stopping) return UCS_OK;
    if (!it->second.authenticated) {
      DataHeader err{h.request_id, 0, 0, static_cast<int32_t>(absl::StatusCode::kUnauthenticated),
                     0};
      self->SendSmall(ep, kAmData, &err, sizeof(err));
      it->second.closing = true;
      return UCS_OK;
    }
    Endpoint& e = it->second;
    if (!self->HasRoom(e) || !e.queued.empty()) {
      e.queued.push_back({h.request_id, BlockKey{h.key_hi, h.key_lo}});
      return UCS_OK;
    }
    self->Serve(ep, e, h.request_id, BlockKey{h.key_hi, h.key_lo});
    return UCS_OK;
  }

  bool HasRoom(const Endpoint& e) const {
    return e.inflight_bytes < options.max_inflight_bytes &&
           e.reading < options.max_reads_per_session;
  }

  ucp_mem_h MemhFor(const uint8_t* p, size_t n) const {
    for (const auto& [span, memh] : regions) {
      if (p >= span.data() && p + n <= span.data() + span.size()) return memh;
    }
    return nullptr;
  }

  // Reads the block on a reader thread, then replies from the progress thread.
  void Serve(ucp_ep_h ep, Endpoint& e, uint64_t request_id, const BlockKey& key) {
    ++e.reading;
    readers->Run([this, ep, ep_id = e.id, request_id, key] {
      absl::StatusOr<BlockBytes> block = store->Get(key);
      if (observer != nullptr && (block.ok() || absl::IsNotFound(block.status()))) {
        observer->OnGet(block.ok() ? block->tier : StoreTier::kNone);
      }
      loop.Post([this, ep, ep_id, request_id, block = std::move(block)]() mutable {
        OnRead(ep, ep_id, request_id, std::move(block));
      });
    });
  }

  void OnRead(ucp_ep_h ep, uint64_t ep_id, uint64_t request_id, absl::StatusOr<BlockBytes> block) {
    auto it = eps.find(ep);
    if (it == eps.end() || it->second.id != ep_id) return;  // the endpoint went meanwhile
    Endpoint& e = it->second;
    --e.reading;
    if (!e.closing) Send(ep, e, request_id, std::move(block));
    ServeQueued(ep);
  }

  // Sends a fetch's reply: an error, or the payload segment by segment, zero-copy.
  void Send(ucp_ep_h ep, Endpoint& e, uint64_t request_id, absl::StatusOr<BlockBytes> block) {
    if (!block.ok()) {
      DataHeader err{request_id, 0, 0, static_cast<int32_t>(block.status().code()), 0};
      SendSmall(ep, kAmData, &err, sizeof(err));
      return;
    }
    auto* reply = new Reply{this, ep, *std::move(block), {}, 0, 0};
    const absl::Span<const uint8_t> bytes = reply->block.bytes;
    // Segments: the header, then one per layer (layer-major payload), so a client can use
    // layer 0 while later layers are in flight.
    std::vector<std::pair<uint64_t, uint64_t>> segments;
    absl::StatusOr<BlockHeader> bh = DecodeHeader(bytes.subspan(0, kBlockHeaderBytes));
    if (bh.ok() && PayloadBytes(bh->meta) == bytes.size()) {
      segments.emplace_back(0, kBlockHeaderBytes);
      // Whole layers per segment, small layers grouped up to min_segment_bytes (each segment
      // costs a rendezvous round trip).
      const uint64_t layer = LayerBytes(bh->meta);
      const uint32_t group = static_cast<uint32_t>(std::clamp<uint64_t>(
          options.min_segment_bytes / std::max<uint64_t>(layer, 1), 1, bh->meta.num_layers));
      for (uint32_t l = 0; l < bh->meta.num_layers; l += group) {
        const uint32_t n = std::min(group, bh->meta.num_layers - l);
        segments.emplace_back(kBlockHeaderBytes + l * layer, n * layer);
      }
    } else {
      segments.emplace_back(0, bytes.size());
    }
    reply->headers.resize(segments.size());
    reply->remaining = static_cast<int>(segments.size());
    reply->bytes = bytes.size();
    e.inflight_bytes += bytes.size();
    if (observer != nullptr) observer->OnBytes("ucx", "out", bytes.size());
    for (size_t i = 0; i < segments.size(); ++i) {
      DataHeader& dh = reply->headers[i];
      dh = {request_id, segments[i].first, bytes.size(), 0, 0};
      const uint8_t* p = bytes.data() + segments[i].first;
      ucp_request_param_t prm{};
      prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      prm.cb.send = [](void* req, ucs_status_t, void* user) {
        static_cast<Reply*>(user)->impl->SegmentDone(static_cast<Reply*>(user));
        ucp_request_free(req);
      };
      prm.user_data = reply;
      if (ucp_mem_h memh = MemhFor(p, segments[i].second); memh != nullptr) {
        prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        prm.memh = memh;
      }
      ucs_status_ptr_t r =
          ucp_am_send_nbx(ep, kAmData, &dh, sizeof(dh), p, segments[i].second, &prm);
      if (r == nullptr || UCS_PTR_IS_ERR(r)) SegmentDone(reply);
    }
  }

  void SegmentDone(Reply* reply) {
    if (--reply->remaining > 0) return;
    auto it = eps.find(reply->ep);
    if (it != eps.end()) {
      Endpoint& e = it->second;
      e.inflight_bytes -= reply->bytes;
      // Serve queued fetches now that there is room (posted: not from inside a callback chain).
      if (!e.queued.empty()) {
        ucp_ep_h ep = reply->ep;
        loop.Post([this, ep] { ServeQueued(ep); });
      }
    }
    delete reply;
  }

  void ServeQueued(ucp_ep_h ep) {
    auto it = eps.find(ep);
    if (it == eps.end()) return;
    Endpoint& e = it->second;
    while (!e.queued.empty() && HasRoom(e) && !e.closing) {
      PendingFetch f = e.queued.front();
      e.queued.pop_front();
      Serve(ep, e, f.request_id, f.key);
    }
  }
};

absl::StatusOr<std::unique_ptr<UcxServer>> UcxServer::Start(UcxServerOptions options,
                                                            BlockStore* store,
                                                            CacheServiceObserver* observer) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->tokens = std::make_unique<SessionTokens>(impl->options.token_ttl);
  impl->store = store;
  impl->observer = observer;
  Impl* raw = impl.get();
  // A restarted node must bind its data-plane port again even while connections of the killed
  // process linger in TIME_WAIT. UCX reads this only from the environment; an operator's own
  // setting wins.
  setenv("UCX_TCP_CM_REUSEADDR", "y", /*overwrite=*/0);
  if (absl::Status s = impl->loop.Init([raw] { raw->Sweep(); }); !s.ok()) return s;
  ucp_worker_h worker = impl->loop.worker();

  for (const auto& region : impl->options.registered_regions) {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = const_cast<uint8_t*>(region.data());
    mp.length = region.size();
    ucp_mem_h memh = nullptr;
    if (auto s = FromUcs(ucp_mem_map(impl->loop.context(), &mp, &memh), "ucp_mem_map"); !s.ok()) {
      return s;
    }
    impl->regions.emplace_back(region, memh);
  }

  if (auto s = SetAmHandler(worker, kAmHello, &Impl::OnHello, raw); !s.ok()) return s;
  if (auto s = SetAmHandler(worker, kAmFetch, &Impl::OnFetch, raw); !s.ok()) return s;

  absl::StatusOr<sockaddr_in> sa = ParseHostPort(impl->options.listen);
  if (!sa.ok()) return sa.status();
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&*sa);
  lp.sockaddr.addrlen = sizeof(*sa);
  lp.conn_handler.cb = &Impl::OnConnect;
  lp.conn_handler.arg = raw;
  if (auto s = FromUcs(ucp_listener_create(worker, &lp, &impl->listener),
                       absl::StrCat("UCX listen on ", impl->options.listen));
      !s.ok()) {
    return s;
  }
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  if (auto s = FromUcs(ucp_listener_query(impl->listener, &la), "ucp_listener_query"); !s.ok()) {
    return s;
  }
  const int port = ntohs(reinterpret_cast<const sockaddr_in*>(&la.sockaddr)->sin_port);
  std::vector<std::string> parts = absl::StrSplit(impl->options.listen, ':');
  std::string host = impl->options.advertise_host.empty() ? parts[0] : impl->options.advertise_host;
  if (host == "0.0.0.0") host = "127.0.0.1";
  impl->address = absl::StrCat(host, ":", port);
  impl->readers = std::make_unique<BlockingExecutor>(impl->options.read_threads);
  impl->loop.StartThread();
  return std::unique_ptr<UcxServer>(new UcxServer(std::move(impl)));
}

UcxServer::UcxServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UcxServer::~UcxServer() {
  Impl* impl = impl_.get();
  // Close the listener and every endpoint first, so no fetch reaches the reader pool once it is
  // gone; then finish the reads in progress (their replies find no endpoint) and stop.
  impl->loop.Run([impl] {
    impl->stopping = true;
    if (impl->listener != nullptr) ucp_listener_destroy(impl->listener);
    impl->listener = nullptr;
    std::vector<ucp_ep_h> all;
    for (auto& [ep, e] : impl->eps) all.push_back(ep);
    for (ucp_ep_h ep : all) impl->DropEp(ep);
  });
  impl->readers.reset();
  impl->loop.Stop([impl] {
    for (auto& [span, memh] : impl->regions) ucp_mem_unmap(impl->loop.context(), memh);
    impl->regions.clear();
  });
}

const std::string& UcxServer::address() const { return impl_->address; }

absl::StatusOr<v1::OpenDataPlaneResponse> UcxServer::OpenSession(
    std::string_view client_worker_address) {
  absl::StatusOr<std::string> token = impl_->tokens->Mint();
  if (!token.ok()) return token.status();
  v1::OpenDataPlaneResponse r;
  r.set_listener_address(impl_->address);
  r.set_session_token(*std::move(token));
  r.set_max_inflight_bytes(
      static_cast<uint32_t>(std::min<uint64_t>(impl_->options.max_inflight_bytes, UINT32_MAX)));
  return r;
}

int UcxServer::authenticated_sessions() const {
  absl::MutexLock l(&impl_->mu);
  return impl_->authenticated;
}

// ------------------------------------------------------------------------------------------------
// Client

absl::Status UcxClientOptions::Validate() const {
  if (max_sessions < 1) return absl::InvalidArgumentError("max_sessions must be >= 1");
  if (lanes < 1 || lanes > kMaxLanes) {
    return absl::InvalidArgumentError(absl::StrCat("lanes must be in [1, ", kMaxLanes, "]"));
  }
  return absl::OkStatus();
}

struct UcxClient::Impl {
  struct Lane;
  // One session's endpoint on one lane.
  struct Endpoint {
    Lane* lane;
    int session;
    ucp_ep_h ep = nullptr;
    bool broken = false;
  };
  struct Request {
    absl::Span<uint8_t> buffer;
    int session;
    uint64_t total = 0;
    bool have_total = false;
    uint64_t received = 0;
    int outstanding = 0;  // rendezvous receives in progress into `buffer`
    absl::Status status;
    bool finished = false;  // status set; waiting for outstanding receives
    absl::Notification* done;
    absl::Status* result;
    uint64_t* size;
  };
  struct Hello {
    absl::Notification* done;
    int32_t* code;
  };

  // A ucp worker with its progress thread and its endpoints, one per session. Everything below
  // `loop` belongs to the lane's progress thread, except the two counters.
  struct Lane {
    const UcxClientOptions* options;
    WorkerLoop loop;
    std::string worker_address;
    // Buffer bytes of the fetches in progress on this lane (the lane choice reads it).
    std::atomic<uint64_t> outstanding_bytes{0};
    // Fetches routed to this lane since Create.
    std::atomic<uint64_t> fetches{0};
    absl::flat_hash_map<int, std::unique_ptr<Endpoint>> endpoints;
    absl::flat_hash_map<uint64_t, Request> requests;
    absl::flat_hash_map<uint64_t, Hello> hellos;
    uint64_t next_id = 1;

    static void OnEpError(void* arg, ucp_ep_h, ucs_status_t status) {
      Endpoint* e = static_cast<Endpoint*>(arg);
      e->broken = true;
      e->lane->FailSession(e->session, absl::UnavailableError(absl::StrCat(
                                           "UCX session broke: ", ucs_status_string(status))));
    }

    void FailSession(int session, const absl::Status& status) {
      std::vector<uint64_t> done;
      for (auto& [rid, r] : requests) {
        if (r.session != session) continue;
        if (!r.finished) {
          r.finished = true;
          r.status = status;
        }
        if (r.outstanding == 0) done.push_back(rid);
      }
      for (uint64_t rid : done) Complete(rid);
    }

    // Fails the session's requests with `status` and closes its endpoint on this lane. While a
    // receive into a caller's buffer is in progress the close is forced, which cancels it, so
    // nothing is written into a buffer after its fetch returned. Otherwise the close flushes,
    // which tells the node (a forced close goes unnoticed there without peer error handling,
    // and the node would keep the session).
    void CloseEndpoint(int session, const absl::Status& status) {
      auto it = endpoints.find(session);
      if (it == endpoints.end()) return;
      Endpoint& e = *it->second;
      const bool receiving = absl::c_any_of(requests, [&](const auto& kv) {
        return kv.second.session == session && kv.second.outstanding > 0;
      });
      FailSession(session, status);
      if (e.ep != nullptr) CloseEp(loop.worker(), e.ep, /*force=*/receiving);
      e.ep = nullptr;
      e.broken = true;
    }

    void Complete(uint64_t rid) {
      auto it = requests.find(rid);
      if (it == requests.end()) return;
      Request& r = it->second;
      *r.result = r.status;
      *r.size = r.total;
      absl::Notification* n = r.done;
      requests.erase(it);
      n->Notify();
    }

    // A request may complete once it has an outcome and no receive still writes into its buffer.
    void MaybeComplete(uint64_t rid) {
      auto it = requests.find(rid);
      if (it == requests.end()) return;
      Request& r = it->second;
      if (!r.finished && r.have_total && r.received == r.total) r.finished = true;
      if (r.finished && r.outstanding == 0) Complete(rid);
    }

    static ucs_status_t OnHelloAck(void* arg, const void* header, size_t header_length, void*,
                                   size_t, const ucp_am_recv_param_t*) {
      Lane* self = static_cast<Lane*>(arg);
      if (header_length != sizeof(HelloAckHeader)) return UCS_OK;
      HelloAckHeader h;
      std::memcpy(&h, header, sizeof(h));
      auto it = self->hellos.find(h.hello_id);
      if (it == self->hellos.end()) return UCS_OK;
      *it->second.code = h.code;
      it->second.done->Notify();
      self->hellos.erase(it);
      return UCS_OK;
    }

    static ucs_status_t OnData(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t* param) {
      Lane* self = static_cast<Lane*>(arg);
      if (header_length != sizeof(DataHeader)) return UCS_OK;
      DataHeader h;
      std::memcpy(&h, header, sizeof(h));
      auto it = self->requests.find(h.request_id);
      if (it == self->requests.end() || it->second.finished) return UCS_OK;  // dropped
      Request& r = it->second;
      if (h.code != 0) {
        r.finished = true;
        r.status = absl::Status(static_cast<absl::StatusCode>(h.code),
                                h.code == static_cast<int32_t>(absl::StatusCode::kNotFound)
                                    ? "block is not on this node"
                                    : "data-plane fetch refused by the node");
        self->MaybeComplete(h.request_id);
        return UCS_OK;
      }
      if (!r.have_total) {
        r.have_total = true;
        r.total = h.total;
        if (h.total > r.buffer.size()) {
          r.finished = true;
          r.status = absl::OutOfRangeError(
              absl::StrCat("block is ", h.total, " bytes; the buffer holds ", r.buffer.size()));
          self->MaybeComplete(h.request_id);
          return UCS_OK;
        }
      }
      if (h.total != r.total || h.offset > r.total || length > r.total - h.offset) {
        r.finished = true;
        r.status = absl::InternalError("data-plane segment outside the payload");
        self->MaybeComplete(h.request_id);
        return UCS_OK;
      }
      uint8_t* dst = r.buffer.data() + h.offset;
      if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        ucp_request_param_t p{};
        p.op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        struct Ctx {
          Lane* lane;
          uint64_t rid;
          size_t length;
        };
        auto* ctx = new Ctx{self, h.request_id, length};
        p.cb.recv_am = [](void* req, ucs_status_t status, size_t, void* user) {
          Ctx* c = static_cast<Ctx*>(user);
          c->lane->RecvDone(c->rid, status, c->length);
          delete c;
          ucp_request_free(req);
        };
        p.user_data = ctx;
        ++r.outstanding;
        ucs_status_ptr_t req = ucp_am_recv_data_nbx(self->loop.worker(), data, dst, length, &p);
        if (UCS_PTR_IS_ERR(req)) {
          delete ctx;
          self->RecvDone(h.request_id, UCS_PTR_STATUS(req), length);
        }
        return UCS_OK;
      }
      std::memcpy(dst, data, length);
      r.received += length;
      self->MaybeComplete(h.request_id);
      return UCS_OK;
    }

    void RecvDone(uint64_t rid, ucs_status_t status, size_t length) {
      auto it = requests.find(rid);
      if (it == requests.end()) return;
      Request& r = it->second;
      --r.outstanding;
      if (status != UCS_OK) {
        if (!r.finished) {
          r.finished = true;
          r.status = FromUcs(status, "UCX receive");
        }
      } else {
        r.received += length;
      }
      MaybeComplete(rid);
    }

    bool SendSmall(ucp_ep_h ep, uint32_t id, const void* header, size_t n) {
      auto* copy = new std::vector<uint8_t>(static_cast<const uint8_t*>(header),
                                            static_cast<const uint8_t*>(header) + n);
      ucp_request_param_t p{};
      p.op_attr_mask =
          UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_AM_SEND_FLAG_REPLY;
      p.cb.send = [](void* req, ucs_status_t, void* user) {
        delete static_cast<std::vector<uint8_t>*>(user);
        ucp_request_free(req);
      };
      p.user_data = copy;
      ucs_status_ptr_t r = ucp_am_send_nbx(ep, id, copy->data(), n, nullptr, 0, &p);
      if (r == nullptr || UCS_PTR_IS_ERR(r)) {
        delete copy;
        return !UCS_PTR_IS_ERR(r);
      }
      return true;
    }

    // Progress thread: creates the session's endpoint on this lane and sends the hello;
    // `done` is notified with `*code` set when the node answers.
    absl::Status Open(int session, const sockaddr_in& sa, const std::string& token,
                      absl::Notification* done, int32_t* code, uint64_t* hello_id) {
      auto e = std::make_unique<Endpoint>();
      e->lane = this;
      e->session = session;
      ucp_ep_params_t p{};
      p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                     UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
      p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
      p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&sa);
      p.sockaddr.addrlen = sizeof(sa);
      p.err_mode =
          options->peer_error_handling ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
      p.err_handler.cb = &Lane::OnEpError;
      p.err_handler.arg = e.get();
      if (absl::Status s = FromUcs(ucp_ep_create(loop.worker(), &p, &e->ep), "UCX connect");
          !s.ok()) {
        return s;
      }
      HelloHeader h{};
      *hello_id = next_id++;
      h.hello_id = *hello_id;
      std::memcpy(h.token, token.data(), kTokenBytes);
      hellos[*hello_id] = {done, code};
      ucp_ep_h ep = e->ep;
      endpoints[session] = std::move(e);
      if (!SendSmall(ep, kAmHello, &h, sizeof(h))) {
        return absl::UnavailableError("UCX hello send failed");
      }
      return absl::OkStatus();
    }

    absl::StatusOr<uint64_t> Fetch(int session, const BlockKey& key, absl::Span<uint8_t> buffer,
                                   absl::Duration timeout) {
      absl::Notification done;
      absl::Status result;
      uint64_t size = 0;
      uint64_t rid = 0;
      loop.Post([&] {
        auto it = endpoints.find(session);
        if (it == endpoints.end() || it->second->ep == nullptr || it->second->broken) {
          result = absl::UnavailableError("no such UCX session (closed or broken)");
          done.Notify();
          return;
        }
        rid = next_id++;
        Request& r = requests[rid];
        r.buffer = buffer;
        r.session = session;
        r.done = &done;
        r.result = &result;
        r.size = &size;
        FetchHeader h{rid, key.hi, key.lo};
        if (!SendSmall(it->second->ep, kAmFetch, &h, sizeof(h))) {
          r.finished = true;
          r.status = absl::UnavailableError("UCX fetch send failed");
          MaybeComplete(rid);
        }
      });
      if (!done.WaitForNotificationWithTimeout(timeout)) {
        // Close the session's endpoint on this lane so no receive writes into the buffer after
        // we return, then wait for the request to be completed (the close fails every receive
        // in progress). The session's other lanes keep their fetches.
        loop.Post([this, session] {
          CloseEndpoint(session, absl::DeadlineExceededError("UCX fetch timed out"));
        });
        if (!done.WaitForNotificationWithTimeout(absl::Seconds(10))) {
          // The forced close should have failed every receive; if one is still pending, forget
          // the request so a late completion finds nothing to write.
          loop.Run([this, &rid] { requests.erase(rid); });
          return absl::DeadlineExceededError("UCX fetch timed out");
        }
      }
      if (!result.ok()) return result;
      return size;
    }
  };

  UcxClientOptions options;
  std::vector<std::unique_ptr<Lane>> lanes;
  absl::Mutex mu;
  int next_session ABSL_GUARDED_BY(mu) = 0;
  // Serializes lane choices, so fetches that start together see each other's bytes.
  absl::Mutex pick_mu;

  // Takes the lane with the fewest outstanding bytes (ties: the lowest index, so a client that
  // fetches one block at a time keeps using one lane and its warm thread) and adds `bytes` to
  // them; the caller subtracts them when its fetch is done.
  Lane& PickLane(uint64_t bytes) {
    absl::MutexLock l(&pick_mu);
    Lane* best = lanes[0].get();
    uint64_t best_bytes = best->outstanding_bytes.load(std::memory_order_relaxed);
    for (size_t i = 1; i < lanes.size() && best_bytes > 0; ++i) {
      const uint64_t b = lanes[i]->outstanding_bytes.load(std::memory_order_relaxed);
      if (b < best_bytes) {
        best = lanes[i].get();
        best_bytes = b;
      }
    }
    best->outstanding_bytes.fetch_add(bytes, std::memory_order_relaxed);
    best->fetches.fetch_add(1, std::memory_order_relaxed);
    return *best;
  }
};

absl::StatusOr<std::unique_ptr<UcxClient>> UcxClient::Create(UcxClientOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  for (uint32_t i = 0; i < options.lanes; ++i) {
    auto lane = std::make_unique<Impl::Lane>();
    lane->options = &impl->options;
    if (absl::Status s = lane->loop.Init(nullptr); !s.ok()) return s;
    ucp_worker_h worker = lane->loop.worker();
    if (auto s = SetAmHandler(worker, kAmHelloAck, &Impl::Lane::OnHelloAck, lane.get()); !s.ok())
      return s;
    if (auto s = SetAmHandler(worker, kAmData, &Impl::Lane::OnData, lane.get()); !s.ok()) return s;
    ucp_address_t* addr = nullptr;
    size_t len = 0;
    if (auto s = FromUcs(ucp_worker_get_address(worker, &addr, &len), "ucp_worker_get_address");
        !s.ok()) {
      return s;
    }
    lane->worker_address.assign(reinterpret_cast<const char*>(addr), len);
    ucp_worker_release_address(worker, addr);
    impl->lanes.push_back(std::move(lane));
  }
  for (auto& lane : impl->lanes) lane->loop.StartThread();
  return std::unique_ptr<UcxClient>(new UcxClient(std::move(impl)));
}

UcxClient::UcxClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UcxClient::~UcxClient() {
  for (auto& lane : impl_->lanes) {
    Impl::Lane* l = lane.get();
    l->loop.Stop([l] {
      std::vector<int> sessions;
      for (auto& [id, e] : l->endpoints) sessions.push_back(id);
      for (int id : sessions) {
        l->CloseEndpoint(id, absl::UnavailableError("UCX client shutting down"));
      }
    });
  }
}

int UcxClient::lanes() const { return static_cast<int>(impl_->lanes.size()); }

std::string UcxClient::WorkerAddress(int lane) const {
  return impl_->lanes.at(lane)->worker_address;
}

std::vector<uint64_t> UcxClient::FetchesPerLane() const {
  std::vector<uint64_t> out;
  for (const auto& lane : impl_->lanes) out.push_back(lane->fetches.load());
  return out;
}

absl::StatusOr<int> UcxClient::Connect(absl::Span<const SessionTicket> tickets,
                                       absl::Duration timeout) {
  Impl* impl = impl_.get();
  const size_t n = impl->lanes.size();
  if (tickets.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("a session needs one ticket per lane: ", n,
                                                   " lanes, ", tickets.size(), " tickets"));
  }
  std::vector<sockaddr_in> addresses;
  for (const SessionTicket& t : tickets) {
    if (t.token.size() != kTokenBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("session token must be ", kTokenBytes, " bytes"));
    }
    absl::StatusOr<sockaddr_in> sa = ParseHostPort(t.listener_address);
    if (!sa.ok()) return sa.status();
    addresses.push_back(*sa);
  }
  int id = 0;
  {
    absl::MutexLock l(&impl->mu);
    if (impl->next_session >= static_cast<int64_t>(impl->options.max_sessions)) {
      return absl::ResourceExhaustedError("too many UCX sessions");
    }
    id = impl->next_session++;
  }
  // Every lane dials and presents its token at once; then the answers are awaited together.
  struct Handshake {
    absl::Notification acked;
    int32_t code = static_cast<int32_t>(absl::StatusCode::kUnavailable);
    uint64_t hello_id = 0;
    absl::Status status;
  };
  auto hs = std::make_unique<Handshake[]>(n);
  for (size_t i = 0; i < n; ++i) {
    Impl::Lane& lane = *impl->lanes[i];
    lane.loop.Run([&, i] {
      hs[i].status =
          lane.Open(id, addresses[i], tickets[i].token, &hs[i].acked, &hs[i].code, &hs[i].hello_id);
    });
  }
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status status;
  for (size_t i = 0; i < n && status.ok(); ++i) {
    if (!hs[i].status.ok()) {
      status = absl::Status(
          hs[i].status.code(),
          absl::StrCat(tickets[i].listener_address, " (lane ", i, "): ", hs[i].status.message()));
    } else if (!hs[i].acked.WaitForNotificationWithDeadline(deadline)) {
      status = absl::DeadlineExceededError("UCX session handshake timed out");
    } else if (hs[i].code != 0) {
      status = absl::Status(
          static_cast<absl::StatusCode>(hs[i].code),
          absl::StrCat("the node refused the data-plane session token (lane ", i, ")"));
    }
  }
  if (!status.ok()) {
    for (size_t i = 0; i < n; ++i) {
      Impl::Lane& lane = *impl->lanes[i];
      lane.loop.Run([&, i] { lane.hellos.erase(hs[i].hello_id); });
    }
    Close(id);
    return status;
  }
  return id;
}

absl::StatusOr<uint64_t> UcxClient::Fetch(int session, const BlockKey& key,
                                          absl::Span<uint8_t> buffer, absl::Duration timeout) {
  Impl::Lane& lane = impl_->PickLane(buffer.size());
  absl::StatusOr<uint64_t> n = lane.Fetch(session, key, buffer, timeout);
  lane.outstanding_bytes.fetch_sub(buffer.size(), std::memory_order_relaxed);
  return n;
}

void UcxClient::Close(int session) {
  for (auto& lane : impl_->lanes) {
    Impl::Lane* l = lane.get();
    l->loop.Run(
        [l, session] { l->CloseEndpoint(session, absl::UnavailableError("UCX session closed")); });
  }
}

}  // namespace kvblock
