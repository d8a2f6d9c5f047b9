// ONNX Runtime adapter of dlrm_deploy::Mlp (a chain of fully connected layers in one kernel; the
// export's fuse_mlp pass writes it): float inputs X [B, K0], then W_i [N_i, K_i] and b_i [N_i] per
// layer; attribute activations (one per layer: 0 none, 1 relu, 2 sigmoid); output [B, N_L].
#pragma once

#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "dlrm_deploy/mlp.h"
#include "embedding_bag_op.h"

namespace dd_ort {

class MlpKernel {
 public:
  MlpKernel(const OrtKernelInfo* info, Provider provider, OrtStatusPtr* status);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  OrtStatusPtr Compute(OrtKernelContext* context);
  OrtStatusPtr Error(OrtErrorCode code, const std::string& what) const;

  Provider provider_;
  std::string node_name_;
  std::vector<int64_t> activations_;
};

struct MlpOp : Ort::CustomOpBase<MlpOp, MlpKernel, /*WithStatus=*/true> {
  explicit MlpOp(Provider provider);
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return "Mlp"; }
  const char* GetExecutionProviderType() const;
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t) const { return INPUT_OUTPUT_VARIADIC; }
  int GetVariadicInputMinArity() const { return 3; }
  bool GetVariadicInputHomogeneity() const { return true; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

 private:
  Provider provider_;
};

}  // namespace dd_ort
