#include "services/cache_ctl_command.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cache/block_payload.h"
#include "nlohmann/json.hpp"
#include "services/cache_client.h"
#include "services/cache_client_config.h"

namespace kvblock {

int CacheCtlExitCode(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 1;
    case absl::StatusCode::kNotFound:
      return 2;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return 3;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return 4;
    default:
      return 5;
  }
}

namespace {

struct CtlFlags {
  ClusterFlags cluster;
  std::vector<std::string> files;
  std::vector<std::string> keys;
  std::string key;
  std::string output;
  std::string model;
  std::string node;
  bool undrain = false;
};

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "cache-ctl: %s\n", s.ToString().c_str());
  return CacheCtlExitCode(s);
}

absl::StatusOr<std::unique_ptr<CacheClient>> MakeClient(const CtlFlags& f) {
  absl::StatusOr<CacheClientOptions> o = ClientOptionsFromFlags(f.cluster);
  if (!o.ok()) return o.status();
  o->max_attempts = 2;
  return CacheClient::Create(*std::move(o));
}

const char* TierName(v1::Tier t) {
  switch (t) {
    case v1::TIER_MEMORY:
      return "memory";
    case v1::TIER_DISK:
      return "disk";
    case v1::TIER_GPU:
      return "gpu";
    default:
      return "none";
  }
}

int Put(CacheClient& client, const CtlFlags& f) {
  for (const std::string& path : f.files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return Fail(absl::InvalidArgumentError(absl::StrCat("cannot read ", path)));
    std::vector<uint8_t> payload((std::istreambuf_iterator<char>(in)),
                                 std::istreambuf_iterator<char>());
    absl::StatusOr<BlockHeader> h = DecodeHeader(payload);
    if (!h.ok()) {
      return Fail(absl::Status(h.status().code(), absl::StrCat(path, ": ", h.status().message())));
    }
    if (absl::Status s = client.Put(h->meta.key, payload); !s.ok()) return Fail(s);
    std::printf("%s\n", nlohmann::json({{"file", path},
                                        {"key", h->meta.key.ToHex()},
                                        {"bytes", payload.size()}})
                            .dump()
                            .c_str());
  }
  return 0;
}

int Get(CacheClient& client, const CtlFlags& f) {
  absl::StatusOr<Hash128> key = Hash128::FromHex(f.key);
  if (!key.ok()) return Fail(key.status());
  std::vector<ClusterLookupResult> where = client.LookupCluster(absl::MakeConstSpan(&*key, 1));
  // Size the buffer from Lookup (FetchInto is the zero-copy path); fall back to Get.
  std::vector<uint8_t> data;
  absl::Status s;
  if (where[0].present) {
    data.resize(where[0].payload_bytes);
    absl::StatusOr<uint64_t> n = client.FetchInto(*key, absl::MakeSpan(data));
    if (n.ok()) data.resize(*n);
    s = n.status();
  }
  if (!where[0].present || absl::IsOutOfRange(s)) {
    absl::StatusOr<BlockBytes> b = client.Get(*key);
    s = b.status();
    if (b.ok()) data.assign(b->bytes.begin(), b->bytes.end());
  }
  if (!s.ok()) return Fail(s);
  std::ofstream out(f.output, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!out) return Fail(absl::InvalidArgumentError(absl::StrCat("cannot write ", f.output)));
  std::printf("%s\n",
              nlohmann::json({{"key", key->ToHex()}, {"bytes", data.size()}, {"file", f.output}})
                  .dump()
                  .c_str());
  return 0;
}

int Lookup(CacheClient& client, const CtlFlags& f) {
  std::vector<BlockKey> keys;
  for (const std::string& k : f.keys) {
    absl::StatusOr<Hash128> key = Hash128::FromHex(k);
    if (!key.ok()) return Fail(key.status());
    keys.push_back(*key);
  }
  std::vector<ClusterLookupResult> r = client.LookupCluster(keys);
  bool all = true;
  for (size_t i = 0; i < keys.size(); ++i) {
    all = all && r[i].present;
    nlohmann::json j = {{"key", keys[i].ToHex()}, {"present", r[i].present}};
    if (r[i].present) {
      j["tier"] = TierName(r[i].tier);
      j["bytes"] = r[i].payload_bytes;
      j["node"] = client.options().members[r[i].node];
    }
    std::printf("%s\n", j.dump().c_str());
  }
  return all ? 0 : 2;
}

int Delete(CacheClient& client, const CtlFlags& f) {
  if (!f.model.empty()) {
    absl::StatusOr<Hash128> model = Hash128::FromHex(f.model);
    if (!model.ok()) return Fail(model.status());
    absl::StatusOr<uint64_t> n = client.DeleteModel(*model);
    if (!n.ok()) return Fail(n.status());
    std::printf("%s\n", nlohmann::json({{"model", model->ToHex()}, {"deleted", *n}}).dump().c_str());
    return 0;
  }
  if (f.keys.empty()) return Fail(absl::InvalidArgumentError("delete needs KEY... or --model"));
  for (const std::string& k : f.keys) {
    absl::StatusOr<Hash128> key = Hash128::FromHex(k);
    if (!key.ok()) return Fail(key.status());
    if (absl::Status s = client.Delete(*key); !s.ok()) return Fail(s);
    std::printf("%s\n", nlohmann::json({{"key", key->ToHex()}, {"deleted", true}}).dump().c_str());
  }
  return 0;
}

int Stats(CacheClient& client) {
  absl::Status worst;
  const auto all = client.NodeStats();
  for (size_t i = 0; i < all.size(); ++i) {
    nlohmann::json j = {{"member", client.options().members[i]}};
    if (!all[i].ok()) {
      j["error"] = all[i].status().ToString();
      if (worst.ok()) worst = all[i].status();
    } else {
      j["node_id"] = all[i]->node_id();
      j["version"] = all[i]->version();
      j["draining"] = all[i]->draining();
      for (const v1::TierStats& t : all[i]->tiers()) {
        j["tiers"][TierName(t.tier())] = {{"blocks", t.blocks()},
                                          {"bytes", t.bytes()},
                                          {"capacity_bytes", t.capacity_bytes()},
                                          {"hits", t.hits()},
                                          {"misses", t.misses()},
                                          {"evictions", t.evictions()},
                                          {"corrupt_records", t.corrupt_records()}};
      }
    }
    std::printf("%s\n", j.dump().c_str());
  }
  return worst.ok() ? 0 : Fail(worst);
}

int Drain(CacheClient& client, const CtlFlags& f) {
  const auto& members = client.options().members;
  size_t index = members.size();
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] == f.node) index = i;
  }
  size_t n = 0;
  if (index == members.size() && absl::SimpleAtoi(f.node, &n) && n < members.size()) index = n;
  if (index == members.size()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("'", f.node, "' is not a member")));
  }
  absl::StatusOr<v1::DrainResponse> r = client.DrainNode(index, f.undrain);
  if (!r.ok()) return Fail(r.status());
  std::printf("%s\n", nlohmann::json({{"member", members[index]},
                                      {"draining", r->draining()},
                                      {"inflight_calls", r->inflight_calls()}})
                          .dump()
                          .c_str());
  return 0;
}

}  // namespace

void AddCacheCtlCommand(CLI::App& app) {
  auto f = std::make_shared<CtlFlags>();
  CLI::App* cmd = app.add_subcommand("cache-ctl", "Operate a cache cluster");
  AddClusterFlags(*cmd, &f->cluster);
  cmd->require_subcommand(1);
  auto run = [f](auto fn) {
    return [f, fn] {
      absl::StatusOr<std::unique_ptr<CacheClient>> client = MakeClient(*f);
      if (!client.ok()) throw CLI::RuntimeError(Fail(client.status()));
      throw CLI::RuntimeError(fn(**client, *f));
    };
  };
  CLI::App* put = cmd->add_subcommand("put", "Store block payload files");
  put->add_option("files", f->files, "Payload files")->required()->check(CLI::ExistingFile);
  put->callback(run([](CacheClient& c, const CtlFlags& fl) { return Put(c, fl); }));

  CLI::App* get = cmd->add_subcommand("get", "Fetch one block into a file");
  get->add_option("key", f->key, "Block key (32 hex digits)")->required();
  get->add_option("-o,--output", f->output, "Output file")->required();
  get->callback(run([](CacheClient& c, const CtlFlags& fl) { return Get(c, fl); }));

  CLI::App* lookup = cmd->add_subcommand("lookup", "Where keys are (exit 2 if any is absent)");
  lookup->add_option("keys", f->keys, "Block keys")->required();
  lookup->callback(run([](CacheClient& c, const CtlFlags& fl) { return Lookup(c, fl); }));

  CLI::App* del = cmd->add_subcommand("delete", "Delete keys, or every block of a model");
  del->add_option("keys", f->keys, "Block keys");
  del->add_option("--model", f->model, "Model fingerprint (32 hex digits)");
  del->callback(run([](CacheClient& c, const CtlFlags& fl) { return Delete(c, fl); }));

  CLI::App* stats = cmd->add_subcommand("stats", "Per-node counters (JSON lines)");
  stats->callback(run([](CacheClient& c, const CtlFlags&) { return Stats(c); }));

  CLI::App* drain = cmd->add_subcommand("drain", "Stop (or resume) writes on one node");
  drain->add_option("node", f->node, "host:port or member index")->required();
  drain->add_flag("--undrain", f->undrain, "Serve writes again");
  drain->callback(run([](CacheClient& c, const CtlFlags& fl) { return Drain(c, fl); }));
}

}  // namespace kvblock
