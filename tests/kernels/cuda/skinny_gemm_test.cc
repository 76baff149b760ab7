// The skinny weight-streaming GEMM (kernels/cuda/skinny_gemm.cu) through
// Blas::Linear(..., LinearImpl::kSkinny) against a CPU reference (double accumulation of the same
// bf16 values) on fresh random inputs: m in {1, 7, 16, 50, 64 (its maximum)}, n never a multiple of
// the 128-row tile, k in {4096, 14336} and small multiples of 8 that are not multiples of the
// 64-column stage, beta 0 and 1, bf16 and f32 output, row strides wider than the row. Shapes are
// chosen so some CTAs own whole tiles and others share a tile's k-range (the split-K path). bf16
// output within 1e-2 relative, f32 within 1e-4; outputs are poisoned with NaN first (an unwritten
// element fails) and the padding between rows must stay untouched. Also: two launches are
// bit-identical, the kernel agrees with Linear's cuBLAS path, and calls outside its preconditions
// are refused.
#include <cuda_runtime_api.h>

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/kernels.h"
#include "tests/kernels/cuda/gpu_test_util.h"

namespace kvblock::cuda {
namespace {

using testing::DeviceBuffer;
using testing::Download;
using testing::Name;
using testing::RandomValues;
using testing::RelErr;
using testing::Upload;

struct Problem {
  int m, n, k;
  int64_t ldx, ldy;
  std::vector<float> x, w;  // bf16-representable
  std::vector<float> xw;    // reference x * w^T, [m][n]
  DeviceBuffer dx, dw;
};

// Random x (rows ldx apart) and w, and the double-accumulated reference.
Problem MakeProblem(int m, int n, int k, int64_t ldx_pad, int64_t ldy_pad) {
  Problem p{m, n, k, k + ldx_pad, n + ldy_pad};
  p.x = RandomValues(size_t(m) * p.ldx, DType::kBF16);
  p.w = RandomValues(size_t(n) * k, DType::kBF16);
  p.xw.resize(size_t(m) * n);
  for (int r = 0; r < m; ++r) {
    const float* xr = p.x.data() + r * p.ldx;
    for (int c = 0; c < n; ++c) {
      const float* wc = p.w.data() + int64_t{c} * k;
      double acc = 0;
      for (int i = 0; i < k; ++i) acc += double{xr[i]} * wc[i];
      p.xw[size_t(r) * n + c] = static_cast<float>(acc);
    }
  }
  p.dx = Upload(p.x, DType::kBF16);
  p.dw = Upload(p.w, DType::kBF16);
  return p;
}

std::string Describe(const Problem& p, DType out, float beta) {
  return "m=" + std::to_string(p.m) + " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k) +
         " ldx=" + std::to_string(p.ldx) + " ldy=" + std::to_string(p.ldy) + " out=" + Name(out) +
         " beta=" + std::to_string(beta);
}

class SkinnyGemmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int major = 0;
    ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
    if (major != 9) GTEST_SKIP() << "the skinny kernel is built for Hopper (sm_90a) only";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    auto blas = Blas::Create(stream_);
    ASSERT_TRUE(blas.ok()) << blas.status();
    blas_ = std::move(*blas);
  }
  void TearDown() override {
    blas_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Runs Linear with `impl` into a fresh NaN-poisoned y (holding `y0` in its rows when beta != 0)
  // and returns y as floats, rows ldy apart.
  std::vector<float> Run(const Problem& p, DType out, float beta, const std::vector<float>& y0,
                         LinearImpl impl) {
    DeviceBuffer dy = beta != 0.f ? Upload(y0, out) : DeviceBuffer(y0.size() * DTypeBytes(out));
    const absl::Status s = blas_->Linear(DType::kBF16, p.dx.get(), p.ldx, p.dw.get(), p.m, p.n, p.k,
                                         out, dy.get(), p.ldy, beta, impl);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    return Download(dy.get(), y0.size(), out);
  }

  // y0 in its rows, NaN in the padding (what DeviceBuffer's poison reads back as).
  static std::vector<float> InitialY(const Problem& p, DType out) {
    std::vector<float> y0(size_t(p.m) * p.ldy, NAN);
    const std::vector<float> v = RandomValues(y0.size(), out);
    for (int r = 0; r < p.m; ++r) {
      for (int c = 0; c < p.n; ++c) y0[r * p.ldy + c] = v[r * p.ldy + c];
    }
    return y0;
  }

  // Checks one impl on p for both output types and both betas.
  void Check(const Problem& p, LinearImpl impl) {
    for (DType out : {DType::kBF16, DType::kF32}) {
      for (float beta : {0.f, 1.f}) {
        SCOPED_TRACE(Describe(p, out, beta));
        const std::vector<float> y0 = InitialY(p, out);
        const std::vector<float> y = Run(p, out, beta, y0, impl);
        std::vector<float> got, want;
        for (int r = 0; r < p.m; ++r) {
          for (int c = 0; c < p.n; ++c) {
            got.push_back(y[r * p.ldy + c]);
            want.push_back(p.xw[size_t(r) * p.n + c] +
                           (beta != 0.f ? beta * y0[r * p.ldy + c] : 0.f));
          }
          for (int64_t c = p.n; c < p.ldy; ++c) {
            ASSERT_TRUE(std::isnan(y[r * p.ldy + c])) << "padding written at row " << r;
          }
        }
        const double err = RelErr(got, want);
        EXPECT_LE(err, out == DType::kF32 ? 1e-4 : 1e-2) << "rel err " << err;
      }
    }
  }

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Blas> blas_;
};

TEST_F(SkinnyGemmTest, MatchesCpuReference) {
  struct Shape {
    int n, k;
  };
  // 136 rows x 14336: 2 n-tiles of 224 k-tiles, every tile split between many CTAs.
  // 30000 x 200: 235 tiles of 4 k-tiles over ~132 CTAs, whole tiles and split ones, k-tail of 8.
  const Shape shapes[] = {{300, 4096}, {136, 14336}, {30000, 200}, {1000, 24}, {777, 1000}};
  for (int m : {1, 7, 16, 50, 64}) {
    for (const Shape& s : shapes) {
      const Problem p = MakeProblem(m, s.n, s.k, /*ldx_pad=*/m % 2 == 0 ? 8 : 0, /*ldy_pad=*/3);
      Check(p, LinearImpl::kSkinny);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(SkinnyGemmTest, Deterministic) {
  for (int m : {16, 50}) {
    const Problem p = MakeProblem(m, 30000, 200 + 64 * 5, 0, 0);
    for (DType out : {DType::kBF16, DType::kF32}) {
      const std::vector<float> y0(size_t(p.m) * p.ldy);
      const std::vector<float> a = Run(p, out, 0.f, y0, LinearImpl::kSkinny);
      const std::vector<float> b = Run(p, out, 0.f, y0, LinearImpl::kSkinny);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
          << "m=" << m << " " << Name(out) << ": two launches differ";
    }
  }
}

TEST_F(SkinnyGemmTest, AgreesWithCublas) {
  for (int m : {1, 16, 50, 64}) {
    const Problem p = MakeProblem(m, 1000, 4096, 0, 0);
    for (DType out : {DType::kBF16, DType::kF32}) {
      const std::vector<float> y0(size_t(p.m) * p.ldy);
      const std::vector<float> ours = Run(p, out, 0.f, y0, LinearImpl::kSkinny);
      const std::vector<float> cublas = Run(p, out, 0.f, y0, LinearImpl::kCublas);
      const double err = RelErr(ours, cublas);
      EXPECT_LE(err, 1e-2) << "m=" << m << " " << Name(out) << " rel err " << err;
      EXPECT_LE(RelErr(ours, p.xw), out == DType::kF32 ? 1e-4 : 1e-2) << "m=" << m;
    }
  }
}

TEST_F(SkinnyGemmTest, RefusesCallsOutsidePreconditions) {
  // ldx not a multiple of 8, m above the kernel's maximum, f32 inputs: INVALID_ARGUMENT, and
  // cuBLAS computes the same calls correctly.
  for (const auto& [m, ldx_pad] : {std::pair{16, 4}, std::pair{65, 0}}) {
    const Problem p = MakeProblem(m, 300, 512, ldx_pad, 0);
    DeviceBuffer dy(size_t(p.m) * p.ldy * 2);
    EXPECT_EQ(blas_
                  ->Linear(DType::kBF16, p.dx.get(), p.ldx, p.dw.get(), p.m, p.n, p.k, DType::kBF16,
                           dy.get(), p.ldy, 0.f, LinearImpl::kSkinny)
                  .code(),
              absl::StatusCode::kInvalidArgument);
    Check(p, LinearImpl::kCublas);
  }
  DeviceBuffer x(16 * 64 * 4), w(32 * 64 * 4), y(16 * 32 * 4);
  EXPECT_EQ(blas_
                ->Linear(DType::kF32, x.get(), 0, w.get(), 16, 32, 64, DType::kF32, y.get(), 0, 0.f,
                         LinearImpl::kSkinny)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvblock::cuda
