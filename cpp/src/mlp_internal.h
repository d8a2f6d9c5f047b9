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

}  // namespace dd
