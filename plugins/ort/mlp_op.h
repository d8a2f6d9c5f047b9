// ONNX Runtime adapter of dlrm_deploy::Mlp (a chain of fully connected layers in one kernel; the
// export's fuse_mlp pass writes it): float inputs X [B, K0], then W_i [N_i, K_i] and b_i [N_i] per
// layer; attribute activations (one per layer: 0 none, 1 relu, 2 sigmoid), optional beside (1: the
// chain runs beside the lookups on a few SMs); output [B, N_L].
#pragma once

#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "dlrm_deploy/mlp.h"
#include "op_glue.h"

namespace dd_ort {

class MlpKernel : public KernelBase {
 public:
  MlpKernel(const OrtKernelInfo* info, Provider provider, OrtStatusPtr* status);

 private:
  OrtStatusPtr Compute(OrtKernelContext* context) override;

  std::vector<int64_t> activations_;
  int64_t beside_ = 0;
  bool fixed_weights_ = false;  // every W_i and b_i an initializer (dd_mlp_args.fixed_weights)
};

struct MlpOp : VariadicFloatOp<MlpOp, MlpKernel, /*MinArity=*/3> {
  using VariadicFloatOp::VariadicFloatOp;
  const char* GetName() const { return "Mlp"; }
};

}  // namespace dd_ort
