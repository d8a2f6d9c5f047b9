// ONNX Runtime adapter of dlrm_deploy::DotInteraction (DLRM's dot interaction in one kernel; the
// export's fuse_interaction pass writes it): float inputs [B, k_i * dim] (the vectors of each
// sample, side by side), attributes dim, pairs (flat indices i*n+j of the dots kept) and prefix
// (the input copied in front, -1: none); output [B, prefix width + len(pairs)].
#pragma once

#include <mutex>
#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "dlrm_deploy/interaction.h"
#include "embedding_bag_op.h"

namespace dd_ort {

class InteractionKernel {
 public:
  InteractionKernel(const OrtKernelInfo* info, Provider provider, OrtStatusPtr* status);
  ~InteractionKernel();
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  OrtStatusPtr Compute(OrtKernelContext* context);
  OrtStatusPtr Error(OrtErrorCode code, const std::string& what) const;

  Provider provider_;
  std::string node_name_;
  int64_t dim_ = 0;
  int64_t prefix_ = -1;
  std::vector<int64_t> pairs_;
  std::mutex plan_mutex_;
  dd_interaction_plan* plan_ = nullptr;  // CUDA: the pairs on the device, made at the first run
};

struct InteractionOp : Ort::CustomOpBase<InteractionOp, InteractionKernel, /*WithStatus=*/true> {
  explicit InteractionOp(Provider provider);
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return "DotInteraction"; }
  const char* GetExecutionProviderType() const;
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t) const { return INPUT_OUTPUT_VARIADIC; }
  int GetVariadicInputMinArity() const { return 1; }
  bool GetVariadicInputHomogeneity() const { return true; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

 private:
  Provider provider_;
};

}  // namespace dd_ort
