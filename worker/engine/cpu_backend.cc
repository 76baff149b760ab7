#include "worker/engine/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <new>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/mlp.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"

namespace kvblock {
namespace {

using kernels::Contiguous2;
using kernels::Contiguous3;
using kernels::View2;
using kernels::View3;

class CpuKvSequence : public KvSequence {
 public:
  CpuKvSequence(const ModelConfig& c, int64_t capacity)
      : capacity_(capacity),
        layer_elems_(c.num_kv_heads * capacity * c.head_dim),
        k_(c.num_layers * layer_elems_),
        v_(c.num_layers * layer_elems_) {}

  int64_t length() const override { return length_; }
  int64_t capacity() const override { return capacity_; }

  float* K(int64_t layer) { return k_.data() + layer * layer_elems_; }
  float* V(int64_t layer) { return v_.data() + layer * layer_elems_; }
  const float* K(int64_t layer) const { return k_.data() + layer * layer_elems_; }
  const float* V(int64_t layer) const { return v_.data() + layer * layer_elems_; }

  int64_t length_ = 0;
  // dynamic RoPE: the longest sequence length seen so far (transformers' max_seq_len_cached).
  int64_t rope_len_ = 0;

 private:
  int64_t capacity_;
  int64_t layer_elems_;
  std::vector<float> k_;
  std::vector<float> v_;
};

// y[rows][w.out] = x[rows][w.in] W^T + b: one sgemm over all rows from `gemm_min_rows` rows on,
// else one sgemv per row (OpenBLAS sgemm packs the whole weight matrix on every call, which
// costs more than reading the weights again when the rows are few).
void Linear(const float* x, int64_t rows, const LinearWeights& w, float* y, int64_t gemm_min_rows) {
  if (rows < std::max<int64_t>(gemm_min_rows, 2)) {
    for (int64_t r = 0; r < rows; ++r) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(w.out), static_cast<int>(w.in),
                  1.0f, w.weight, static_cast<int>(w.in), x + r * w.in, 1, 0.0f, y + r * w.out, 1);
    }
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows),
                static_cast<int>(w.out), static_cast<int>(w.in), 1.0f, x, static_cast<int>(w.in),
                w.weight, static_cast<int>(w.in), 0.0f, y, static_cast<int>(w.out));
  }
  if (w.bias != nullptr) {
    for (int64_t r = 0; r < rows; ++r) {
      float* yr = y + r * w.out;
      for (int64_t i = 0; i < w.out; ++i) yr[i] += w.bias[i];
    }
  }
}

class CpuBackend : public Backend {
 public:
  CpuBackend(std::shared_ptr<const ModelWeights> weights, const ModelConfig& config,
             const CpuBackendOptions& options)
      : weights_(std::move(weights)), config_(config), options_(options) {
    threads_ = options_.attention_threads > 0
                   ? options_.attention_threads
                   : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }

  absl::Status Init() {
    base_inv_freq_.resize(config_.head_dim / 2);
    return kernels::ComputeRopeInvFreq(config_.rope, static_cast<int>(config_.head_dim), 0,
                                       absl::MakeSpan(base_inv_freq_));
  }

  std::string_view name() const override { return "cpu"; }
  const ModelConfig& config() const override { return config_; }

  absl::StatusOr<std::unique_ptr<KvSequence>> NewSequence(int64_t capacity) override {
    if (capacity <= 0) return absl::InvalidArgumentError("sequence capacity must be > 0");
    const int64_t floats = 2 * config_.num_layers * config_.num_kv_heads * capacity * config_.head_dim;
    if (floats > (int64_t{1} << 36)) {
      return absl::ResourceExhaustedError(absl::StrCat("KV cache of ", capacity, " tokens needs ",
                                                       floats * 4 >> 20, " MiB"));
    }
    try {
      return std::unique_ptr<KvSequence>(new CpuKvSequence(config_, capacity));
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a KV cache of ", capacity, " tokens"));
    }
  }

  absl::Status Forward(KvSequence& seq_base, absl::Span<const int32_t> tokens, int64_t logit_rows,
                       absl::Span<float> logits) override;
  absl::Status ForwardBatch(absl::Span<KvSequence* const> seqs,
                            absl::Span<const absl::Span<const int32_t>> tokens) override;
  absl::Status DecodeStep(absl::Span<KvSequence* const> seqs, absl::Span<const int32_t> tokens,
                          absl::Span<float> logits) override;
  absl::Status AppendBlock(KvSequence& seq_base, const BlockView& block) override;
  absl::Status ReadKv(const KvSequence& seq_base, int64_t begin, int64_t n, absl::Span<float> k,
                      absl::Span<float> v) const override;

 private:
  // The frequencies for a sequence that now reaches `seq_len` tokens.
  absl::Status InvFreqFor(CpuKvSequence& seq, int64_t seq_len, std::vector<float>& inv) const {
    if (config_.rope.type != kernels::RopeType::kDynamic) {
      inv = base_inv_freq_;
      return absl::OkStatus();
    }
    seq.rope_len_ = std::max(seq.rope_len_, seq_len);
    inv.resize(config_.head_dim / 2);
    return kernels::ComputeRopeInvFreq(config_.rope, static_cast<int>(config_.head_dim),
                                       seq.rope_len_, absl::MakeSpan(inv));
  }

  // Rows [row0, row0 + n) of a Run's batch are the next n tokens of `seq`.
  struct Part {
    CpuKvSequence* seq;
    int64_t row0;
    int64_t n;
  };
  // The model over a batch of token rows split into parts (Forward: one part; ForwardBatch: one
  // part per sequence; DecodeStep: one part of one row per sequence), the projections as one
  // GEMM over all rows (or one per part with `gemm_per_part`), attention per part;
  // logits of the last `logit_rows` rows. Arguments are checked by the callers.
  absl::Status Run(absl::Span<const Part> parts, absl::Span<const int32_t> tokens,
                   int64_t logit_rows, absl::Span<float> logits, bool gemm_per_part = false);
  // Attention of one part, its KV heads split over `threads` threads.
  absl::Status Attention(View3<const float> q, View3<const float> k, View3<const float> v,
                         int64_t num_cached, int threads, View3<float> out) const;

  std::shared_ptr<const ModelWeights> weights_;
  ModelConfig config_;
  CpuBackendOptions options_;
  int threads_ = 1;
  std::vector<float> base_inv_freq_;
};

// Runs fn(0) .. fn(count - 1) on up to `threads` threads (the caller's included); the first
// error, in index order.
absl::Status ParallelFor(int count, int threads, const std::function<absl::Status(int)>& fn) {
  threads = std::max(1, std::min(threads, count));
  if (threads == 1) {
    for (int i = 0; i < count; ++i) {
      if (absl::Status s = fn(i); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  std::vector<absl::Status> status(count);
  // Thread t takes indices t, t + threads, ...
  auto run = [&](int t) {
    for (int i = t; i < count; i += threads) status[i] = fn(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(run, t);
  run(0);
  for (std::thread& t : pool) t.join();
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Attention(View3<const float> q, View3<const float> k,
                                   View3<const float> v, int64_t num_cached, int threads,
                                   View3<float> out) const {
  const float scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  const int64_t ctx = k.d1;
  const int64_t kv_heads = k.d0;
  const int64_t group = q.d1 / kv_heads;
  const int parts = static_cast<int>(std::min<int64_t>(threads, kv_heads));
  std::vector<float> workspace(parts * kernels::AttentionWorkspaceFloats(ctx));
  // Part p takes KV heads [p * kv_heads / parts, (p + 1) * kv_heads / parts) and their query heads.
  return ParallelFor(parts, parts, [&](int p) -> absl::Status {
    const int64_t h0 = p * kv_heads / parts;
    const int64_t h1 = (p + 1) * kv_heads / parts;
    View3<const float> qp{q.data + h0 * group * q.stride1, q.d0, (h1 - h0) * group, q.d2,
                          q.stride0, q.stride1};
    View3<const float> kp{k.data + h0 * k.stride0, h1 - h0, k.d1, k.d2, k.stride0, k.stride1};
    View3<const float> vp{v.data + h0 * v.stride0, h1 - h0, v.d1, v.d2, v.stride0, v.stride1};
    View3<float> op{out.data + h0 * group * out.stride1, out.d0, (h1 - h0) * group, out.d2,
                    out.stride0, out.stride1};
    absl::Span<float> ws = absl::MakeSpan(workspace).subspan(p * ctx, ctx);
    return kernels::BlockAttention(qp, kp, vp, num_cached, scale, op, ws);
  });
}

absl::Status CpuBackend::Forward(KvSequence& seq_base, absl::Span<const int32_t> tokens,
                                 int64_t logit_rows, absl::Span<float> logits) {
  auto& seq = static_cast<CpuKvSequence&>(seq_base);
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t start = seq.length();
  if (n == 0) return absl::InvalidArgumentError("forward: no tokens");
  if (start + n > seq.capacity()) {
    return absl::InvalidArgumentError(absl::StrCat("forward: ", start, " + ", n,
                                                   " tokens exceed the sequence capacity ",
                                                   seq.capacity()));
  }
  if (logit_rows < 0 || logit_rows > n ||
      static_cast<int64_t>(logits.size()) < logit_rows * c.vocab_size) {
    return absl::InvalidArgumentError("forward: bad logit rows or logits span too small");
  }
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i],
                                                     " is outside the vocabulary of ", c.vocab_size));
    }
  }
  const Part part{&seq, 0, n};
  return Run({&part, 1}, tokens, logit_rows, logits);
}

absl::Status CpuBackend::ForwardBatch(absl::Span<KvSequence* const> seqs,
                                      absl::Span<const absl::Span<const int32_t>> tokens) {
  if (absl::Status s = CheckForwardBatch(seqs, tokens); !s.ok()) return s;
  std::vector<Part> parts(seqs.size());
  std::vector<int32_t> rows;
  for (size_t i = 0; i < seqs.size(); ++i) {
    parts[i] = {static_cast<CpuKvSequence*>(seqs[i]), static_cast<int64_t>(rows.size()),
                static_cast<int64_t>(tokens[i].size())};
    rows.insert(rows.end(), tokens[i].begin(), tokens[i].end());
  }
  return Run(parts, rows, 0, {}, options_.batch_invariant);
}

absl::Status CpuBackend::DecodeStep(absl::Span<KvSequence* const> seqs,
                                    absl::Span<const int32_t> tokens, absl::Span<float> logits) {
  if (absl::Status s = CheckDecodeStep(seqs, tokens, logits); !s.ok()) return s;
  std::vector<Part> parts(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    parts[i] = {static_cast<CpuKvSequence*>(seqs[i]), static_cast<int64_t>(i), 1};
  }
  return Run(parts, tokens, static_cast<int64_t>(seqs.size()), logits);
}

absl::Status CpuBackend::Run(absl::Span<const Part> parts, absl::Span<const int32_t> tokens,
                             int64_t logit_rows, absl::Span<float> logits, bool gemm_per_part) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t hidden = c.hidden_size;
  const int64_t hd = c.head_dim;
  const int64_t q_dim = c.num_heads * hd;
  const int64_t kv_dim = c.num_kv_heads * hd;
  const ModelWeights& w = *weights_;

  // Activations for this call: row r is token r of the batch, whatever its sequence.
  std::vector<float> x(n * hidden), h(n * hidden), q(n * q_dim), k(n * kv_dim), v(n * kv_dim),
      attn(n * q_dim), proj(n * hidden), gate(n * c.intermediate_size), up(n * c.intermediate_size);
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(x.data() + i * hidden, w.embed() + static_cast<int64_t>(tokens[i]) * hidden,
                hidden * sizeof(float));
  }
  // RoPE table rows: each part's tokens at its own positions (and, for dynamic RoPE, with its own
  // sequence's frequencies).
  std::vector<float> cos(n * hd / 2), sin(n * hd / 2);
  int64_t attention_work = 0;
  for (const Part& p : parts) {
    const int64_t start = p.seq->length();
    std::vector<float> inv;
    if (absl::Status s = InvFreqFor(*p.seq, start + p.n, inv); !s.ok()) return s;
    std::vector<int64_t> pos(p.n);
    for (int64_t i = 0; i < p.n; ++i) pos[i] = start + i;
    const int64_t half = hd / 2;
    if (absl::Status s = kernels::BuildRopeTable(
            inv, pos, absl::MakeSpan(cos).subspan(p.row0 * half, p.n * half),
            absl::MakeSpan(sin).subspan(p.row0 * half, p.n * half));
        !s.ok()) {
      return s;
    }
    attention_work += p.n * c.num_heads * (start + p.n) * hd;
  }
  // Threads for attention: across the parts when there are several (a decode or encode batch),
  // else across one part's KV heads; one thread for small work.
  const int attention_threads =
      attention_work >= options_.attention_parallel_min_work ? threads_ : 1;
  const int part_threads = parts.size() > 1 ? attention_threads : 1;
  const int head_threads = parts.size() > 1 ? 1 : attention_threads;

  auto X = Contiguous2(x.data(), n, hidden);
  auto H = Contiguous2(h.data(), n, hidden);
  auto P = Contiguous2<const float>(proj.data(), n, hidden);
  // A projection of every row of the batch.
  auto linear = [&](const float* in, const LinearWeights& lw, float* out) {
    if (!gemm_per_part) return Linear(in, n, lw, out, options_.gemm_min_rows);
    for (const Part& p : parts) {
      Linear(in + p.row0 * lw.in, p.n, lw, out + p.row0 * lw.out, options_.gemm_min_rows);
    }
  };
  absl::Status s = kernels::RmsNorm(X, w.layers()[0].input_norm, c.rms_norm_eps, H);
  for (int64_t l = 0; l < c.num_layers && s.ok(); ++l) {
    const LayerWeights& L = w.layers()[l];
    linear(h.data(), L.q, q.data());
    linear(h.data(), L.k, k.data());
    linear(h.data(), L.v, v.data());
    if (s = kernels::ApplyRope(Contiguous3(q.data(), n, c.num_heads, hd), cos, sin); !s.ok()) break;
    if (s = kernels::ApplyRope(Contiguous3(k.data(), n, c.num_kv_heads, hd), cos, sin); !s.ok()) break;
    s = ParallelFor(static_cast<int>(parts.size()), part_threads, [&](int pi) -> absl::Status {
      const Part& p = parts[pi];
      const int64_t start = p.seq->length();
      const int64_t cap = p.seq->capacity();
      float* kc = p.seq->K(l);
      float* vc = p.seq->V(l);
      for (int64_t i = 0; i < p.n; ++i) {
        const int64_t r = p.row0 + i;
        for (int64_t g = 0; g < c.num_kv_heads; ++g) {
          std::memcpy(kc + (g * cap + start + i) * hd, k.data() + (r * c.num_kv_heads + g) * hd, hd * 4);
          std::memcpy(vc + (g * cap + start + i) * hd, v.data() + (r * c.num_kv_heads + g) * hd, hd * 4);
        }
      }
      View3<const float> K{kc, c.num_kv_heads, start + p.n, hd, cap * hd, hd};
      View3<const float> V{vc, c.num_kv_heads, start + p.n, hd, cap * hd, hd};
      return Attention(Contiguous3<const float>(q.data() + p.row0 * q_dim, p.n, c.num_heads, hd),
                       K, V, start, head_threads,
                       Contiguous3(attn.data() + p.row0 * q_dim, p.n, c.num_heads, hd));
    });
    if (!s.ok()) break;
    linear(attn.data(), L.o, proj.data());
    if (s = kernels::AddRmsNorm(X, P, L.post_attention_norm, c.rms_norm_eps, H); !s.ok()) break;
    linear(h.data(), L.gate, gate.data());
    linear(h.data(), L.up, up.data());
    auto G = Contiguous2(gate.data(), n, c.intermediate_size);
    if (s = kernels::SwiGlu(G, Contiguous2<const float>(up.data(), n, c.intermediate_size), G); !s.ok()) break;
    linear(gate.data(), L.down, proj.data());
    if (l + 1 < c.num_layers) {
      s = kernels::AddRmsNorm(X, P, w.layers()[l + 1].input_norm, c.rms_norm_eps, H);
    } else if (logit_rows > 0) {
      // Only the rows whose logits are wanted go through the final norm and the head.
      const int64_t r0 = n - logit_rows;
      s = kernels::AddRmsNorm(View2<float>{x.data() + r0 * hidden, logit_rows, hidden, hidden},
                              View2<const float>{proj.data() + r0 * hidden, logit_rows, hidden, hidden},
                              w.final_norm(), c.rms_norm_eps,
                              View2<float>{h.data() + r0 * hidden, logit_rows, hidden, hidden});
      if (s.ok()) {
        Linear(h.data() + r0 * hidden, logit_rows, w.lm_head(), logits.data(),
               options_.gemm_min_rows);
      }
    }
  }
  if (!s.ok()) return s;
  for (const Part& p : parts) p.seq->length_ += p.n;
  return absl::OkStatus();
}

absl::Status CpuBackend::AppendBlock(KvSequence& seq_base, const BlockView& block) {
  auto& seq = static_cast<CpuKvSequence&>(seq_base);
  const ModelConfig& c = config_;
  const BlockMeta& m = block.meta();
  if (m.num_layers != c.num_layers || m.num_kv_heads != c.num_kv_heads || m.head_dim != c.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block ", m.key.ToHex(), " has ", m.num_layers, " layers x ", m.num_kv_heads, " kv heads x ",
        m.head_dim, " head_dim; the model has ", c.num_layers, " x ", c.num_kv_heads, " x ", c.head_dim));
  }
  const int64_t n = m.num_tokens;
  const int64_t offset = seq.length();
  if (offset + n > seq.capacity()) {
    return absl::InvalidArgumentError("append block: sequence capacity exceeded");
  }
  std::vector<float> inv;
  if (absl::Status s = InvFreqFor(seq, offset + n, inv); !s.ok()) return s;
  const int64_t hd = c.head_dim;
  const int64_t cap = seq.capacity();
  const int64_t elems = static_cast<int64_t>(LayerElements(m));
  std::vector<float> k(elems), v(elems);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    block.ReadLayerF32(static_cast<uint32_t>(l), k.data(), v.data());
    if (absl::Status s = kernels::ReencodeK(Contiguous3(k.data(), c.num_kv_heads, n, hd), offset, inv);
        !s.ok()) {
      return s;
    }
    for (int64_t g = 0; g < c.num_kv_heads; ++g) {
      std::memcpy(seq.K(l) + (g * cap + offset) * hd, k.data() + g * n * hd, n * hd * 4);
      std::memcpy(seq.V(l) + (g * cap + offset) * hd, v.data() + g * n * hd, n * hd * 4);
    }
  }
  seq.length_ = offset + n;
  return absl::OkStatus();
}

absl::Status CpuBackend::ReadKv(const KvSequence& seq_base, int64_t begin, int64_t n,
                                absl::Span<float> k, absl::Span<float> v) const {
  const auto& seq = static_cast<const CpuKvSequence&>(seq_base);
  const ModelConfig& c = config_;
  const int64_t hd = c.head_dim;
  const int64_t per_layer = c.num_kv_heads * n * hd;
  if (begin < 0 || n <= 0 || begin + n > seq.length()) {
    return absl::InvalidArgumentError(absl::StrCat("read kv: range [", begin, ", ", begin + n,
                                                   ") outside the sequence of ", seq.length()));
  }
  if (static_cast<int64_t>(k.size()) != c.num_layers * per_layer || v.size() != k.size()) {
    return absl::InvalidArgumentError("read kv: output spans have the wrong size");
  }
  const int64_t cap = seq.capacity();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (int64_t g = 0; g < c.num_kv_heads; ++g) {
      std::memcpy(k.data() + l * per_layer + g * n * hd, seq.K(l) + (g * cap + begin) * hd, n * hd * 4);
      std::memcpy(v.data() + l * per_layer + g * n * hd, seq.V(l) + (g * cap + begin) * hd, n * hd * 4);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CpuBackendOptions::Validate() const {
  if (attention_threads < 0 || attention_parallel_min_work < 0 || gemm_min_rows < 0) {
    return absl::InvalidArgumentError("cpu backend options: negative value");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(
    std::shared_ptr<const ModelWeights> weights, const ModelConfig& config,
    const CpuBackendOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (weights == nullptr) return absl::InvalidArgumentError("cpu backend: no weights");
  auto backend = std::make_unique<CpuBackend>(std::move(weights), config, options);
  if (absl::Status s = backend->Init(); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace kvblock
