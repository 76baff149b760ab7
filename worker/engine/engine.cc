#include "worker/engine/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace kvblock {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// A payload from the store, parsed (its data re-hashed unless the store marked it verified in
// this host's memory) and checked against what the engine asked for; nullopt (treated as a
// miss) if it is not usable.
std::optional<BlockView> UsableHit(const BlockBytes& bytes, const BlockKey& key,
                                   const ModelFingerprint& model, KvDtype dtype, size_t tokens,
                                   const ModelConfig& c) {
  absl::StatusOr<BlockView> view =
      BlockView::Parse(bytes.bytes, bytes.verified ? DataCheck::kTrusted : DataCheck::kVerify);
  if (!view.ok()) return std::nullopt;
  const BlockMeta& m = view->meta();
  if (m.key != key || m.model != model || m.dtype != dtype || m.num_tokens != tokens ||
      m.num_layers != c.num_layers || m.num_kv_heads != c.num_kv_heads || m.head_dim != c.head_dim) {
    return std::nullopt;
  }
  return *view;
}

}  // namespace

Decoding::Decoding(const GenerateRequest& r, int64_t vocab, Clock::time_point start)
    : sampling_(r.sampling),
      rng_(r.sampling.seed),
      max_new_tokens_(r.max_new_tokens),
      stop_ids_(r.stop_token_ids),
      probs_(vocab),
      order_(vocab),
      start_(start),
      first_token_(start) {}

std::string_view AttentionModeName(AttentionMode mode) {
  return mode == AttentionMode::kBlock ? "block" : "full";
}

absl::Status EngineOptions::Validate() const {
  if (DtypeSize(kv_dtype) == 0) return absl::InvalidArgumentError("engine: invalid kv dtype");
  if (max_sequence_tokens < 0 || max_new_tokens_limit < 0) {
    return absl::InvalidArgumentError("engine: negative limit");
  }
  if (encode_batch_tokens <= 0) {
    return absl::InvalidArgumentError("engine: encode_batch_tokens <= 0");
  }
  if (fetch_threads < 1 || fetch_threads > 64) {
    return absl::InvalidArgumentError("engine: fetch_threads must be in 1..64");
  }
  return absl::OkStatus();
}

Engine::Engine(std::shared_ptr<Backend> backend, BlockStore* store,
               const ModelFingerprint& fingerprint, const EngineOptions& options)
    : backend_(std::move(backend)), store_(store), fingerprint_(fingerprint), options_(options) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<Backend> backend,
                                                       BlockStore* store,
                                                       const ModelFingerprint& fingerprint,
                                                       const EngineOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (backend == nullptr || store == nullptr) {
    return absl::InvalidArgumentError("engine: backend and store are required");
  }
  return std::unique_ptr<Engine>(new Engine(std::move(backend), store, fingerprint, options));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::WithStore(BlockStore* store,
                                                          const EngineOptions& options) const {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (store == nullptr) return absl::InvalidArgumentError("engine: a store is required");
  return std::unique_ptr<Engine>(new Engine(backend_, store, fingerprint_, options));
}

BlockKey Engine::KeyOf(absl::Span<const int32_t> tokens) const {
  return ComputeBlockKey(fingerprint_, options_.kv_dtype, tokens);
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> Engine::EncodeBlocks(
    absl::Span<const absl::Span<const int32_t>> blocks,
    const std::function<absl::Status()>& before_batch) {
  const ModelConfig& c = backend_->config();
  const int64_t limit = std::min<int64_t>(c.max_position_embeddings, kMaxBlockTokens);
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int64_t n = static_cast<int64_t>(blocks[i].size());
    if (n == 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot encode an empty block (", i, ")"));
    }
    if (n > limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", i, " of ", n, " tokens exceeds the model's limit of ", limit));
    }
  }
  std::vector<std::vector<uint8_t>> payloads(blocks.size());
  for (size_t begin = 0; begin < blocks.size();) {
    // The next pass: as many blocks as fit encode_batch_tokens, at least one.
    size_t end = begin + 1;
    int64_t tokens = static_cast<int64_t>(blocks[begin].size());
    while (end < blocks.size() &&
           tokens + static_cast<int64_t>(blocks[end].size()) <= options_.encode_batch_tokens) {
      tokens += static_cast<int64_t>(blocks[end++].size());
    }
    if (before_batch) {
      if (absl::Status s = before_batch(); !s.ok()) return s;
    }
    if (absl::Status s = EncodeBatch(blocks.subspan(begin, end - begin),
                                     absl::MakeSpan(payloads).subspan(begin, end - begin));
        !s.ok()) {
      return s;
    }
    begin = end;
  }
  return payloads;
}

absl::Status Engine::EncodeBatch(absl::Span<const absl::Span<const int32_t>> blocks,
                                 absl::Span<std::vector<uint8_t>> payloads) {
  const ModelConfig& c = backend_->config();
  std::vector<std::unique_ptr<KvSequence>> owned;
  std::vector<KvSequence*> seqs;
  for (absl::Span<const int32_t> b : blocks) {
    absl::StatusOr<std::unique_ptr<KvSequence>> seq =
        backend_->NewSequence(static_cast<int64_t>(b.size()));
    if (!seq.ok()) return seq.status();
    seqs.push_back(seq->get());
    owned.push_back(*std::move(seq));
  }
  if (absl::Status s = backend_->ForwardBatch(seqs, blocks); !s.ok()) return s;
  std::vector<float> k, v;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int64_t n = static_cast<int64_t>(blocks[i].size());
    k.resize(c.num_layers * c.num_kv_heads * n * c.head_dim);
    v.resize(k.size());
    if (absl::Status s = backend_->ReadKv(*seqs[i], 0, n, absl::MakeSpan(k), absl::MakeSpan(v));
        !s.ok()) {
      return s;
    }
    BlockMeta meta;
    meta.model = fingerprint_;
    meta.key = KeyOf(blocks[i]);
    meta.dtype = options_.kv_dtype;
    meta.num_layers = static_cast<uint32_t>(c.num_layers);
    meta.num_kv_heads = static_cast<uint32_t>(c.num_kv_heads);
    meta.head_dim = static_cast<uint32_t>(c.head_dim);
    meta.num_tokens = static_cast<uint32_t>(n);
    absl::StatusOr<std::vector<uint8_t>> payload = kvblock::EncodeBlock(meta, k, v);
    if (!payload.ok()) return payload.status();
    payloads[i] = *std::move(payload);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> Engine::EncodeBlock(absl::Span<const int32_t> tokens) {
  absl::StatusOr<std::vector<std::vector<uint8_t>>> payloads = EncodeBlocks({&tokens, 1});
  if (!payloads.ok()) return payloads.status();
  return std::move(payloads->front());
}

absl::Status Engine::CheckRequest(const GenerateRequest& r, int64_t* prompt_tokens) const {
  const ModelConfig& c = backend_->config();
  if (absl::Status s = r.sampling.Validate(); !s.ok()) return s;
  if (r.final_block.empty()) return absl::InvalidArgumentError("the final block is empty");
  if (r.max_new_tokens < 0 || r.max_new_tokens > options_.max_new_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens ", r.max_new_tokens,
                                                   " is outside [0, ", options_.max_new_tokens_limit, "]"));
  }
  int64_t total = 0;
  auto check_ids = [&](absl::Span<const int32_t> ids, const std::string& where) -> absl::Status {
    for (size_t j = 0; j < ids.size(); ++j) {
      if (ids[j] < 0 || ids[j] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", ids[j], " at ", where, "[", j,
                                                       "] is outside the vocabulary of ", c.vocab_size));
      }
    }
    total += static_cast<int64_t>(ids.size());
    return absl::OkStatus();
  };
  for (size_t i = 0; i < r.blocks.size(); ++i) {
    if (r.blocks[i].empty()) return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "] is empty"));
    if (r.blocks[i].size() > kMaxBlockTokens) {
      return absl::InvalidArgumentError(absl::StrCat("blocks[", i, "] has more than ", kMaxBlockTokens, " tokens"));
    }
    if (absl::Status s = check_ids(r.blocks[i], absl::StrCat("blocks[", i, "]")); !s.ok()) return s;
  }
  if (absl::Status s = check_ids(r.final_block, "final_block"); !s.ok()) return s;
  for (int32_t id : r.stop_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop token id ", id, " is outside the vocabulary of ", c.vocab_size));
    }
  }
  const int64_t limit = options_.max_sequence_tokens > 0
                            ? std::min(options_.max_sequence_tokens, c.max_position_embeddings)
                            : c.max_position_embeddings;
  if (total > limit) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", total,
                                                   " tokens, more than the model's limit of ", limit));
  }
  if (c.sliding_window > 0 && total + r.max_new_tokens > c.sliding_window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the sequence (", total, " prompt + ", r.max_new_tokens, " new tokens) exceeds the model's sliding window of ",
        c.sliding_window, " tokens, which the engine does not implement"));
  }
  *prompt_tokens = total;
  return absl::OkStatus();
}

// The payloads of a request's blocks, by block index.
struct Engine::ResolvedBlocks {
  std::vector<size_t> first;  // the first block with the same key
  // For first occurrences: the block on the backend's device (no store read), else its payload.
  std::vector<Backend::ResidentBlock> resident;
  std::vector<std::optional<BlockView>> views;
  // Owners of the bytes the views point into: payloads read from the store, or encoded here
  // (non-empty exactly for the misses).
  std::vector<BlockBytes> held;
  std::vector<std::vector<uint8_t>> payloads;
};

absl::Status Engine::ResolveBlocks(const GenerateRequest& r, ResolvedBlocks& blocks,
                                   GenerateResult& out) {
  const Clock::time_point t_lookup = Clock::now();
  const ModelConfig& c = backend_->config();
  const size_t nb = r.blocks.size();
  std::vector<BlockKey> keys(nb);
  for (size_t i = 0; i < nb; ++i) keys[i] = KeyOf(r.blocks[i]);
  blocks.first.resize(nb);
  blocks.resident.resize(nb);
  blocks.views.resize(nb);
  blocks.held.resize(nb);
  blocks.payloads.resize(nb);
  // First occurrences (a repeated block is read once) not resident on the backend's device go
  // to the store: found there (to fetch) or not (to encode).
  std::vector<size_t> lookup;
  std::vector<BlockKey> lookup_keys;
  absl::flat_hash_map<BlockKey, size_t> first_of;
  for (size_t i = 0; i < nb; ++i) {
    const auto [it, inserted] = first_of.try_emplace(keys[i], i);
    blocks.first[i] = it->second;
    if (!inserted) continue;
    blocks.resident[i] = backend_->FindResident(keys[i], static_cast<int64_t>(r.blocks[i].size()));
    if (blocks.resident[i] == nullptr) {
      lookup.push_back(i);
      lookup_keys.push_back(keys[i]);
    }
  }
  std::vector<LookupResult> lookup_found(lookup.size());
  store_->Lookup(lookup_keys, absl::MakeSpan(lookup_found));
  std::vector<LookupResult> found(nb);
  std::vector<size_t> fetch, encode;
  for (size_t j = 0; j < lookup.size(); ++j) {
    found[lookup[j]] = lookup_found[j];
    (lookup_found[j].present ? fetch : encode).push_back(lookup[j]);
  }
  out.timings.lookup_ms = MsSince(t_lookup);

  // Found blocks are fetched by options_.fetch_threads workers at once. While the fetch runs,
  // each usable block that has arrived is handed to the backend's MakeResident on a thread of
  // its own, so its copy to the device overlaps the fetches and encodings still running. The
  // blocks not placed by the time the last one arrives go to the device with the final block's
  // prefill instead (AppendBlock: the CUDA backend copies them layer by layer under that pass),
  // so the prefill overlaps the tail of the copies. The fetch writes only its blocks' views and
  // held bytes, fetched_bytes, fetch_ms and fetch_status; MakeResident's thread only their
  // resident handles; the encoding only the other blocks' entries and other fields.
  absl::Status fetch_status;
  std::atomic<bool> stop_fetch{false};
  std::mutex arrived_mu;
  std::condition_variable arrived_cv;
  std::deque<size_t> arrived;  // fetched, usable, not yet handed to MakeResident
  size_t unfetched = fetch.size();  // under arrived_mu: the fetch ends when it reaches 0
  bool fetch_ended = fetch.empty();
  auto fetch_found = [&] {
    const Clock::time_point t0 = Clock::now();
    // fetch_threads workers take the found blocks in prompt order; a worker's result is
    // published under arrived_mu, together with the end of the fetch for the last one.
    std::atomic<size_t> next{0};
    auto worker = [&] {
      for (size_t j = next++; j < fetch.size() && !stop_fetch.load(); j = next++) {
        const size_t i = fetch[j];
        absl::StatusOr<BlockBytes> got = store_->Get(keys[i]);
        std::optional<BlockView> view;
        if (got.ok()) view = UsableHit(*got, keys[i], fingerprint_, options_.kv_dtype, r.blocks[i].size(), c);
        std::lock_guard<std::mutex> lock(arrived_mu);
        fetch_ended = --unfetched == 0;
        arrived_cv.notify_one();
        if (!got.ok() && absl::IsNotFound(got.status())) continue;  // evicted since the lookup: a miss
        if (!got.ok()) {
          if (fetch_status.ok()) fetch_status = got.status();
          stop_fetch.store(true);
          return;
        }
        out.fetched_bytes += got->bytes.size();
        if (!view.has_value()) continue;
        blocks.views[i] = view;
        blocks.held[i] = *std::move(got);
        if (!fetch_ended) arrived.push_back(i);
      }
    };
    std::vector<std::thread> more;
    const size_t workers = std::min<size_t>(options_.fetch_threads, fetch.size());
    for (size_t w = 1; w < workers; ++w) more.emplace_back(worker);
    worker();
    for (std::thread& t : more) t.join();
    out.timings.fetch_ms = MsSince(t0);
    std::lock_guard<std::mutex> lock(arrived_mu);  // also when stopped early
    fetch_ended = true;
    arrived_cv.notify_one();
  };
  auto make_resident = [&] {
    std::unique_lock<std::mutex> lock(arrived_mu);
    for (;;) {
      arrived_cv.wait(lock, [&] { return !arrived.empty() || fetch_ended; });
      if (fetch_ended) return;  // the rest go with the prefill
      const size_t i = arrived.front();
      arrived.pop_front();
      lock.unlock();
      blocks.resident[i] = backend_->MakeResident(*blocks.views[i]);
      lock.lock();
    }
  };
  std::thread placer;
  if (!fetch.empty()) placer = std::thread(make_resident);
  // With nothing to encode there is nothing to overlap: the fetch runs on this thread.
  std::thread fetcher;
  if (fetch.empty() || encode.empty()) {
    fetch_found();
  } else {
    fetcher = std::thread(fetch_found);
  }
  Clock::time_point t_encode = Clock::now();
  absl::Status status = EncodeMisses(r, keys, found, encode, blocks, out);
  out.timings.encode_ms = MsSince(t_encode);
  if (!status.ok()) stop_fetch.store(true);
  if (fetcher.joinable()) fetcher.join();
  if (placer.joinable()) placer.join();
  if (!status.ok()) return status;
  if (!fetch_status.ok()) return fetch_status;
  // Found blocks that were evicted or unusable: a second (usually empty) batch.
  std::vector<size_t> late;
  for (size_t i : fetch) {
    if (!blocks.views[i].has_value()) late.push_back(i);
  }
  t_encode = Clock::now();
  status = EncodeMisses(r, keys, found, late, blocks, out);
  out.timings.encode_ms += MsSince(t_encode);
  return status;
}

absl::Status Engine::EncodeMisses(const GenerateRequest& r, absl::Span<const BlockKey> keys,
                                  absl::Span<const LookupResult> found,
                                  absl::Span<const size_t> which, ResolvedBlocks& blocks,
                                  GenerateResult& out) {
  if (which.empty()) return absl::OkStatus();
  std::vector<absl::Span<const int32_t>> tokens;
  for (size_t i : which) tokens.push_back(r.blocks[i]);
  absl::StatusOr<std::vector<std::vector<uint8_t>>> payloads = EncodeBlocks(tokens);
  if (!payloads.ok()) return payloads.status();
  for (size_t j = 0; j < which.size(); ++j) {
    const size_t i = which[j];
    blocks.payloads[i] = std::move((*payloads)[j]);
    absl::StatusOr<BlockView> view = BlockView::Parse(blocks.payloads[i]);
    if (!view.ok()) return view.status();
    blocks.views[i] = *view;
    if (options_.write_back) {
      if (found[i].present) (void)store_->Delete(keys[i]);  // an unusable record is replaced
      if (!store_->Put(keys[i], blocks.payloads[i]).ok()) ++out.cache_put_errors;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Decoding>> Engine::Prefill(const GenerateRequest& r) {
  const Clock::time_point t_start = Clock::now();
  const ModelConfig& c = backend_->config();
  int64_t prompt = 0;
  if (absl::Status s = CheckRequest(r, &prompt); !s.ok()) return s;
  const int64_t limit = options_.max_sequence_tokens > 0
                            ? std::min(options_.max_sequence_tokens, c.max_position_embeddings)
                            : c.max_position_embeddings;
  const int64_t capacity = std::min(limit, prompt + std::max<int64_t>(r.max_new_tokens, 1));
  absl::StatusOr<std::unique_ptr<KvSequence>> seq_or = backend_->NewSequence(capacity);
  if (!seq_or.ok()) return seq_or.status();
  std::unique_ptr<Decoding> d(new Decoding(r, c.vocab_size, t_start));
  d->seq_ = *std::move(seq_or);
  KvSequence& seq = *d->seq_;
  GenerateResult& out = d->result_;
  const int64_t n_final = static_cast<int64_t>(r.final_block.size());
  const int64_t logit_rows = r.return_logits ? n_final : 1;
  std::vector<float> logits(logit_rows * c.vocab_size);

  if (r.mode == AttentionMode::kBlock) {
    ResolvedBlocks blocks;
    if (absl::Status s = ResolveBlocks(r, blocks, out); !s.ok()) return s;
    const Clock::time_point t = Clock::now();
    for (size_t i = 0; i < r.blocks.size(); ++i) {
      const size_t first = blocks.first[i];
      // A block repeated within the request is encoded at most once; repeats count as hits.
      if (first == i && !blocks.payloads[i].empty()) {
        ++out.cache_misses;
      } else {
        ++out.cache_hits;
      }
      const absl::Status s = blocks.resident[first] != nullptr
                                 ? backend_->AppendResident(seq, blocks.resident[first])
                                 : backend_->AppendBlock(seq, *blocks.views[first]);
      if (!s.ok()) return s;
    }
    out.timings.load_ms = MsSince(t);
    const Clock::time_point t_prefill = Clock::now();
    if (absl::Status s = backend_->Forward(seq, r.final_block, logit_rows, absl::MakeSpan(logits));
        !s.ok()) {
      return s;
    }
    out.timings.prefill_ms = MsSince(t_prefill);
  } else {
    Clock::time_point t = Clock::now();
    std::vector<int32_t> all;
    all.reserve(prompt);
    for (const auto& b : r.blocks) all.insert(all.end(), b.begin(), b.end());
    all.insert(all.end(), r.final_block.begin(), r.final_block.end());
    if (absl::Status s = backend_->Forward(seq, all, logit_rows, absl::MakeSpan(logits)); !s.ok()) {
      return s;
    }
    out.timings.prefill_ms = MsSince(t);
  }

  if (r.max_new_tokens == 0) {
    out.stop_reason = "max_new_tokens";
    d->done_ = true;
    out.timings.total_ms = MsSince(t_start);
  } else if (absl::Status s = Sample(*d, absl::MakeConstSpan(logits).subspan(
                                             (logit_rows - 1) * c.vocab_size, c.vocab_size));
             !s.ok()) {
    return s;  // the last row of `logits` is the distribution of the first new token
  }
  if (r.return_logits) out.logits = std::move(logits);
  return d;
}

absl::Status Engine::Sample(Decoding& d, absl::Span<const float> logits) const {
  const ModelConfig& c = backend_->config();
  absl::StatusOr<int32_t> tok = kernels::SampleToken(
      logits, d.sampling_, d.rng_, {absl::MakeSpan(d.probs_), absl::MakeSpan(d.order_)});
  if (!tok.ok()) return tok.status();
  GenerateResult& out = d.result_;
  out.tokens.push_back(*tok);
  const Clock::time_point now = Clock::now();
  if (out.tokens.size() == 1) {
    d.first_token_ = now;
    out.timings.ttft_ms = std::chrono::duration<double, std::milli>(now - d.start_).count();
  }
  if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), *tok) != c.eos_token_ids.end()) {
    out.stop_reason = "eos";
  } else if (std::find(d.stop_ids_.begin(), d.stop_ids_.end(), *tok) != d.stop_ids_.end()) {
    out.stop_reason = "stop";
  } else if (static_cast<int64_t>(out.tokens.size()) >= d.max_new_tokens_) {
    out.stop_reason = "max_new_tokens";
  } else if (d.seq_->length() >= d.seq_->capacity()) {
    out.stop_reason = "context_limit";
  } else {
    return absl::OkStatus();
  }
  d.done_ = true;
  out.timings.decode_ms = std::chrono::duration<double, std::milli>(now - d.first_token_).count();
  out.timings.total_ms = std::chrono::duration<double, std::milli>(now - d.start_).count();
  return absl::OkStatus();
}

absl::Status Engine::DecodeStep(absl::Span<Decoding* const> batch) {
  const int64_t vocab = backend_->config().vocab_size;
  std::vector<KvSequence*> seqs(batch.size());
  std::vector<int32_t> tokens(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i] == nullptr || batch[i]->done_) {
      return absl::InvalidArgumentError(absl::StrCat("decode step: entry ", i, " is null or done"));
    }
    seqs[i] = batch[i]->seq_.get();
    tokens[i] = batch[i]->result_.tokens.back();
  }
  // The backend refuses an empty batch and repeated sequences (so repeated Decodings).
  std::vector<float> logits(batch.size() * vocab);
  if (absl::Status s = backend_->DecodeStep(seqs, tokens, absl::MakeSpan(logits)); !s.ok()) return s;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (absl::Status s = Sample(*batch[i], absl::MakeConstSpan(logits).subspan(i * vocab, vocab));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateResult> Engine::Generate(const GenerateRequest& r) {
  absl::StatusOr<std::unique_ptr<Decoding>> d = Prefill(r);
  if (!d.ok()) return d.status();
  Decoding* one[1] = {d->get()};
  while (!(*d)->done()) {
    if (absl::Status s = DecodeStep(one); !s.ok()) return s;
  }
  return (*d)->TakeResult();
}

}  // namespace kvblock
