#include "services/proto_convert.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvblock {

void ToProto(const Hash128& h, v1::Hash128* out) {
  out->set_hi(h.hi);
  out->set_lo(h.lo);
}

Hash128 FromProto(const v1::Hash128& h) { return Hash128{h.hi(), h.lo()}; }

v1::KvDtype ToProto(KvDtype dtype) { return static_cast<v1::KvDtype>(dtype); }

absl::StatusOr<KvDtype> FromProto(v1::KvDtype dtype) {
  const int v = static_cast<int>(dtype);
  if (v < 0 || v > 255 || !IsValidDtype(static_cast<uint8_t>(v))) {
    return absl::InvalidArgumentError(absl::StrCat("KV dtype ", v, " is not supported"));
  }
  return static_cast<KvDtype>(v);
}

void ToProto(const BlockMeta& meta, v1::BlockShape* out) {
  ToProto(meta.model, out->mutable_model_fingerprint());
  out->set_dtype(ToProto(meta.dtype));
  out->set_num_layers(meta.num_layers);
  out->set_num_kv_heads(meta.num_kv_heads);
  out->set_head_dim(meta.head_dim);
  out->set_num_tokens(meta.num_tokens);
}

}  // namespace kvblock
