#include "services/cache_client.h"

#include <algorithm>
#include <cstring>
#include <future>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "cache/block_payload.h"
#include "grpcpp/grpcpp.h"
#include "services/auth.h"
#include "services/client_credentials.h"
#include "services/grpc_status.h"
#include "services/proto_convert.h"
#include "services/shm_data_plane.h"
#include "services/ucx_data_plane.h"

namespace kvblock {
namespace {
// The largest payload a node may announce; anything larger is a broken or hostile node.
constexpr uint64_t kMaxAnnouncedBytes = uint64_t{4} << 30;
}  // namespace

bool IsNodeFailure(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
         absl::IsCancelled(status);
}

absl::Status CacheClientOptions::Validate() const {
  if (members.empty()) return absl::InvalidArgumentError("members is empty");
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i].empty()) return absl::InvalidArgumentError("a member address is empty");
    for (size_t j = 0; j < i; ++j) {
      if (members[i] == members[j]) {
        return absl::InvalidArgumentError(absl::StrCat("member ", members[i], " is listed twice"));
      }
    }
  }
  if (replication == 0 || replication > members.size()) {
    return absl::InvalidArgumentError(absl::StrCat("replication must be in [1, ", members.size(),
                                                   "] (the member count), got ", replication));
  }
  if (min_write_replicas == 0 || min_write_replicas > replication) {
    return absl::InvalidArgumentError("min_write_replicas must be in [1, replication]");
  }
  if (tls_client_cert_pem.empty() != tls_client_key_pem.empty()) {
    return absl::InvalidArgumentError("tls_client_cert_pem and tls_client_key_pem go together");
  }
  if (!use_tls && (!tls_root_ca_pem.empty() || !tls_client_cert_pem.empty())) {
    return absl::InvalidArgumentError("TLS material given but use_tls is false");
  }
  if (rpc_timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("rpc_timeout <= 0");
  if (max_attempts == 0) return absl::InvalidArgumentError("max_attempts must be >= 1");
  if (initial_backoff < absl::ZeroDuration() || max_backoff < initial_backoff) {
    return absl::InvalidArgumentError("need 0 <= initial_backoff <= max_backoff");
  }
  if (eject_duration <= absl::ZeroDuration() || max_eject_duration < eject_duration) {
    return absl::InvalidArgumentError("need 0 < eject_duration <= max_eject_duration");
  }
  if (channels_per_node == 0 || channels_per_node > 64) {
    return absl::InvalidArgumentError("channels_per_node must be in [1, 64]");
  }
  if (chunk_bytes < 4096 || chunk_bytes > (4u << 20) - (64u << 10)) {
    return absl::InvalidArgumentError("chunk_bytes must be in [4 KiB, 4 MiB - 64 KiB]");
  }
  if (max_keys_per_call == 0) return absl::InvalidArgumentError("max_keys_per_call must be >= 1");
  if (data_plane_lanes == 0 || data_plane_lanes > UcxClientOptions::kMaxLanes) {
    return absl::InvalidArgumentError(
        absl::StrCat("data_plane_lanes must be in [1, ", UcxClientOptions::kMaxLanes, "]"));
  }
  return absl::OkStatus();
}

struct CacheClient::Node {
  std::string address;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<v1::CacheService::Stub>> stubs;
  mutable std::atomic<uint32_t> next_stub{0};

  mutable absl::Mutex mu;
  absl::Time ejected_until ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  absl::Duration eject_for ABSL_GUARDED_BY(mu);
  bool ejected ABSL_GUARDED_BY(mu) = false;
  bool draining ABSL_GUARDED_BY(mu) = false;

  // UCX session (index in UcxClient), -1 when none.
  std::atomic<int> ucx_session{-1};
  // The node answered OpenDataPlane with FAILED_PRECONDITION (it runs without UCX).
  std::atomic<bool> no_data_plane{false};

  // Shared-memory session, null when none (shared: a reader keeps using the one it took).
  mutable absl::Mutex shm_mu;
  std::shared_ptr<ShmClient> shm ABSL_GUARDED_BY(shm_mu);
  // The node offers no shared memory, or its socket cannot be reached (another host).
  std::atomic<bool> no_shm{false};
};

CacheClient::CacheClient(CacheClientOptions options)
    : options_(std::move(options)), ring_(options_.members) {}

absl::StatusOr<std::unique_ptr<CacheClient>> CacheClient::Create(CacheClientOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<CacheClient> client(new CacheClient(std::move(options)));
  if (absl::Status s = client->Init(); !s.ok()) return s;
  return client;
}

absl::Status CacheClient::Init() {
  const std::shared_ptr<grpc::ChannelCredentials> creds =
      MakeChannelCredentials({.auth_token = options_.auth_token,
                              .use_tls = options_.use_tls,
                              .tls_root_ca_pem = options_.tls_root_ca_pem,
                              .tls_client_cert_pem = options_.tls_client_cert_pem,
                              .tls_client_key_pem = options_.tls_client_key_pem});
  for (const std::string& address : options_.members) {
    auto node = std::make_unique<Node>();
    node->address = address;
    {
      absl::MutexLock l(&node->mu);
      node->eject_for = options_.eject_duration;
    }
    for (uint32_t i = 0; i < options_.channels_per_node; ++i) {
      grpc::ChannelArguments args;
      // A distinct argument per channel keeps gRPC from sharing one connection (the pool).
      args.SetInt("kvblock.pool_index", static_cast<int>(i));
      args.SetMaxReceiveMessageSize(64 << 20);
      args.SetMaxSendMessageSize(64 << 20);
      // Reconnect quickly after a node restarts.
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
      auto channel = grpc::CreateCustomChannel(address, creds, args);
      node->stubs.push_back(v1::CacheService::NewStub(channel));
      node->channels.push_back(std::move(channel));
    }
    nodes_.push_back(std::move(node));
  }
  if (options_.use_data_plane) {
    UcxClientOptions ucx_options;
    ucx_options.lanes = options_.data_plane_lanes;
    absl::StatusOr<std::unique_ptr<UcxClient>> ucx = UcxClient::Create(ucx_options);
    // Without UCX the client still works over gRPC Get.
    if (ucx.ok()) ucx_ = *std::move(ucx);
  }
  OpenDataPlanes();
  prober_ = std::thread([this] { ProbeLoop(); });
  return absl::OkStatus();
}

CacheClient::~CacheClient() {
  stop_.Notify();
  if (prober_.joinable()) prober_.join();
  ucx_.reset();
}

v1::CacheService::Stub* CacheClient::StubFor(Node& node) const {
  // Round-robin over the pool, skipping connections that are backing off after a failure
  // (e.g. the node just restarted and only some connections are back); if all are, any.
  const uint32_t start = node.next_stub.fetch_add(1, std::memory_order_relaxed);
  const size_t n = node.stubs.size();
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (start + k) % n;
    if (node.channels[i]->GetState(/*try_to_connect=*/true) != GRPC_CHANNEL_TRANSIENT_FAILURE) {
      return node.stubs[i].get();
    }
  }
  return node.stubs[start % n].get();
}

void CacheClient::PrepareContext(grpc::ClientContext* ctx, absl::Time deadline) const {
  ctx->set_deadline(absl::ToChronoTime(deadline));
  if (!options_.auth_token.empty()) {
    ctx->AddMetadata(std::string(kAuthMetadataKey), BearerValue(options_.auth_token));
  }
}

void CacheClient::RecordResult(size_t index, const absl::Status& status) const {
  Node& node = *nodes_[index];
  absl::MutexLock l(&node.mu);
  if (IsNodeFailure(status)) {
    if (absl::IsUnavailable(status) &&
        status.message().find("draining") != absl::string_view::npos) {
      node.draining = true;  // still readable; the prober clears it after an undrain
      return;
    }
    if (!node.ejected) node.eject_for = options_.eject_duration;
    node.ejected = true;
    node.ejected_until = absl::Now() + node.eject_for;
  } else if (status.ok() || !IsNodeFailure(status)) {
    node.ejected = false;
    node.eject_for = options_.eject_duration;
  }
}

bool CacheClient::Usable(size_t index, bool for_write) const {
  Node& node = *nodes_[index];
  absl::MutexLock l(&node.mu);
  if (node.ejected) return false;
  return !(for_write && node.draining);
}

bool CacheClient::IsEjected(size_t index) const {
  Node& node = *nodes_[index];
  absl::MutexLock l(&node.mu);
  return node.ejected;
}

bool CacheClient::HasDataPlane(size_t index) const {
  return nodes_[index]->ucx_session.load() >= 0;
}

bool CacheClient::HasSharedMemory(size_t index) const {
  Node& node = *nodes_[index];
  absl::MutexLock l(&node.shm_mu);
  return node.shm != nullptr && node.shm->healthy();
}

std::vector<uint32_t> CacheClient::Candidates(const BlockKey& key, bool for_write) const {
  std::vector<uint32_t> ranked = ring_.Rank(key);
  std::stable_partition(ranked.begin(), ranked.end(),
                        [&](uint32_t n) { return Usable(n, for_write); });
  return ranked;
}

absl::Duration CacheClient::Backoff(uint32_t attempt) const {
  absl::Duration d = options_.initial_backoff;
  for (uint32_t i = 1; i < attempt && d < options_.max_backoff; ++i) d *= 2;
  d = std::min(d, options_.max_backoff);
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_real_distribution<double> jitter(0.5, 1.5);
  return d * jitter(rng);
}

// ---- per-node RPCs ----

absl::Status CacheClient::PutOnNode(size_t index, const BlockKey& key,
                                    absl::Span<const uint8_t> payload) {
  Node& node = *nodes_[index];
  grpc::ClientContext ctx;
  PrepareContext(&ctx, absl::Now() + options_.rpc_timeout);
  v1::PutResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::PutRequest>> writer =
      StubFor(node)->Put(&ctx, &response);
  v1::PutRequest msg;
  ToProto(key, msg.mutable_header()->mutable_key());
  msg.mutable_header()->set_payload_bytes(payload.size());
  bool ok = writer->Write(msg);
  for (size_t off = 0; ok && off < payload.size(); off += options_.chunk_bytes) {
    const size_t n = std::min<size_t>(options_.chunk_bytes, payload.size() - off);
    msg.set_chunk(reinterpret_cast<const char*>(payload.data() + off), n);
    ok = writer->Write(msg);
  }
  if (ok) writer->WritesDone();
  absl::Status s = FromGrpcStatus(writer->Finish());
  RecordResult(index, s);
  return s;
}

absl::StatusOr<uint64_t> CacheClient::GetOnNode(size_t index, const BlockKey& key,
                                                absl::Span<uint8_t> buffer,
                                                std::vector<uint8_t>* grow) {
  Node& node = *nodes_[index];
  if (grow == nullptr && ucx_ != nullptr) {
    const int session = node.ucx_session.load();
    if (session >= 0) {
      absl::StatusOr<uint64_t> n = ucx_->Fetch(session, key, buffer, options_.rpc_timeout);
      if (n.ok() || absl::IsNotFound(n.status()) || absl::IsOutOfRange(n.status())) {
        RecordResult(index, absl::OkStatus());
        return n;
      }
      // The session broke (node restarted, or it was refused): drop it and use gRPC; the
      // prober reopens it once the node answers again (unless another thread already has).
      ucx_->Close(session);
      int expected = session;
      node.ucx_session.compare_exchange_strong(expected, -1);
    }
  }
  grpc::ClientContext ctx;
  PrepareContext(&ctx, absl::Now() + options_.rpc_timeout);
  v1::GetRequest request;
  ToProto(key, request.mutable_key());
  std::unique_ptr<grpc::ClientReader<v1::GetResponse>> reader =
      StubFor(node)->Get(&ctx, request);
  v1::GetResponse msg;
  uint64_t expected = 0, received = 0;
  bool have_size = false;
  absl::Status local;
  while (reader->Read(&msg)) {
    if (msg.part_case() == v1::GetResponse::kPayloadBytes && !have_size) {
      have_size = true;
      expected = msg.payload_bytes();
      if (expected > kMaxAnnouncedBytes) {
        local = absl::InternalError(absl::StrCat(node.address, " announced a ", expected,
                                                 "-byte block"));
        ctx.TryCancel();
        break;
      }
      if (grow != nullptr) {
        grow->resize(expected);
        buffer = absl::MakeSpan(*grow);
      } else if (expected > buffer.size()) {
        local = absl::OutOfRangeError(absl::StrCat("block ", key.ToHex(), " is ", expected,
                                                   " bytes; the buffer holds ", buffer.size()));
        ctx.TryCancel();
        break;
      }
    } else if (msg.part_case() == v1::GetResponse::kChunk && have_size &&
               received + msg.chunk().size() <= expected) {
      std::memcpy(buffer.data() + received, msg.chunk().data(), msg.chunk().size());
      received += msg.chunk().size();
    } else {
      local = absl::InternalError("Get stream from " + node.address + " is malformed");
      ctx.TryCancel();
      break;
    }
  }
  absl::Status s = FromGrpcStatus(reader->Finish());
  if (!local.ok()) {
    RecordResult(index, absl::OkStatus());
    return local;
  }
  RecordResult(index, s);
  if (!s.ok()) return s;
  if (!have_size || received != expected) {
    return absl::InternalError(absl::StrCat("Get stream from ", node.address, " ended after ",
                                            received, " of ", expected, " bytes"));
  }
  return received;
}

absl::StatusOr<std::vector<v1::LookupResult>> CacheClient::LookupOnNode(
    size_t index, absl::Span<const BlockKey> keys) {
  Node& node = *nodes_[index];
  std::vector<v1::LookupResult> out;
  out.reserve(keys.size());
  for (size_t start = 0; start < keys.size(); start += options_.max_keys_per_call) {
    const size_t n = std::min<size_t>(options_.max_keys_per_call, keys.size() - start);
    v1::LookupRequest request;
    for (size_t i = 0; i < n; ++i) ToProto(keys[start + i], request.add_keys());
    v1::LookupResponse response;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, absl::Now() + options_.rpc_timeout);
    absl::Status s = FromGrpcStatus(StubFor(node)->Lookup(&ctx, request, &response));
    RecordResult(index, s);
    if (!s.ok()) return s;
    if (response.results_size() != static_cast<int>(n)) {
      return absl::InternalError(absl::StrCat(node.address, " answered ", response.results_size(),
                                              " results for ", n, " keys"));
    }
    for (auto& r : *response.mutable_results()) out.push_back(std::move(r));
  }
  return out;
}

// ---- cluster operations ----

absl::Status CacheClient::Put(const BlockKey& key, absl::Span<const uint8_t> payload) {
  absl::StatusOr<BlockView> view = BlockView::Parse(payload);
  if (!view.ok()) return view.status();
  if (view->meta().key != key) {
    return absl::InvalidArgumentError(absl::StrCat("payload header names block ",
                                                   view->meta().key.ToHex(), ", not ",
                                                   key.ToHex()));
  }
  absl::Status last = absl::UnavailableError("no cache node reachable");
  for (uint32_t attempt = 1; attempt <= options_.max_attempts; ++attempt) {
    if (attempt > 1) absl::SleepFor(Backoff(attempt - 1));
    const std::vector<uint32_t> order = Candidates(key, /*for_write=*/true);
    uint32_t acked = 0;
    size_t next = 0;
    // Waves: write to as many nodes as replicas are still missing, in parallel; failed nodes
    // are replaced by the next ones in rank.
    while (acked < options_.replication && next < order.size()) {
      const size_t wave = std::min<size_t>(options_.replication - acked, order.size() - next);
      std::vector<std::future<absl::Status>> futures;
      for (size_t i = 1; i < wave; ++i) {
        const uint32_t n = order[next + i];
        futures.push_back(std::async(std::launch::async, [this, n, &key, payload] {
          return PutOnNode(n, key, payload);
        }));
      }
      std::vector<absl::Status> results;
      results.push_back(PutOnNode(order[next], key, payload));
      for (auto& f : futures) results.push_back(f.get());
      next += wave;
      for (const absl::Status& s : results) {
        if (s.ok()) {
          ++acked;
        } else if (!IsNodeFailure(s)) {
          return s;  // the request itself is wrong: no node will take it
        } else {
          last = s;
        }
      }
    }
    if (acked >= options_.min_write_replicas) return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat("Put of ", key.ToHex(), " reached fewer than ",
                                             options_.min_write_replicas,
                                             " replicas; last error: ", last.ToString()));
}

template <typename Fn>
absl::StatusOr<uint64_t> CacheClient::ReadFromReplicas(const BlockKey& key, Fn&& read) {
  const uint32_t want_answers = std::min<uint32_t>(
      options_.replication + options_.read_extra_candidates, nodes_.size());
  absl::Status last = absl::UnavailableError("no cache node reachable");
  for (uint32_t attempt = 1; attempt <= options_.max_attempts; ++attempt) {
    if (attempt > 1) absl::SleepFor(Backoff(attempt - 1));
    uint32_t not_found = 0;
    for (uint32_t n : Candidates(key, /*for_write=*/false)) {
      absl::StatusOr<uint64_t> r = read(n);
      if (r.ok()) return r;
      if (absl::IsNotFound(r.status())) {
        if (++not_found >= want_answers) break;
        continue;
      }
      if (!IsNodeFailure(r.status())) return r.status();
      last = r.status();
    }
    if (not_found > 0) {
      return absl::NotFoundError(absl::StrCat("block ", key.ToHex(), " is on none of the ",
                                              not_found, " replicas asked"));
    }
  }
  return absl::UnavailableError(absl::StrCat("no replica of ", key.ToHex(),
                                             " answered; last error: ", last.ToString()));
}

std::optional<absl::StatusOr<BlockBytes>> CacheClient::AcquireLocal(size_t index,
                                                                    const BlockKey& key) {
  Node& node = *nodes_[index];
  std::shared_ptr<ShmClient> shm;
  {
    absl::MutexLock l(&node.shm_mu);
    shm = node.shm;
  }
  if (shm == nullptr) return std::nullopt;
  absl::StatusOr<BlockBytes> block = shm->Acquire(key);
  if (block.ok() || absl::IsNotFound(block.status())) return block;
  if (!shm->healthy()) {
    // Broken (the node restarted, or a timeout): forget it; leases taken from it stay valid.
    absl::MutexLock l(&node.shm_mu);
    if (node.shm == shm) node.shm = nullptr;
  }
  return std::nullopt;  // not local, lease limit, or broken: UCX / gRPC serve this read
}

HostBuffer CacheClient::TakeBuffer(uint64_t bytes) {
  if (options_.buffers != nullptr) {
    absl::StatusOr<HostBuffer> taken = options_.buffers->Take(bytes);
    if (taken.ok()) return *std::move(taken);
    buffer_fallbacks_.fetch_add(1, std::memory_order_relaxed);
  }
  auto data = std::make_shared<std::vector<uint8_t>>(bytes);
  return {absl::MakeSpan(*data), std::move(data)};
}

absl::StatusOr<uint64_t> CacheClient::GetOverDataPlane(size_t index, const BlockKey& key,
                                                       BlockBytes& out) {
  // UCX needs a buffer of the payload's size: one Lookup (microseconds against a fetch of
  // megabytes) sizes it. Without a session, or if the block changed size meanwhile, gRPC
  // streams it into a buffer it sizes itself.
  if (ucx_ != nullptr && nodes_[index]->ucx_session.load() >= 0) {
    absl::StatusOr<std::vector<v1::LookupResult>> found = LookupOnNode(index, {&key, 1});
    if (!found.ok()) return found.status();
    if (!found->front().present()) {
      return absl::NotFoundError(absl::StrCat("block ", key.ToHex(), " is absent on ", nodes_[index]->address));
    }
    const uint64_t size = found->front().payload_bytes();
    if (size > 0 && size <= kMaxAnnouncedBytes) {
      HostBuffer buffer = TakeBuffer(size);
      absl::StatusOr<uint64_t> n = GetOnNode(index, key, buffer.bytes, nullptr);
      if (n.ok()) {
        out.bytes = buffer.bytes.first(*n);
        out.owner = std::move(buffer.owner);
      }
      if (!absl::IsOutOfRange(n.status())) return n;
    }
  }
  auto data = std::make_shared<std::vector<uint8_t>>();
  absl::StatusOr<uint64_t> n = GetOnNode(index, key, absl::Span<uint8_t>(), data.get());
  if (n.ok()) {
    out.bytes = absl::MakeConstSpan(*data);
    out.owner = std::move(data);
  }
  return n;
}

absl::StatusOr<BlockBytes> CacheClient::Get(const BlockKey& key) {
  BlockBytes out;  // verified only when read in place through shared memory
  absl::StatusOr<uint64_t> n = ReadFromReplicas(key, [&](uint32_t node) -> absl::StatusOr<uint64_t> {
    if (std::optional<absl::StatusOr<BlockBytes>> b = AcquireLocal(node, key); b.has_value()) {
      if (!b->ok()) return b->status();
      out = **std::move(b);
      return out.bytes.size();
    }
    return GetOverDataPlane(node, key, out);
  });
  if (!n.ok()) return n.status();
  out.tier = StoreTier::kRemote;  // this client's tier, whichever of the node's served it
  if (options_.verify_shared_memory) out.verified = false;
  return out;
}

absl::StatusOr<uint64_t> CacheClient::FetchInto(const BlockKey& key, absl::Span<uint8_t> buffer) {
  return ReadFromReplicas(key, [&](uint32_t node) -> absl::StatusOr<uint64_t> {
    if (std::optional<absl::StatusOr<BlockBytes>> b = AcquireLocal(node, key); b.has_value()) {
      if (!b->ok()) return b->status();
      const absl::Span<const uint8_t> bytes = (*b)->bytes;
      if (bytes.size() > buffer.size()) {
        return absl::OutOfRangeError(absl::StrCat("block ", key.ToHex(), " has ", bytes.size(),
                                                  " bytes; the buffer holds ", buffer.size()));
      }
      std::memcpy(buffer.data(), bytes.data(), bytes.size());
      return bytes.size();  // the lease is released when *b goes
    }
    return GetOnNode(node, key, buffer, nullptr);
  });
}

std::vector<ClusterLookupResult> CacheClient::LookupCluster(absl::Span<const BlockKey> keys) {
  std::vector<ClusterLookupResult> out(keys.size());
  const uint32_t want_answers = std::min<uint32_t>(
      options_.replication + options_.read_extra_candidates, nodes_.size());
  std::vector<size_t> todo(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) todo[i] = i;
  for (uint32_t attempt = 1; attempt <= options_.max_attempts && !todo.empty(); ++attempt) {
    if (attempt > 1) absl::SleepFor(Backoff(attempt - 1));
    // Per key: candidate order, next position in it, "absent" answers, and whether a node
    // failed to answer for it (then the key is retried in the next attempt).
    std::vector<std::vector<uint32_t>> order(keys.size());
    std::vector<uint32_t> pos(keys.size(), 0), absent(keys.size(), 0);
    std::vector<bool> failed(keys.size(), false);
    for (size_t i : todo) order[i] = Candidates(keys[i], /*for_write=*/false);
    std::vector<size_t> pending = todo;
    // Rounds: each pending key asks its next candidate; one RPC per node, all nodes in
    // parallel. A key leaves when found, after want_answers "absent" answers, or when out of
    // candidates.
    for (uint32_t round = 0; !pending.empty() && round < nodes_.size(); ++round) {
      absl::flat_hash_map<uint32_t, std::vector<size_t>> by_node;
      for (size_t i : pending) by_node[order[i][pos[i]]].push_back(i);
      std::vector<std::pair<uint32_t,
                            std::future<absl::StatusOr<std::vector<v1::LookupResult>>>>>
          calls;
      for (auto& [node, idx] : by_node) {
        std::vector<BlockKey> batch;
        batch.reserve(idx.size());
        for (size_t i : idx) batch.push_back(keys[i]);
        calls.emplace_back(node, std::async(std::launch::async,
                                            [this, node = node, batch = std::move(batch)] {
                                              return LookupOnNode(node, batch);
                                            }));
      }
      std::vector<size_t> still;
      for (auto& [node, fut] : calls) {
        absl::StatusOr<std::vector<v1::LookupResult>> r = fut.get();
        const std::vector<size_t>& idx = by_node[node];
        for (size_t j = 0; j < idx.size(); ++j) {
          const size_t i = idx[j];
          ++pos[i];
          if (r.ok() && (*r)[j].present()) {
            out[i] = {true, (*r)[j].tier(), (*r)[j].payload_bytes(), static_cast<int>(node)};
            continue;
          }
          if (r.ok() && ++absent[i] >= want_answers) continue;
          if (!r.ok()) failed[i] = true;
          if (pos[i] < order[i].size()) still.push_back(i);
        }
      }
      pending = std::move(still);
    }
    std::vector<size_t> retry;
    for (size_t i : todo) {
      // Retried only when no node answered for it at all; one "absent" answer with the other
      // replicas down counts as a miss (the caller recomputes the block).
      if (!out[i].present && failed[i] && absent[i] == 0) retry.push_back(i);
    }
    todo = std::move(retry);
  }
  return out;
}

void CacheClient::Lookup(absl::Span<const BlockKey> keys, absl::Span<LookupResult> out) {
  std::vector<ClusterLookupResult> r = LookupCluster(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    out[i].present = r[i].present;
    out[i].tier = r[i].present ? StoreTier::kRemote : StoreTier::kNone;
    out[i].payload_bytes = r[i].payload_bytes;
  }
}

absl::Status CacheClient::Delete(const BlockKey& key) {
  const std::vector<uint32_t> ranked = ring_.Rank(key);
  const size_t n = std::min<size_t>(options_.replication + options_.read_extra_candidates,
                                    ranked.size());
  absl::Status first_error;
  for (size_t i = 0; i < n; ++i) {
    Node& node = *nodes_[ranked[i]];
    v1::DeleteRequest request;
    ToProto(key, request.add_keys());
    v1::DeleteResponse response;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, absl::Now() + options_.rpc_timeout);
    absl::Status s = FromGrpcStatus(StubFor(node)->Delete(&ctx, request, &response));
    RecordResult(ranked[i], s);
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  return first_error;
}

absl::StatusOr<uint64_t> CacheClient::DeleteModel(const ModelFingerprint& model) {
  uint64_t total = 0;
  absl::Status first_error;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    v1::DeleteRequest request;
    ToProto(model, request.mutable_model_fingerprint());
    v1::DeleteResponse response;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, absl::Now() + options_.rpc_timeout);
    absl::Status s = FromGrpcStatus(StubFor(*nodes_[i])->Delete(&ctx, request, &response));
    RecordResult(i, s);
    if (s.ok()) {
      total += response.deleted();
    } else if (first_error.ok()) {
      first_error = s;
    }
  }
  if (!first_error.ok()) return first_error;
  return total;
}

std::vector<absl::StatusOr<v1::StatsResponse>> CacheClient::NodeStats() const {
  std::vector<absl::StatusOr<v1::StatsResponse>> out;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    v1::StatsResponse response;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, absl::Now() + options_.rpc_timeout);
    absl::Status s =
        FromGrpcStatus(StubFor(*nodes_[i])->Stats(&ctx, v1::StatsRequest(), &response));
    RecordResult(i, s);
    if (s.ok()) {
      out.push_back(std::move(response));
    } else {
      out.push_back(absl::Status(s.code(), absl::StrCat(nodes_[i]->address, ": ", s.message())));
    }
  }
  return out;
}

std::vector<TierStats> CacheClient::Stats() const {
  TierStats memory{.tier = StoreTier::kMemory}, disk{.tier = StoreTier::kDisk};
  for (const auto& r : NodeStats()) {
    if (!r.ok()) continue;
    for (const v1::TierStats& t : r->tiers()) {
      TierStats* dst = t.tier() == v1::TIER_MEMORY ? &memory
                       : t.tier() == v1::TIER_DISK ? &disk
                                                   : nullptr;
      if (dst == nullptr) continue;
      dst->blocks += t.blocks();
      dst->bytes += t.bytes();
      dst->capacity_bytes += t.capacity_bytes();
      dst->hits += t.hits();
      dst->misses += t.misses();
      dst->evictions += t.evictions();
      dst->corrupt_records += t.corrupt_records();
    }
  }
  return {memory, disk};
}

absl::StatusOr<v1::DrainResponse> CacheClient::DrainNode(size_t index, bool undrain) {
  if (index >= nodes_.size()) return absl::InvalidArgumentError("no such member");
  v1::DrainRequest request;
  request.set_undrain(undrain);
  v1::DrainResponse response;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, absl::Now() + options_.rpc_timeout);
  absl::Status s = FromGrpcStatus(StubFor(*nodes_[index])->Drain(&ctx, request, &response));
  if (!s.ok()) return s;
  return response;
}

void CacheClient::ConnectSharedMemory(Node& node, const v1::OpenDataPlaneResponse& response) {
  if (response.shm_socket_path().empty()) {
    node.no_shm.store(true);  // the node offers none
    return;
  }
  absl::StatusOr<std::unique_ptr<ShmClient>> shm =
      ShmClient::Connect(response.shm_socket_path(), response.shm_token(),
                         {.timeout = options_.rpc_timeout,
                          .region_listener = options_.region_listener});
  if (!shm.ok()) {
    // Usually: the socket is not on this host. UCX / gRPC serve this node.
    node.no_shm.store(true);
    return;
  }
  absl::MutexLock l(&node.shm_mu);
  node.shm = *std::move(shm);
}

void CacheClient::OpenDataPlanes() {
  for (size_t i = 0; i < nodes_.size(); ++i) {
    Node& node = *nodes_[i];
    bool want_ucx =
        ucx_ != nullptr && node.ucx_session.load() < 0 && !node.no_data_plane.load();
    const bool want_shm =
        options_.use_shared_memory && !node.no_shm.load() && !HasSharedMemory(i);
    if (!want_ucx && !want_shm) continue;
    // One OpenDataPlane (one one-use token) per UCX lane, each naming that lane's worker; the
    // first also asks for the shared-memory session.
    std::vector<SessionTicket> tickets;
    absl::Status s;
    const int requests = want_ucx ? ucx_->lanes() : 1;
    for (int lane = 0; lane < requests; ++lane) {
      v1::OpenDataPlaneRequest request;
      if (want_ucx) request.set_client_worker_address(ucx_->WorkerAddress(lane));
      request.set_want_shared_memory(lane == 0 && want_shm);
      v1::OpenDataPlaneResponse response;
      grpc::ClientContext ctx;
      PrepareContext(&ctx, absl::Now() + options_.rpc_timeout);
      s = FromGrpcStatus(StubFor(node)->OpenDataPlane(&ctx, request, &response));
      if (!s.ok()) break;
      if (lane == 0 && want_shm) ConnectSharedMemory(node, response);
      if (!want_ucx) break;
      if (response.listener_address().empty()) {  // shared memory only: no UCX on the node
        node.no_data_plane.store(true);
        want_ucx = false;
        break;
      }
      tickets.push_back({response.listener_address(), response.session_token()});
    }
    if (absl::IsFailedPrecondition(s)) {  // neither UCX nor (when asked) shared memory
      if (want_ucx) node.no_data_plane.store(true);
      if (want_shm) node.no_shm.store(true);
    }
    if (!s.ok() || !want_ucx) continue;  // gRPC Get serves what no data plane does
    absl::StatusOr<int> session = ucx_->Connect(tickets, options_.rpc_timeout);
    if (session.ok()) node.ucx_session.store(*session);
  }
}

void CacheClient::ProbeLoop() {
  int tick = 0;
  while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(50))) {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      Node& node = *nodes_[i];
      bool probe = false;
      {
        absl::MutexLock l(&node.mu);
        probe = (node.ejected && absl::Now() >= node.ejected_until) || node.draining;
      }
      if (!probe) continue;
      v1::StatsResponse response;
      grpc::ClientContext ctx;
      PrepareContext(&ctx, absl::Now() + std::min(options_.rpc_timeout, absl::Seconds(1)));
      absl::Status s = FromGrpcStatus(StubFor(node)->Stats(&ctx, v1::StatsRequest(), &response));
      absl::MutexLock l(&node.mu);
      if (s.ok()) {
        node.ejected = false;
        node.draining = response.draining();
        node.eject_for = options_.eject_duration;
      } else if (node.ejected) {
        node.eject_for = std::min(node.eject_for * 2, options_.max_eject_duration);
        node.ejected_until = absl::Now() + node.eject_for;
      }
    }
    bool missing = false;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      const Node& node = *nodes_[i];
      const bool ucx_missing =
          ucx_ != nullptr && node.ucx_session.load() < 0 && !node.no_data_plane.load();
      const bool shm_missing =
          options_.use_shared_memory && !node.no_shm.load() && !HasSharedMemory(i);
      if ((ucx_missing || shm_missing) && !IsEjected(i)) missing = true;
    }
    // Re-open sessions at most every ~second (cheap when nodes have no data plane).
    if (missing && ++tick % 20 == 0) OpenDataPlanes();
  }
}

}  // namespace kvblock
