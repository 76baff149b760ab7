// RemoteBlockEncoder: the BlockEncoder of `kvblock index --worker HOST:PORT`. It sends the
// indexer's blocks to a worker's InferenceService.EncodeBlocks with return_payloads (the worker
// encodes on its backend, typically a GPU, and writes nothing to its own cache) and hands the
// payloads back to the Indexer, which Puts them into its own --cache. Before any work it checks
// with Health that the worker serves the model the indexer keys for; every returned payload is
// parsed and checked against the block it should be (key, model, dtype, shape, checksum) before
// the Indexer may store it. A batch is split into calls that stay inside the worker's
// max_prompt_tokens and a response size limit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/block_payload.h"
#include "kvblock/v1/inference.grpc.pb.h"
#include "services/client_credentials.h"
#include "worker/indexer/block_encoder.h"
#include "worker/model/config.h"

namespace kvblock {

struct RemoteEncoderOptions {
  // The worker's gRPC address, host:port. Required. Default: "".
  std::string address;
  // Bearer token and TLS of the calls. Default: none (plaintext, no token).
  ClientCredentials credentials;
  // Deadline of the Health call that Connect makes. Default: 10 s.
  absl::Duration connect_timeout = absl::Seconds(10);
  // Deadline of one EncodeBlocks call. Default: 300 s.
  absl::Duration call_timeout = absl::Seconds(300);
  // Tokens per EncodeBlocks call at most; the worker's max_prompt_tokens lowers it. Default: 8192.
  int64_t max_call_tokens = 8192;
  // Payload bytes per EncodeBlocks response at most: batches are split to stay under it, and the
  // channel accepts responses this large (plus framing). Default: 64 MiB.
  int64_t max_call_bytes = int64_t{64} << 20;

  // INVALID_ARGUMENT naming the field (empty address, non-positive limits or timeouts).
  absl::Status Validate() const;
};

class RemoteBlockEncoder final : public BlockEncoder {
 public:
  // Opens a channel to options.address and asks Health. `fingerprint` and `kv_dtype` make the
  // keys the indexer writes (from its --model / --model-id); `config` (the same model's) gives
  // the vocabulary and the payload shape. Errors: INVALID_ARGUMENT for bad options;
  // FAILED_PRECONDITION when the worker is not ready or serves another model (both
  // fingerprints named); the call's status (UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED...)
  // when the worker cannot be asked.
  static absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> Connect(
      RemoteEncoderOptions options, const ModelFingerprint& fingerprint, KvDtype kv_dtype,
      const ModelConfig& config);

  const ModelFingerprint& fingerprint() const override { return fingerprint_; }
  BlockKey KeyOf(absl::Span<const int32_t> tokens) const override;
  int64_t vocab_size() const override { return config_.vocab_size; }
  // One or more EncodeBlocks calls, each call's payloads verified and handed to `sink` before
  // the next call. INVALID_ARGUMENT for an empty block or one longer than max_block_tokens()
  // (or whose payload exceeds max_call_bytes); the worker's status otherwise (UNAVAILABLE,
  // RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ...), prefixed with its address; DATA_LOSS when a
  // response is not the blocks asked for; the sink's. Not thread-safe.
  absl::Status Encode(absl::Span<const std::vector<int32_t>> blocks, PayloadSink sink) override;

  // The longest block one call can carry: min(max_call_tokens, the worker's max_prompt_tokens).
  int64_t max_block_tokens() const { return max_call_tokens_; }
  // EncodeBlocks calls made so far.
  int64_t calls() const { return calls_; }
  // The worker's backend, as its Health reports it.
  const std::string& worker_backend() const { return worker_backend_; }

 private:
  RemoteBlockEncoder(RemoteEncoderOptions options, const ModelFingerprint& fingerprint,
                     KvDtype kv_dtype, const ModelConfig& config);
  void PrepareContext(grpc::ClientContext* ctx, absl::Duration timeout) const;
  // The header a block's payload must carry.
  BlockMeta ExpectedMeta(absl::Span<const int32_t> tokens) const;
  // One EncodeBlocks call for blocks[first, first + count) (they fit one call); the verified
  // payloads go to `sink` with their indexes in `blocks`.
  absl::Status EncodeCall(absl::Span<const std::vector<int32_t>> blocks, size_t first, size_t count,
                          PayloadSink sink);

  const RemoteEncoderOptions options_;
  const ModelFingerprint fingerprint_;
  const KvDtype kv_dtype_;
  const ModelConfig config_;
  std::unique_ptr<v1::InferenceService::Stub> stub_;
  int64_t max_call_tokens_ = 0;
  int64_t calls_ = 0;
  std::string worker_backend_;
};

// OK when `payload` parses (header, size, checksum) and its header is `expected`; DATA_LOSS
// saying what differs otherwise. Pure function.
absl::Status VerifyPayload(absl::Span<const uint8_t> payload, const BlockMeta& expected);

}  // namespace kvblock
