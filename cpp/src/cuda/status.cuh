// A failed CUDA runtime call as the library's error status (DD_ERR_CUDA with the call's name).
#pragma once

#include <cuda_runtime.h>

#include "../internal.h"

namespace dd {
namespace {

int cuda_fail(cudaError_t e, const char* what, char* msg, size_t len) {
  return fail(DD_ERR_CUDA, msg, len, "%s: %s", what, cudaGetErrorString(e));
}

}  // namespace
}  // namespace dd
