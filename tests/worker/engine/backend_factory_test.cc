// CreateBackend / BackendOptions: names and dtypes are checked before anything is built; "cpu"
// makes the CPU backend; "cuda" is either made (a CUDA build on a machine with a GPU) or refused
// with FAILED_PRECONDITION saying why (no CUDA in the build, or no device) — never another error.
#include "worker/engine/backend_factory.h"

#include <string>

#include "gtest/gtest.h"
#include "worker/model/model.h"

namespace kvblock {
namespace {

TEST(BackendFactory, ValidatesNamesAndDtypes) {
  auto check = [](const std::string& name, const std::string& dtype) {
    BackendOptions o;
    o.name = name;
    o.dtype = dtype;
    return o.Validate().code();
  };
  EXPECT_EQ(check("cpu", ""), absl::StatusCode::kOk);
  EXPECT_EQ(check("cpu", "f32"), absl::StatusCode::kOk);
  EXPECT_EQ(check("cpu", "bf16"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(check("cuda", ""), absl::StatusCode::kOk);
  EXPECT_EQ(check("cuda", "bf16"), absl::StatusCode::kOk);
  EXPECT_EQ(check("cuda", "f32"), absl::StatusCode::kOk);
  EXPECT_EQ(check("cuda", "fp8-e4m3"), absl::StatusCode::kInvalidArgument);
  BackendOptions bad;
  bad.name = "tpu";
  const absl::Status s = bad.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(AvailableBackends()), std::string::npos) << s;
}

TEST(BackendFactory, CreatesCpuAndCudaOrSaysWhyNot) {
  ModelLoadOptions mo;
  mo.model_id = "backend-factory-test";  // keeps the fixture directory untouched
  auto model = LoadModel(std::string(KVBLOCK_SOURCE_DIR) + "/tests/fixtures/llama3-tiny", mo);
  ASSERT_TRUE(model.ok()) << model.status();
  BackendOptions cpu;
  auto b = CreateBackend(*model, cpu);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->name(), "cpu");
  BackendOptions cuda;
  cuda.name = "cuda";
  cuda.dtype = "f32";
  auto c = CreateBackend(*model, cuda);
  if (c.ok()) {
    EXPECT_EQ((*c)->name(), "cuda");
    EXPECT_EQ((*c)->config().vocab_size, model->config.vocab_size);
  } else {
    EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  }
}

}  // namespace
}  // namespace kvblock
