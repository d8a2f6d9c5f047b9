// dlrm_deploy::Mlp pieces shared by the CPU forward and the CUDA kernel: written once, used on host
// and device so both apply the same activation.
#pragma once

#include <cmath>

#include "dlrm_deploy/mlp.h"
#include "internal.h"

namespace dd {

// DD_MLP_RELU / DD_MLP_SIGMOID (the overflow-free form of each side) / DD_MLP_NONE.
DD_HD float mlp_activate(float v, int act) {
  if (act == DD_MLP_RELU) return v > 0.f ? v : 0.f;
  if (act == DD_MLP_SIGMOID) {
    if (v >= 0.f) return 1.f / (1.f + expf(-v));
    const float z = expf(v);
    return z / (1.f + z);
  }
  return v;
}

// The device-side lower-triangle index of each kept dot of an interaction plan (i * (i + 1) / 2 + j
// for the pair (i, j), i >= j; valid where the plan's vectors are at most 16) and its vector count:
// what the Mlp kernel's interaction front reads (interaction_cuda.cu).
const int* interaction_plan_tri(const dd_interaction_plan* plan);
int64_t interaction_plan_vectors(const dd_interaction_plan* plan);

}  // namespace dd
