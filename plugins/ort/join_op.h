// ONNX Runtime adapter of dlrm_deploy::Join, the companion of EmbeddingBag's overlap=1: a Concat
// along axis 1 that first joins the EmbeddingBag's own stream back into ORT's (and, with
// check=checked, reports that EmbeddingBag's bad input as this node's error).
#pragma once

#include <functional>
#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "dlrm_deploy/embedding_bag.h"
#include "op_glue.h"

namespace dd_ort {

// An overlapped EmbeddingBag output whose lookups may still be running on the op's stream.
struct PendingLookups {
  dd_overlap* overlap = nullptr;
  void* workspace = nullptr;          // the error record (per call: freed by Join; else the kernel's)
  OrtAllocator* allocator = nullptr;  // frees a per-call workspace
  bool checked = false;               // Join synchronises and reports bad input
  std::vector<dd_table_lookups> names;  // for messages (pointers into the kernel's input names)
  std::string node;                     // the EmbeddingBag node's name
  // overlap=2: launches the lookups on the op's stream (forked already) and marks their end;
  // errors in msg (DD_MSG_LEN bytes). Empty when they were launched by the EmbeddingBag node.
  std::function<int(char* msg)> launch;
};

// Output data pointer -> its pending lookups (set by EmbeddingBag, taken by Join).
void RegisterPending(const void* output, PendingLookups pending);
bool TakePending(const void* output, PendingLookups* pending);
// Joins pending lookups back into stream and reports their bad input (a status, or nullptr);
// frees their per-call workspace. who: the joining node, for CUDA failures.
OrtStatusPtr FinishPending(const PendingLookups& pending, void* stream, const std::string& who);

class JoinKernel : public KernelBase {
 public:
  JoinKernel(const OrtKernelInfo* info, Provider provider, OrtStatusPtr* status);

 private:
  OrtStatusPtr Compute(OrtKernelContext* context) override;

  int64_t position_ = 0;  // where input 0 goes in the concatenation
};

// Registered per provider and element type (float, float16, bfloat16): input 0 and a homogeneous
// variadic rest of that type, output of that type.
struct JoinOp : OpBase<JoinOp, JoinKernel> {
  JoinOp(Provider provider, ONNXTensorElementDataType type) : OpBase(provider), type_(type) {}
  const char* GetName() const { return "Join"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return type_; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 1 ? INPUT_OUTPUT_VARIADIC : INPUT_OUTPUT_REQUIRED;
  }
  int GetVariadicInputMinArity() const { return 1; }
  bool GetVariadicInputHomogeneity() const { return true; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return type_; }

 private:
  ONNXTensorElementDataType type_;
};

}  // namespace dd_ort
