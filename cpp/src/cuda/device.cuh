// The device's facts (SM count, compute capability, L2 window and shared-memory limits), read once
// per device and shared by every kernel's planning.
#pragma once

#include <cuda_runtime.h>

#include <mutex>

#include "../internal.h"

namespace dd {
namespace {

// ---- device facts, read once per device ----
struct DeviceInfo {
  int ordinal = 0, sms = 0, major = 0, minor = 0, max_window = 0;
  int smem_optin = 0;  // opt-in shared memory per block, bytes
  size_t persisting_limit = 0;
};

int device_info(DeviceInfo* out, char* msg, size_t len) {
  static std::mutex mu;
  static DeviceInfo cache[64];
  static bool have[64] = {};
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return fail(DD_ERR_CUDA, msg, len, "cudaGetDevice: %s", cudaGetErrorString(e));
  std::lock_guard<std::mutex> lock(mu);
  if (dev < 64 && have[dev]) {
    *out = cache[dev];
    return DD_OK;
  }
  DeviceInfo d;
  d.ordinal = dev;
  cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, dev);
  cudaDeviceGetAttribute(&d.max_window, cudaDevAttrMaxAccessPolicyWindowSize, dev);
  if (dev < 64) {
    cache[dev] = d;
    have[dev] = true;
  }
  *out = d;
  return DD_OK;
}

}  // namespace
}  // namespace dd
