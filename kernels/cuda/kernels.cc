// Host-side adapter of the CUDA kernels: argument checks and cudaError_t/cublasStatus_t ->
// absl::Status. The launches themselves live in the .cu files (kernels/cuda/internal/launch.h).
#include "kernels/cuda/kernels.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/internal/launch.h"

namespace kvblock::cuda {
namespace {

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status Positive(std::initializer_list<int64_t> values, std::string_view what) {
  for (int64_t v : values) {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": sizes must be positive"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(Sv(what), ": CUDA error ", static_cast<int>(err), " (",
                                          cudaGetErrorName(err), "): ", cudaGetErrorString(err)));
}

absl::Status CublasStatus(cublasStatus_t st, std::string_view what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(Sv(what), ": cuBLAS error ", static_cast<int>(st), " (",
                                          cublasGetStatusString(st), ")"));
}

absl::Status Embedding(DType dtype, const int32_t* ids, int32_t num_tokens, const void* table,
                       int32_t vocab, int32_t hidden, void* out, cudaStream_t stream) {
  if (auto s = Positive({num_tokens, vocab, hidden}, "Embedding"); !s.ok()) return s;
  return CudaStatus(
      internal::LaunchEmbedding(dtype, ids, num_tokens, table, vocab, hidden, out, stream),
      "Embedding");
}

absl::Status AddRmsNorm(DType dtype, void* residual, const void* delta, const void* weight,
                        int32_t rows, int32_t hidden, float eps, void* out, cudaStream_t stream) {
  if (auto s = Positive({rows, hidden}, "AddRmsNorm"); !s.ok()) return s;
  if (!(eps > 0.f)) return absl::InvalidArgumentError("AddRmsNorm: eps must be > 0");
  return CudaStatus(
      internal::LaunchAddRmsNorm(dtype, residual, delta, weight, rows, hidden, eps, out, stream),
      "AddRmsNorm");
}

absl::Status RopeStore(const RopeStoreParams& p, cudaStream_t stream) {
  if (auto s = Positive({p.num_tokens, p.num_heads, p.num_kv_heads, p.head_dim}, "RopeStore");
      !s.ok()) {
    return s;
  }
  if (p.head_dim % 2 != 0) return absl::InvalidArgumentError("RopeStore: head_dim must be even");
  if (p.qkv_stride < int64_t{p.num_heads + 2 * p.num_kv_heads} * p.head_dim) {
    return absl::InvalidArgumentError("RopeStore: qkv_stride smaller than one token's Q, K, V");
  }
  return CudaStatus(internal::LaunchRopeStore(p, stream), "RopeStore");
}

absl::Status ReencodeK(DType dtype, const void* src, void* dst, int32_t num_kv_heads,
                       int32_t num_tokens, int32_t head_dim, int64_t head_stride, int32_t offset,
                       const float* inv_freq, cudaStream_t stream) {
  if (auto s = Positive({num_kv_heads, num_tokens, head_dim}, "ReencodeK"); !s.ok()) return s;
  if (head_dim % 2 != 0) return absl::InvalidArgumentError("ReencodeK: head_dim must be even");
  if (head_stride < int64_t{num_tokens} * head_dim) {
    return absl::InvalidArgumentError("ReencodeK: head_stride smaller than one head");
  }
  return CudaStatus(internal::LaunchReencodeK(dtype, src, dst, num_kv_heads, num_tokens, head_dim,
                                              head_stride, offset, inv_freq, stream),
                    "ReencodeK");
}

absl::Status SwiGlu(DType dtype, const void* gate_up, int64_t gate_up_stride, int32_t rows,
                    int32_t inter, void* out, cudaStream_t stream) {
  if (auto s = Positive({rows, inter}, "SwiGlu"); !s.ok()) return s;
  if (gate_up_stride < 2 * int64_t{inter}) {
    return absl::InvalidArgumentError("SwiGlu: stride smaller than gate and up");
  }
  return CudaStatus(internal::LaunchSwiGlu(dtype, gate_up, gate_up_stride, rows, inter, out, stream),
                    "SwiGlu");
}

absl::Status BroadcastRows(DType dtype, const void* row, int32_t rows, int32_t n, void* out,
                           int64_t ld, cudaStream_t stream) {
  if (auto s = Positive({rows, n}, "BroadcastRows"); !s.ok()) return s;
  if (ld < n) return absl::InvalidArgumentError("BroadcastRows: ld < n");
  return CudaStatus(internal::LaunchBroadcastRows(dtype, row, rows, n, out, ld, stream),
                    "BroadcastRows");
}

absl::Status Cast(DType from, DType to, const void* src, void* dst, int64_t n, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError("Cast: negative size");
  if (n == 0) return absl::OkStatus();
  return CudaStatus(internal::LaunchCast(from, to, src, dst, n, stream), "Cast");
}

absl::Status DequantizeFp8Layer(const void* src, int32_t kv_heads, int32_t num_tokens,
                                int32_t head_dim, DType dtype, void* dst, cudaStream_t stream) {
  if (kv_heads <= 0 || num_tokens <= 0 || head_dim <= 0) {
    return absl::InvalidArgumentError("DequantizeFp8Layer: sizes must be positive");
  }
  if (reinterpret_cast<uintptr_t>(src) % 4 != 0) {
    return absl::InvalidArgumentError("DequantizeFp8Layer: src must be 4-byte aligned (f32 scales)");
  }
  return CudaStatus(internal::LaunchDequantizeFp8Layer(src, kv_heads, num_tokens, head_dim, dtype, dst, stream),
                    "DequantizeFp8Layer");
}

absl::Status FillRandom(DType dtype, void* dst, int64_t n, uint64_t seed, float scale,
                        cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError("FillRandom: negative size");
  if (n == 0) return absl::OkStatus();
  return CudaStatus(internal::LaunchFillRandom(dtype, dst, n, seed, scale, stream), "FillRandom");
}

absl::StatusOr<AttentionPlan> PlanAttention(const AttentionParams& p, int num_sms) {
  if (auto s = Positive({p.num_heads, p.num_kv_heads, p.head_dim, p.num_seqs, p.max_q_len,
                         p.max_keys, num_sms},
                        "Attention");
      !s.ok()) {
    return s;
  }
  if (p.num_heads % p.num_kv_heads != 0) {
    return absl::InvalidArgumentError("Attention: num_heads must be a multiple of num_kv_heads");
  }
  if (p.head_dim % 2 != 0 || p.head_dim > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: unsupported head_dim ", p.head_dim, " (even, <= 256)"));
  }
  if (p.num_splits < 0 || p.num_splits > 1024) {
    return absl::InvalidArgumentError("Attention: num_splits out of range");
  }
  if (p.num_kv_heads * int64_t{p.num_splits > 0 ? p.num_splits : 128} > 65535) {
    return absl::InvalidArgumentError("Attention: too many kv heads x splits for one grid");
  }
  AttentionPlan plan;
  plan.splits = internal::AttentionSplits(p, num_sms);
  plan.workspace_bytes = internal::AttentionWorkspaceBytes(p, plan.splits);
  return plan;
}

absl::Status Attention(const AttentionParams& p, const AttentionPlan& plan, void* workspace,
                       cudaStream_t stream, bool force_generic) {
  if (plan.splits < 1) return absl::InvalidArgumentError("Attention: plan has no splits");
  if (plan.workspace_bytes < internal::AttentionWorkspaceBytes(p, plan.splits) ||
      (plan.workspace_bytes > 0 && workspace == nullptr)) {
    return absl::InvalidArgumentError("Attention: workspace smaller than the plan needs");
  }
  return CudaStatus(internal::LaunchAttention(p, plan.splits, workspace, force_generic, stream),
                    "Attention");
}

absl::Status Sample(const float* logits, int32_t rows, int32_t vocab, int64_t row_stride,
                    const SamplingParams* params, int32_t* out_tokens, cudaStream_t stream) {
  if (auto s = Positive({rows, vocab}, "Sample"); !s.ok()) return s;
  if (row_stride < vocab) return absl::InvalidArgumentError("Sample: row_stride < vocab");
  return CudaStatus(
      internal::LaunchSample(logits, rows, vocab, row_stride, params, out_tokens, stream), "Sample");
}

absl::StatusOr<std::unique_ptr<Blas>> Blas::Create(cudaStream_t stream) {
  cublasHandle_t h = nullptr;
  if (auto s = CublasStatus(cublasCreate(&h), "cublasCreate"); !s.ok()) return s;
  std::unique_ptr<Blas> blas(new Blas(h));
  if (auto s = CublasStatus(cublasSetStream(h, stream), "cublasSetStream"); !s.ok()) return s;
  return blas;
}

Blas::~Blas() { cublasDestroy(handle_); }

absl::Status Blas::Linear(DType in, const void* x, int64_t ldx, const void* w, int32_t m,
                          int32_t n, int32_t k, DType out, void* y, int64_t ldy, float beta) {
  if (auto s = Positive({m, n, k}, "Linear"); !s.ok()) return s;
  if (in == DType::kF32 && out != DType::kF32) {
    return absl::InvalidArgumentError("Linear: f32 inputs need an f32 output");
  }
  if (ldx == 0) ldx = k;
  if (ldy == 0) ldy = n;
  if (ldx < k || ldy < n) return absl::InvalidArgumentError("Linear: leading dimension too small");
  const cudaDataType_t tin = in == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t tout = out == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  const float alpha = 1.f;
  // Column-major view: Y^T (n x m) = W (k x n, transposed) * X^T (k x m).
  return CublasStatus(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, tin, k,
                                   x, tin, static_cast<int>(ldx), &beta, y, tout,
                                   static_cast<int>(ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                      "cublasGemmEx");
}

}  // namespace kvblock::cuda
