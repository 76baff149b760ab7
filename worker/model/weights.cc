#include "worker/model/weights.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cache/dtype.h"

namespace kvblock {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

absl::StatusOr<const float*> ModelWeights::Tensor(const std::string& name,
                                                  std::vector<int64_t> shape) {
  const TensorInfo* t = checkpoint_->Find(name);
  if (t == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", checkpoint_->dir(), ": missing tensor \"", name, "\""));
  }
  if (t->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", checkpoint_->dir(), ": tensor \"",
                                                   name, "\" has shape ", ShapeString(t->shape),
                                                   ", expected ", ShapeString(shape)));
  }
  const int64_t n = t->NumElements();
  num_parameters_ += n;
  switch (t->dtype) {
    case TensorDtype::kF32: {
      if (reinterpret_cast<uintptr_t>(t->bytes.data()) % alignof(float) == 0) {
        return reinterpret_cast<const float*>(t->bytes.data());  // in place, no copy
      }
      auto copy = std::make_unique<float[]>(n);
      std::memcpy(copy.get(), t->bytes.data(), t->bytes.size());
      converted_bytes_ += n * 4;
      owned_.push_back(std::move(copy));
      return owned_.back().get();
    }
    case TensorDtype::kBF16:
    case TensorDtype::kF16: {
      auto out = std::make_unique<float[]>(n);
      const uint8_t* p = t->bytes.data();
      const bool bf16 = t->dtype == TensorDtype::kBF16;
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8));
        out[i] = bf16 ? Bf16ToFloat(h) : F16ToFloat(h);
      }
      converted_bytes_ += n * 4;
      owned_.push_back(std::move(out));
      return owned_.back().get();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", checkpoint_->dir(), ": tensor \"", name, "\" has dtype ",
          std::string(TensorDtypeName(t->dtype)), " (supported: F32, BF16, F16)"));
  }
}

absl::StatusOr<LinearWeights> ModelWeights::Linear(const std::string& prefix, int64_t out,
                                                   int64_t in, bool bias) {
  LinearWeights l;
  l.out = out;
  l.in = in;
  absl::StatusOr<const float*> w = Tensor(prefix + ".weight", {out, in});
  if (!w.ok()) return w.status();
  l.weight = *w;
  if (bias) {
    absl::StatusOr<const float*> b = Tensor(prefix + ".bias", {out});
    if (!b.ok()) return b.status();
    l.bias = *b;
  }
  return l;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(
    std::shared_ptr<const Checkpoint> checkpoint, const ModelConfig& c) {
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  std::unique_ptr<ModelWeights> m(new ModelWeights());
  m->checkpoint_ = std::move(checkpoint);
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = c.num_heads * c.head_dim;
  const int64_t kv_dim = c.num_kv_heads * c.head_dim;
  absl::StatusOr<const float*> embed = m->Tensor("model.embed_tokens.weight", {c.vocab_size, hidden});
  if (!embed.ok()) return embed.status();
  m->embed_ = *embed;
  absl::StatusOr<const float*> norm = m->Tensor("model.norm.weight", {hidden});
  if (!norm.ok()) return norm.status();
  m->final_norm_ = *norm;
  if (c.tie_word_embeddings) {
    m->lm_head_ = LinearWeights{m->embed_, nullptr, c.vocab_size, hidden};
  } else {
    absl::StatusOr<LinearWeights> head = m->Linear("lm_head", c.vocab_size, hidden, false);
    if (!head.ok()) return head.status();
    m->lm_head_ = *head;
  }
  m->layers_.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& L = m->layers_[i];
    absl::StatusOr<const float*> in_norm = m->Tensor(p + "input_layernorm.weight", {hidden});
    if (!in_norm.ok()) return in_norm.status();
    L.input_norm = *in_norm;
    absl::StatusOr<const float*> post = m->Tensor(p + "post_attention_layernorm.weight", {hidden});
    if (!post.ok()) return post.status();
    L.post_attention_norm = *post;
    struct Spec {
      LinearWeights* dst;
      const char* name;
      int64_t out, in;
      bool bias;
    };
    for (const Spec& s : {Spec{&L.q, "self_attn.q_proj", q_dim, hidden, c.qkv_bias},
                          Spec{&L.k, "self_attn.k_proj", kv_dim, hidden, c.qkv_bias},
                          Spec{&L.v, "self_attn.v_proj", kv_dim, hidden, c.qkv_bias},
                          Spec{&L.o, "self_attn.o_proj", hidden, q_dim, c.o_bias},
                          Spec{&L.gate, "mlp.gate_proj", c.intermediate_size, hidden, c.mlp_bias},
                          Spec{&L.up, "mlp.up_proj", c.intermediate_size, hidden, c.mlp_bias},
                          Spec{&L.down, "mlp.down_proj", hidden, c.intermediate_size, c.mlp_bias}}) {
      absl::StatusOr<LinearWeights> l = m->Linear(p + s.name, s.out, s.in, s.bias);
      if (!l.ok()) return l.status();
      *s.dst = *l;
    }
  }
  return m;
}

}  // namespace kvblock
