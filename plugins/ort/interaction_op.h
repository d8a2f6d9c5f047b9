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
#include "op_glue.h"

namespace dd_ort {

class InteractionKernel : public KernelBase {
 public:
  InteractionKernel(const OrtKernelInfo* info, Provider provider, OrtStatusPtr* status);
  ~InteractionKernel() override;

 private:
  OrtStatusPtr Compute(OrtKernelContext* context) override;

  int64_t dim_ = 0;
  int64_t prefix_ = -1;
  std::vector<int64_t> pairs_;
  std::mutex plan_mutex_;
  dd_interaction_plan* plan_ = nullptr;  // CUDA: the pairs on the device, made at the first run
};

struct InteractionOp : VariadicFloatOp<InteractionOp, InteractionKernel, /*MinArity=*/1> {
  using VariadicFloatOp::VariadicFloatOp;
  const char* GetName() const { return "DotInteraction"; }
};

}  // namespace dd_ort
