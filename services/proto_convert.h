// Conversions between the cache module's types and their kvblock.v1 protobuf messages, in one
// place so servers, clients and workers agree.
#pragma once

#include "absl/status/statusor.h"
#include "cache/block_key.h"
#include "cache/block_payload.h"
#include "cache/dtype.h"
#include "kvblock/v1/common.pb.h"

namespace kvblock {

void ToProto(const Hash128& h, v1::Hash128* out);
Hash128 FromProto(const v1::Hash128& h);

v1::KvDtype ToProto(KvDtype dtype);
// INVALID_ARGUMENT for UNSPECIFIED or unknown values.
absl::StatusOr<KvDtype> FromProto(v1::KvDtype dtype);

void ToProto(const BlockMeta& meta, v1::BlockShape* out);

}  // namespace kvblock
