// RemoteBlockEncoder (remote_block_encoder.h).
#include "worker/indexer/remote_block_encoder.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "services/auth.h"
#include "services/grpc_status.h"
#include "services/proto_convert.h"

namespace kvblock {
namespace {

std::string MetaString(const BlockMeta& m) {
  return absl::StrCat("key ", m.key.ToHex(), ", model ", m.model.ToHex(), ", dtype ",
                      std::string(DtypeName(m.dtype)), ", ", m.num_layers, " layers x ",
                      m.num_kv_heads, " kv heads x ", m.head_dim, " head dim, ", m.num_tokens,
                      " tokens");
}

}  // namespace

absl::Status RemoteEncoderOptions::Validate() const {
  if (address.empty()) return absl::InvalidArgumentError("the worker address is empty");
  if (!(connect_timeout > absl::ZeroDuration()) || !(call_timeout > absl::ZeroDuration())) {
    return absl::InvalidArgumentError("connect_timeout and call_timeout must be > 0");
  }
  if (max_call_tokens <= 0) return absl::InvalidArgumentError("max_call_tokens must be > 0");
  if (max_call_bytes <= 0 || max_call_bytes > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("max_call_bytes must be in (0, 1 GiB]");
  }
  return absl::OkStatus();
}

absl::Status VerifyPayload(absl::Span<const uint8_t> payload, const BlockMeta& expected) {
  absl::StatusOr<BlockView> view = BlockView::Parse(payload);
  if (!view.ok()) {
    return absl::DataLossError(absl::StrCat("the payload of block ", expected.key.ToHex(),
                                            " is malformed: ", view.status().message()));
  }
  if (view->meta() != expected) {
    return absl::DataLossError(absl::StrCat("a payload is not the block asked for: it holds ",
                                            MetaString(view->meta()), "; expected ",
                                            MetaString(expected)));
  }
  return absl::OkStatus();
}

RemoteBlockEncoder::RemoteBlockEncoder(RemoteEncoderOptions options,
                                       const ModelFingerprint& fingerprint, KvDtype kv_dtype,
                                       const ModelConfig& config)
    : options_(std::move(options)),
      fingerprint_(fingerprint),
      kv_dtype_(kv_dtype),
      config_(config) {}

absl::StatusOr<std::unique_ptr<RemoteBlockEncoder>> RemoteBlockEncoder::Connect(
    RemoteEncoderOptions options, const ModelFingerprint& fingerprint, KvDtype kv_dtype,
    const ModelConfig& config) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<RemoteBlockEncoder> e(
      new RemoteBlockEncoder(std::move(options), fingerprint, kv_dtype, config));
  const RemoteEncoderOptions& o = e->options_;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(o.max_call_bytes + (int64_t{1} << 20)));
  e->stub_ = v1::InferenceService::NewStub(
      grpc::CreateCustomChannel(o.address, MakeChannelCredentials(o.credentials), args));

  grpc::ClientContext ctx;
  e->PrepareContext(&ctx, o.connect_timeout);
  v1::HealthResponse health;
  if (absl::Status s = FromGrpcStatus(e->stub_->Health(&ctx, v1::HealthRequest(), &health));
      !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("worker ", o.address, ": ", s.message()));
  }
  if (!health.ready()) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", o.address, " is not ready"));
  }
  const ModelFingerprint theirs = FromProto(health.model_fingerprint());
  if (theirs != fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "worker ", o.address, " serves model ", theirs.ToHex(), " (", health.model_id(),
        ") but this index is keyed for model ", fingerprint.ToHex(),
        "; give --model the worker's model directory (and the same --model-id, if any)"));
  }
  e->max_call_tokens_ =
      std::min<int64_t>(o.max_call_tokens, static_cast<int64_t>(health.max_prompt_tokens()));
  if (e->max_call_tokens_ <= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker ", o.address, " reports max_prompt_tokens 0"));
  }
  e->worker_backend_ = health.backend();
  return e;
}

void RemoteBlockEncoder::PrepareContext(grpc::ClientContext* ctx, absl::Duration timeout) const {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!options_.credentials.auth_token.empty()) {
    ctx->AddMetadata(std::string(kAuthMetadataKey), BearerValue(options_.credentials.auth_token));
  }
}

BlockKey RemoteBlockEncoder::KeyOf(absl::Span<const int32_t> tokens) const {
  return ComputeBlockKey(fingerprint_, kv_dtype_, tokens);
}

BlockMeta RemoteBlockEncoder::ExpectedMeta(absl::Span<const int32_t> tokens) const {
  BlockMeta m;
  m.model = fingerprint_;
  m.key = KeyOf(tokens);
  m.dtype = kv_dtype_;
  m.num_layers = static_cast<uint32_t>(config_.num_layers);
  m.num_kv_heads = static_cast<uint32_t>(config_.num_kv_heads);
  m.head_dim = static_cast<uint32_t>(config_.head_dim);
  m.num_tokens = static_cast<uint32_t>(tokens.size());
  return m;
}

absl::Status RemoteBlockEncoder::Encode(absl::Span<const std::vector<int32_t>> blocks,
                                        PayloadSink sink) {
  size_t begin = 0;
  while (begin < blocks.size()) {
    // The longest run of blocks from `begin` that fits one call.
    int64_t tokens = 0;
    int64_t bytes = 0;
    size_t end = begin;
    for (; end < blocks.size(); ++end) {
      const int64_t n = static_cast<int64_t>(blocks[end].size());
      if (n == 0) return absl::InvalidArgumentError("cannot encode an empty block");
      if (n > max_call_tokens_) {
        return absl::InvalidArgumentError(absl::StrCat(
            "a block of ", n, " tokens is longer than worker ", options_.address,
            " encodes in one call (", max_call_tokens_, "); lower --max-block-tokens"));
      }
      const BlockMeta meta = ExpectedMeta(blocks[end]);
      if (absl::Status s = ValidateMeta(meta); !s.ok()) return s;
      const auto b = static_cast<int64_t>(PayloadBytes(meta));
      if (b > options_.max_call_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "a block's payload (", b, " bytes) exceeds max_call_bytes ", options_.max_call_bytes));
      }
      if (end > begin && (tokens + n > max_call_tokens_ || bytes + b > options_.max_call_bytes)) {
        break;
      }
      tokens += n;
      bytes += b;
    }
    if (absl::Status s = EncodeCall(blocks, begin, end - begin, sink); !s.ok()) return s;
    begin = end;
  }
  return absl::OkStatus();
}

absl::Status RemoteBlockEncoder::EncodeCall(absl::Span<const std::vector<int32_t>> blocks,
                                            size_t first, size_t count, PayloadSink sink) {
  v1::EncodeBlocksRequest req;
  req.set_dtype(ToProto(kv_dtype_));
  req.set_return_payloads(true);
  for (size_t i = first; i < first + count; ++i) {
    req.add_blocks()->mutable_tokens()->mutable_ids()->Add(blocks[i].begin(), blocks[i].end());
  }
  grpc::ClientContext ctx;
  PrepareContext(&ctx, options_.call_timeout);
  v1::EncodeBlocksResponse resp;
  ++calls_;
  if (absl::Status s = FromGrpcStatus(stub_->EncodeBlocks(&ctx, req, &resp)); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("worker ", options_.address, " EncodeBlocks: ", s.message()));
  }
  if (resp.blocks_size() != static_cast<int>(count)) {
    return absl::DataLossError(absl::StrCat("worker ", options_.address, " returned ",
                                            resp.blocks_size(), " blocks for ", count));
  }
  for (size_t j = 0; j < count; ++j) {
    const std::string& p = resp.blocks(static_cast<int>(j)).payload();
    const auto* data = reinterpret_cast<const uint8_t*>(p.data());
    if (absl::Status s =
            VerifyPayload(absl::MakeConstSpan(data, p.size()), ExpectedMeta(blocks[first + j]));
        !s.ok()) {
      return absl::DataLossError(absl::StrCat("worker ", options_.address, ": ", s.message()));
    }
    if (absl::Status s = sink(first + j, std::vector<uint8_t>(data, data + p.size())); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace kvblock
