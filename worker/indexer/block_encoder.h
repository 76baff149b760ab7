// How the indexer turns blocks into payloads, behind one small interface: LocalBlockEncoder
// runs the indexer's own Engine; RemoteBlockEncoder (remote_block_encoder.h) sends the blocks
// to a worker's InferenceService.EncodeBlocks (`kvblock index --worker`), so the indexer host
// needs no accelerator and loads no weights. The Indexer depends only on this interface.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "cache/block_key.h"
#include "worker/engine/engine.h"

namespace kvblock {

class BlockEncoder {
 public:
  virtual ~BlockEncoder() = default;

  // The model the payloads are for; with the KV dtype it makes the block keys.
  virtual const ModelFingerprint& fingerprint() const = 0;
  // The key of a block's payload. Thread-safe.
  virtual BlockKey KeyOf(absl::Span<const int32_t> tokens) const = 0;
  // Token ids must be below this.
  virtual int64_t vocab_size() const = 0;
  // Receives the payload of blocks[index]; an error stops Encode, which returns it.
  using PayloadSink = absl::FunctionRef<absl::Status(size_t index, std::vector<uint8_t> payload)>;
  // Encodes each block alone at positions 0..n-1 and hands every payload to `sink`, in the order
  // of `blocks`, as soon as it is there (so a caller holds a call's worth of payloads at most).
  // Each payload is the block's (a remote implementation verifies header, checksum and key).
  // Errors: the sink's; INVALID_ARGUMENT for an empty or too long block; the implementation's
  // otherwise (a remote worker's UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED; DATA_LOSS
  // for a payload that is not the block's). Not required to be thread-safe.
  virtual absl::Status Encode(absl::Span<const std::vector<int32_t>> blocks, PayloadSink sink) = 0;
};

// Encodes with an Engine in this process: one Engine::EncodeBlocks over the call's blocks (which
// runs them in backend passes of at most EngineOptions::encode_batch_tokens; the indexer's batch
// bounds the payloads held), then hands each payload to the sink in order.
class LocalBlockEncoder final : public BlockEncoder {
 public:
  // `engine` is not owned and must outlive the encoder.
  explicit LocalBlockEncoder(Engine* engine) : engine_(engine) {}

  const ModelFingerprint& fingerprint() const override { return engine_->fingerprint(); }
  BlockKey KeyOf(absl::Span<const int32_t> tokens) const override { return engine_->KeyOf(tokens); }
  int64_t vocab_size() const override { return engine_->backend().config().vocab_size; }
  // Errors: Engine::EncodeBlocks's, the sink's.
  absl::Status Encode(absl::Span<const std::vector<int32_t>> blocks, PayloadSink sink) override;

 private:
  Engine* engine_;
};

}  // namespace kvblock
