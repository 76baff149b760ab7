// deploy_test_model DIR: writes a tiny random Llama checkpoint (config.json + model.safetensors,
// byte-level tokenizer) into DIR with the worker's own generator, for the live deploy test that
// runs `kvblock index` and `kvblock worker` from the rendered dev manifests.
#include <cstdio>
#include <string>

#include "worker/demo/random_model.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  kvblock::RandomLlamaOptions options;
  options.hidden_size = 64;
  options.intermediate_size = 160;
  options.num_layers = 2;
  options.num_heads = 4;
  options.num_kv_heads = 2;
  options.max_position_embeddings = 2048;
  options.seed = 20250917;
  if (absl::Status s = kvblock::WriteRandomLlama(argv[1], options); !s.ok()) {
    std::fprintf(stderr, "deploy_test_model: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
