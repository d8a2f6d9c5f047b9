// ONNX Runtime adapter of dlrm_deploy::Mlp (a chain of fully connected layers in one kernel; the
// export's fuse_mlp pass writes it): float inputs X [B, K0], then W_i [N_i, K_i] and b_i [N_i] per
// layer; attribute activations (one per layer: 0 none, 1 relu, 2 sigmoid), optional beside (1: the
// chain runs beside the lookups on a few SMs); output [B, N_L]. With front = F > 0 (the export's
// fuse_interaction_front pass) the first F inputs are a DotInteraction's parts instead of X, and
// front_dim / front_pairs / front_prefix its attributes: X is that interaction's output.
#pragma once

#include <mutex>
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
  int64_t front_ = 0;           // inputs of the interaction in front (0: none, input 0 is X)
  int64_t front_dim_ = 0, front_prefix_ = -1;
  std::vector<int64_t> front_pairs_;
  std::mutex plan_mutex_;
  dd_interaction_plan* plan_ = nullptr;  // CUDA: the front's pairs on the device, made at the first run

 public:
  ~MlpKernel() override;
};

struct MlpOp : VariadicFloatOp<MlpOp, MlpKernel, /*MinArity=*/3> {
  using VariadicFloatOp::VariadicFloatOp;
  const char* GetName() const { return "Mlp"; }
};

}  // namespace dd_ort
