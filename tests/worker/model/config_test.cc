#include "worker/model/config.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/worker/fixture_util.h"

namespace kvblock {
namespace {

using json = nlohmann::json;
using kernels::RopeType;

json BaseLlama() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 259, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "hidden_act": "silu", "eos_token_id": 257, "bos_token_id": 256})");
}

absl::StatusOr<ModelConfig> Parse(const json& j, const std::string& gen = "") {
  return ParseModelConfig(j.dump(), gen);
}

TEST(ModelConfigTest, ParsesEveryFixture) {
  struct Want {
    std::string name;
    Architecture arch;
    int64_t heads, kv_heads, head_dim;
    RopeType rope;
    bool tie, qkv_bias;
    std::vector<int32_t> eos;
  };
  const std::vector<Want> wants = {
      {"llama-tiny", Architecture::kLlama, 4, 2, 16, RopeType::kDefault, false, false, {257}},
      {"qwen2-tiny", Architecture::kQwen2, 6, 2, 16, RopeType::kDefault, true, true, {257}},
      {"llama3-tiny", Architecture::kLlama, 4, 2, 32, RopeType::kLlama3, false, false, {257, 258}},
      {"mistral-tiny", Architecture::kMistral, 4, 1, 16, RopeType::kDefault, false, false, {257}},
      {"llama-linear", Architecture::kLlama, 2, 1, 64, RopeType::kLinear, false, false, {257}},
      {"llama-dynamic", Architecture::kLlama, 2, 1, 128, RopeType::kDynamic, false, false, {257}},
  };
  for (const testing::FixtureSpec& f : testing::AllFixtures()) {
    auto c = LoadModelConfig(f.dir);
    ASSERT_TRUE(c.ok()) << f.name << ": " << c.status();
    const Want* w = nullptr;
    for (const Want& x : wants) {
      if (x.name == f.name) w = &x;
    }
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(c->architecture, w->arch) << f.name;
    EXPECT_EQ(c->num_heads, w->heads) << f.name;
    EXPECT_EQ(c->num_kv_heads, w->kv_heads) << f.name;
    EXPECT_EQ(c->head_dim, w->head_dim) << f.name;
    EXPECT_EQ(c->rope.type, w->rope) << f.name;
    EXPECT_EQ(c->tie_word_embeddings, w->tie) << f.name;
    EXPECT_EQ(c->qkv_bias, w->qkv_bias) << f.name;
    EXPECT_FALSE(c->o_bias) << f.name;
    EXPECT_EQ(c->eos_token_ids, w->eos) << f.name;
    EXPECT_EQ(c->bos_token_id, 256) << f.name;
    EXPECT_EQ(c->vocab_size, 259) << f.name;
    EXPECT_EQ(c->sliding_window, 0) << f.name;
  }
  auto l3 = LoadModelConfig(std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures/llama3-tiny");
  ASSERT_TRUE(l3.ok());
  EXPECT_DOUBLE_EQ(l3->rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(l3->rope.factor, 8.0);
  EXPECT_EQ(l3->rope.original_max_position_embeddings, 64);
  auto lin = LoadModelConfig(std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures/llama-linear");
  ASSERT_TRUE(lin.ok());
  EXPECT_DOUBLE_EQ(lin->rope.factor, 4.0);  // from the old {"type": "linear"} form
  auto qwen = LoadModelConfig(std::string(KVBLOCK_SHARED_DIR) + "/fixtures/qwen2-tiny");
  ASSERT_TRUE(qwen.ok());
  EXPECT_DOUBLE_EQ(qwen->rope.theta, 1e6);
}

TEST(ModelConfigTest, OldAndNewRopeFormsAgree) {
  json old_form = BaseLlama();
  old_form["rope_theta"] = 500000.0;
  old_form["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  json new_form = BaseLlama();
  new_form["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                                 {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                 {"original_max_position_embeddings", 8192}};
  auto a = Parse(old_form);
  auto b = Parse(new_form);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  for (const ModelConfig* c : {&*a, &*b}) {
    EXPECT_EQ(c->rope.type, RopeType::kLlama3);
    EXPECT_DOUBLE_EQ(c->rope.theta, 500000.0);
    EXPECT_DOUBLE_EQ(c->rope.factor, 8.0);
    EXPECT_EQ(c->rope.original_max_position_embeddings, 8192);
  }
  json typed = BaseLlama();
  typed["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  auto d = Parse(typed);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->rope.type, RopeType::kDynamic);
  EXPECT_EQ(d->rope.max_position_embeddings, 4096);
  json none = BaseLlama();
  none["rope_scaling"] = nullptr;
  auto n = Parse(none);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(n->rope.theta, 10000.0);
}

TEST(ModelConfigTest, HeadDimExplicitOrDerivedAndEosLists) {
  json j = BaseLlama();
  auto c = Parse(j);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->head_dim, 16);
  j["head_dim"] = 128;
  EXPECT_EQ(Parse(j)->head_dim, 128);
  j["head_dim"] = nullptr;
  EXPECT_EQ(Parse(j)->head_dim, 16);
  auto g = Parse(BaseLlama(), R"({"eos_token_id": [257, 7, 9], "bos_token_id": 1})");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->eos_token_ids, (std::vector<int32_t>{257, 7, 9}));
  EXPECT_EQ(g->bos_token_id, 1);
  json mistral = BaseLlama();
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["sliding_window"] = 4096;
  mistral["num_key_value_heads"] = 1;
  auto m = Parse(mistral);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->sliding_window, 4096);
  EXPECT_EQ(m->num_kv_heads, 1);
}

TEST(ModelConfigTest, UnsupportedThingsAreNamed) {
  json j = BaseLlama();
  j["architectures"] = {"GPT2LMHeadModel"};
  auto a = Parse(j);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(a.status().message().find("GPT2LMHeadModel"), std::string::npos);
  j = BaseLlama();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  auto y = Parse(j);
  EXPECT_EQ(y.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(y.status().message().find("yarn"), std::string::npos);
  j = BaseLlama();
  j["hidden_act"] = "gelu";
  EXPECT_NE(Parse(j).status().message().find("gelu"), std::string::npos);
}

TEST(ModelConfigTest, WrongTypesAndValuesNameTheKey) {
  struct Case {
    std::string key;
    json value;
  };
  const std::vector<Case> cases = {
      {"hidden_size", "64"},          {"hidden_size", -64},
      {"num_hidden_layers", 2.5},     {"vocab_size", json::array()},
      {"architectures", "LlamaForCausalLM"}, {"architectures", json::array()},
      {"rope_scaling", json::array({1, 2})}, {"rope_theta", "big"},
      {"rms_norm_eps", "small"},      {"tie_word_embeddings", "yes"},
      {"eos_token_id", "</s>"},       {"num_key_value_heads", 3},
      {"max_position_embeddings", 0}, {"head_dim", 15},
  };
  for (const Case& c : cases) {
    json j = BaseLlama();
    j[c.key] = c.value;
    auto r = Parse(j);
    ASSERT_FALSE(r.ok()) << c.key << "=" << c.value.dump();
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.key << ": " << r.status();
    if (c.key != "num_key_value_heads" && c.key != "head_dim") {
      EXPECT_NE(r.status().message().find(c.key), std::string::npos) << r.status();
    }
  }
  for (const char* bad : {"", "{", "[1]", "null", "{\"architectures\": [\"LlamaForCausalLM\"]}"}) {
    EXPECT_FALSE(ParseModelConfig(bad).ok()) << bad;
  }
  json llama3_missing = BaseLlama();
  llama3_missing["rope_parameters"] = {{"rope_type", "linear"}};
  EXPECT_NE(Parse(llama3_missing).status().message().find("factor"), std::string::npos);
  EXPECT_FALSE(Parse(BaseLlama(), "[]").ok());
  EXPECT_FALSE(Parse(BaseLlama(), R"({"eos_token_id": [1, "x"]})").ok());
  EXPECT_EQ(LoadModelConfig("/nonexistent/model").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvblock
