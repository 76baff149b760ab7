#include "cache/inspect_command.h"

#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "cache/block_payload.h"
#include "nlohmann/json.hpp"

namespace kvblock {
namespace {

int RunInspect(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "kvblock inspect: cannot open " << path << "\n";
    return 1;
  }
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<BlockView> view = BlockView::Parse(bytes);
  if (!view.ok()) {
    std::cerr << "kvblock inspect: " << path << ": " << view.status().message() << "\n";
    return 1;
  }
  const BlockMeta& m = view->meta();
  nlohmann::json j = {
      {"key", m.key.ToHex()},          {"model_fingerprint", m.model.ToHex()},
      {"dtype", DtypeName(m.dtype)},   {"num_layers", m.num_layers},
      {"num_kv_heads", m.num_kv_heads}, {"head_dim", m.head_dim},
      {"num_tokens", m.num_tokens},    {"payload_bytes", bytes.size()},
      {"layout_version", kBlockLayoutVersion}};
  std::cout << j.dump(2) << "\n";
  return 0;
}

}  // namespace

void AddInspectCommand(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("inspect", "Verify a block payload file and print its header");
  auto path = std::make_shared<std::string>();
  cmd->add_option("file", *path, "Block payload file")->required();
  cmd->callback([path] { throw CLI::RuntimeError(RunInspect(*path)); });
}

}  // namespace kvblock
