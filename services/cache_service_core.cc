#include "services/cache_service_core.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cache/block_payload.h"
#include "services/auth.h"
#include "services/proto_convert.h"

namespace kvblock {

absl::Status CacheServiceOptions::Validate() const {
  if (max_keys_per_call == 0) {
    return absl::InvalidArgumentError("max_keys_per_call must be at least 1");
  }
  if (max_block_bytes < kBlockHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_block_bytes must be at least the block header (", kBlockHeaderBytes,
                     " bytes)"));
  }
  if (max_put_buffer_bytes < max_block_bytes) {
    return absl::InvalidArgumentError("max_put_buffer_bytes must be at least max_block_bytes");
  }
  if (max_chunk_bytes < 4096 || max_chunk_bytes > (64u << 20)) {
    return absl::InvalidArgumentError("max_chunk_bytes must be in [4 KiB, 64 MiB]");
  }
  if (default_chunk_bytes == 0 || default_chunk_bytes > max_chunk_bytes) {
    return absl::InvalidArgumentError("default_chunk_bytes must be in [1, max_chunk_bytes]");
  }
  return absl::OkStatus();
}

v1::Tier ToProtoTier(StoreTier tier) {
  switch (tier) {
    case StoreTier::kGpu:
      return v1::TIER_GPU;
    case StoreTier::kMemory:
      return v1::TIER_MEMORY;
    case StoreTier::kDisk:
      return v1::TIER_DISK;
    case StoreTier::kNone:
    case StoreTier::kRemote:
      break;
  }
  return v1::TIER_NONE;
}

CacheServiceCore::CacheServiceCore(CacheServiceOptions options, BlockStore* store,
                                   DataPlaneSessions* data_plane, CacheServiceObserver* observer,
                                   LocalSessions* local)
    : options_(std::move(options)),
      store_(store),
      data_plane_(data_plane),
      local_(local),
      observer_(observer) {}

absl::Status CacheServiceCore::Authenticate(const std::string* authorization) const {
  return CheckBearer(options_.auth_token, authorization);
}

absl::Status CacheServiceCore::CheckKeyCount(int count, std::string_view method) const {
  if (static_cast<uint64_t>(count) > options_.max_keys_per_call) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(method), " has ", count,
                                                   " keys; the limit is max_keys_per_call=",
                                                   options_.max_keys_per_call));
  }
  return absl::OkStatus();
}

absl::Status CacheServiceCore::Lookup(const v1::LookupRequest& request,
                                      v1::LookupResponse* response) {
  if (auto s = CheckKeyCount(request.keys_size(), "Lookup"); !s.ok()) return s;
  std::vector<BlockKey> keys;
  keys.reserve(request.keys_size());
  for (const v1::Hash128& k : request.keys()) keys.push_back(FromProto(k));
  std::vector<LookupResult> results(keys.size());
  store_->Lookup(keys, absl::MakeSpan(results));
  if (observer_ != nullptr) observer_->OnLookup(results);
  response->mutable_results()->Reserve(static_cast<int>(keys.size()));
  for (size_t i = 0; i < keys.size(); ++i) {
    v1::LookupResult* r = response->add_results();
    ToProto(keys[i], r->mutable_key());
    r->set_present(results[i].present);
    r->set_tier(results[i].present ? ToProtoTier(results[i].tier) : v1::TIER_NONE);
    r->set_payload_bytes(results[i].present ? results[i].payload_bytes : 0);
  }
  return absl::OkStatus();
}

absl::Status CacheServiceCore::ReservePutBytes(uint64_t bytes) {
  uint64_t current = put_buffer_bytes_.load(std::memory_order_relaxed);
  do {
    if (current + bytes > options_.max_put_buffer_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "node is buffering ", current, " bytes of open Put streams; this block needs ", bytes,
          " more and the limit is max_put_buffer_bytes=", options_.max_put_buffer_bytes));
    }
  } while (!put_buffer_bytes_.compare_exchange_weak(current, current + bytes,
                                                    std::memory_order_relaxed));
  return absl::OkStatus();
}

void CacheServiceCore::ReleasePutBytes(uint64_t bytes) {
  put_buffer_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
}

std::unique_ptr<PutSession> CacheServiceCore::StartPut() {
  return std::unique_ptr<PutSession>(new PutSession(this));
}

PutSession::~PutSession() {
  if (reserved_bytes_ != 0) core_->ReleasePutBytes(reserved_bytes_);
}

absl::Status PutSession::OnMessage(const v1::PutRequest& request) {
  if (failed_) return absl::FailedPreconditionError("Put stream already failed");
  absl::Status s;
  switch (request.part_case()) {
    case v1::PutRequest::kHeader:
      s = have_header_ ? absl::InvalidArgumentError("Put stream sent a second header")
                       : OnHeader(request.header());
      break;
    case v1::PutRequest::kChunk:
      s = have_header_ ? OnChunk(request.chunk())
                       : absl::InvalidArgumentError(
                             "Put stream must start with a header message, got a chunk");
      break;
    case v1::PutRequest::PART_NOT_SET:
      s = absl::InvalidArgumentError("Put message has neither header nor chunk");
      break;
  }
  if (!s.ok()) failed_ = true;
  return s;
}

absl::Status PutSession::OnHeader(const v1::PutHeader& header) {
  if (core_->draining()) {
    return absl::UnavailableError("node is draining and takes no writes");
  }
  if (!header.has_key()) return absl::InvalidArgumentError("Put header has no key");
  const uint64_t n = header.payload_bytes();
  if (n < kBlockHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("Put header declares ", n,
                                                   " payload bytes; a block needs at least ",
                                                   kBlockHeaderBytes));
  }
  if (n > core_->options().max_block_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("block of ", n, " bytes exceeds max_block_bytes=",
                     core_->options().max_block_bytes));
  }
  if (auto s = core_->ReservePutBytes(n); !s.ok()) return s;
  reserved_bytes_ = n;
  key_ = FromProto(header.key());
  declared_bytes_ = n;
  buffer_.reserve(n);
  have_header_ = true;
  return absl::OkStatus();
}

absl::Status PutSession::OnChunk(const std::string& chunk) {
  if (chunk.size() > core_->options().max_chunk_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "Put chunk of ", chunk.size(), " bytes exceeds max_chunk_bytes=",
        core_->options().max_chunk_bytes));
  }
  if (buffer_.size() + chunk.size() > declared_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("Put stream sent more than the ",
                                                   declared_bytes_,
                                                   " bytes its header declared"));
  }
  const size_t before = buffer_.size();
  buffer_.insert(buffer_.end(), chunk.begin(), chunk.end());
  // As soon as the block header is complete, check it against the Put header so a wrong or
  // malformed block is refused before its data is streamed.
  if (before < kBlockHeaderBytes && buffer_.size() >= kBlockHeaderBytes) {
    absl::StatusOr<BlockHeader> h =
        DecodeHeader(absl::MakeConstSpan(buffer_.data(), kBlockHeaderBytes));
    if (!h.ok()) {
      return absl::Status(h.status().code(),
                          absl::StrCat("Put payload header: ", h.status().message()));
    }
    if (h->meta.key != key_) {
      return absl::InvalidArgumentError(absl::StrCat("Put header key ", key_.ToHex(),
                                                     " differs from the payload's key ",
                                                     h->meta.key.ToHex()));
    }
    if (PayloadBytes(h->meta) != declared_bytes_) {
      return absl::InvalidArgumentError(
          absl::StrCat("Put header declares ", declared_bytes_, " bytes but the payload header "
                       "describes ", PayloadBytes(h->meta)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::PutResponse> PutSession::Finish() {
  if (failed_) return absl::FailedPreconditionError("Put stream already failed");
  failed_ = true;  // a session commits at most once
  absl::StatusOr<v1::PutResponse> r = Commit();
  // Give the buffer (and its budget) back now, whatever the outcome, rather than when the
  // reactor goes away.
  std::vector<uint8_t>().swap(buffer_);
  core_->ReleasePutBytes(reserved_bytes_);
  reserved_bytes_ = 0;
  return r;
}

absl::StatusOr<v1::PutResponse> PutSession::Commit() {
  if (!have_header_) return absl::InvalidArgumentError("Put stream ended without a header");
  if (buffer_.size() != declared_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("Put stream ended after ", buffer_.size(),
                                                   " of the ", declared_bytes_,
                                                   " bytes its header declared"));
  }
  LookupResult before;
  core_->store_->Lookup(absl::MakeConstSpan(&key_, 1), absl::MakeSpan(&before, 1));
  if (absl::Status s = core_->store_->Put(key_, buffer_); !s.ok()) return s;
  v1::PutResponse response;
  ToProto(key_, response.mutable_key());
  response.set_already_present(before.present);
  return response;
}

bool GetStream::Next(v1::GetResponse* response) {
  response->Clear();
  if (!sent_size_) {
    sent_size_ = true;
    response->set_payload_bytes(block_.bytes.size());
    return true;
  }
  if (offset_ >= block_.bytes.size()) return false;
  const uint64_t n = std::min<uint64_t>(chunk_, block_.bytes.size() - offset_);
  response->set_chunk(reinterpret_cast<const char*>(block_.bytes.data() + offset_), n);
  offset_ += n;
  return true;
}

absl::StatusOr<std::unique_ptr<GetStream>> CacheServiceCore::StartGet(
    const v1::GetRequest& request) {
  if (!request.has_key()) return absl::InvalidArgumentError("Get request has no key");
  uint32_t chunk = request.max_chunk_bytes() == 0 ? options_.default_chunk_bytes
                                                  : request.max_chunk_bytes();
  chunk = std::clamp<uint32_t>(chunk, 4096, options_.max_chunk_bytes);
  const BlockKey key = FromProto(request.key());
  absl::StatusOr<BlockBytes> block = store_->Get(key);
  if (observer_ != nullptr && (block.ok() || absl::IsNotFound(block.status()))) {
    observer_->OnGet(block.ok() ? block->tier : StoreTier::kNone);
  }
  if (!block.ok()) {
    if (absl::IsNotFound(block.status())) {
      return absl::NotFoundError(absl::StrCat("block ", key.ToHex(), " is not on this node"));
    }
    return block.status();
  }
  return std::unique_ptr<GetStream>(new GetStream(*std::move(block), chunk));
}

absl::Status CacheServiceCore::Delete(const v1::DeleteRequest& request,
                                      v1::DeleteResponse* response) {
  if (auto s = CheckKeyCount(request.keys_size(), "Delete"); !s.ok()) return s;
  if (request.keys_size() == 0) {
    if (!request.has_model_fingerprint()) {
      return absl::InvalidArgumentError("Delete needs keys or a model_fingerprint");
    }
    absl::StatusOr<uint64_t> n = store_->DeleteModel(FromProto(request.model_fingerprint()));
    if (!n.ok()) return n.status();
    response->set_deleted(*n);
    return absl::OkStatus();
  }
  std::vector<BlockKey> keys;
  keys.reserve(request.keys_size());
  for (const v1::Hash128& k : request.keys()) keys.push_back(FromProto(k));
  std::vector<LookupResult> present(keys.size());
  store_->Lookup(keys, absl::MakeSpan(present));
  uint64_t deleted = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (absl::Status s = store_->Delete(keys[i]); !s.ok()) return s;
    if (present[i].present) ++deleted;
  }
  response->set_deleted(deleted);
  return absl::OkStatus();
}

absl::Status CacheServiceCore::Stats(const v1::StatsRequest& request,
                                     v1::StatsResponse* response) {
  for (const TierStats& t : store_->Stats()) {
    v1::TierStats* out = response->add_tiers();
    out->set_tier(ToProtoTier(t.tier));
    out->set_blocks(t.blocks);
    out->set_bytes(t.bytes);
    out->set_capacity_bytes(t.capacity_bytes);
    out->set_hits(t.hits);
    out->set_misses(t.misses);
    out->set_evictions(t.evictions);
    out->set_corrupt_records(t.corrupt_records);
  }
  response->set_node_id(options_.node_id);
  response->set_version("kvblock 0.1.0");
  response->set_draining(draining());
  return absl::OkStatus();
}

absl::Status CacheServiceCore::OpenDataPlane(const v1::OpenDataPlaneRequest& request,
                                             v1::OpenDataPlaneResponse* response) {
  const bool local = request.want_shared_memory() && local_ != nullptr;
  if (data_plane_ == nullptr && !local) {
    return absl::FailedPreconditionError(
        "this node runs without a UCX data plane (--ucx-listen unset); use Get");
  }
  if (draining()) return absl::UnavailableError("node is draining and opens no new sessions");
  if (request.client_worker_address().size() > 4096) {
    return absl::InvalidArgumentError("client_worker_address is longer than 4096 bytes");
  }
  if (data_plane_ != nullptr) {
    absl::StatusOr<v1::OpenDataPlaneResponse> r =
        data_plane_->OpenSession(request.client_worker_address());
    if (!r.ok()) return r.status();
    *response = *std::move(r);
  }
  if (local) return local_->OpenLocalSession(response);
  return absl::OkStatus();
}

absl::Status CacheServiceCore::Drain(const v1::DrainRequest& request,
                                     v1::DrainResponse* response) {
  const bool want = !request.undrain();
  const bool was = draining_.exchange(want, std::memory_order_acq_rel);
  if (was != want && drain_listener_) drain_listener_(want);
  response->set_draining(want);
  // This call itself is in flight; report the others.
  const uint64_t inflight = inflight_calls();
  response->set_inflight_calls(inflight > 0 ? inflight - 1 : 0);
  return absl::OkStatus();
}

}  // namespace kvblock
