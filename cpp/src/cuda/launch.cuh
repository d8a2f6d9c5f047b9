// Launch: the one dispatch point from a Plan to a kernel instantiation (dtype x index type x
// policy), with the persisting-L2 access-policy window attached to the launch where it applies.
#pragma once

#include <algorithm>

#include "bag_kernel.cuh"
#include "plan.cuh"
#include "warp_kernel.cuh"

namespace dd {
namespace {

// Launches kernel(p, extra...) on stream; with `window`, a persisting-L2 access-policy window over
// the contiguous hot region (hot_first layout) is attached to this launch only.
template <typename... Args>
int launch_kernel(void (*kernel)(Params, Args...), dim3 grid, dim3 block, size_t smem, const Params& p,
                  const dd_config& c, const DeviceInfo& dev, cudaStream_t stream, bool window, char* msg, size_t len,
                  Args... extra) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (window) {
    const size_t hot_bytes = (size_t)c.num_tables * (size_t)c.pinned_rows * (size_t)p.row_bytes;
    const size_t bytes = std::min(hot_bytes, (size_t)dev.max_window);
    attr[0].id = cudaLaunchAttributeAccessPolicyWindow;
    attr[0].val.accessPolicyWindow.base_ptr = const_cast<uint8_t*>(p.weights);
    attr[0].val.accessPolicyWindow.num_bytes = bytes;
    attr[0].val.accessPolicyWindow.hitRatio = std::min(1.0f, (float)dev.persisting_limit / (float)bytes);
    attr[0].val.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
    attr[0].val.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, p, extra...);
  if (e != cudaSuccess) return fail(DD_ERR_CUDA, msg, len, "kernel launch failed: %s", cudaGetErrorString(e));
  return DD_OK;
}

template <int DT, typename IdxT>
int launch_typed(const Params& p, const dd_config& c, const Plan& pl, const DeviceInfo& dev, cudaStream_t stream,
                 char* msg, size_t len) {
  const int64_t bags = (int64_t)c.num_tables * p.batch;
  size_t persist = 0;
  cudaDeviceGetLimit(&persist, cudaLimitPersistingL2CacheSize);
  DeviceInfo d = dev;
  d.persisting_limit = persist;
  const bool pinning = c.pinned_rows > 0;
  // dd_uses_l2 on the config: auto resolves to warp_kernel or combined, both with the window.
  const bool window = dd_uses_l2(&c) && c.hot_first && persist > 0 && d.max_window > 0 &&
                      env_int("DLRM_DEPLOY_L2_WINDOW", 1) != 0;
  if (pl.warp) {
    const int64_t units = bags * pl.slices;
    const int64_t blocks = std::min<int64_t>((units * 32 + kBlock - 1) / kBlock, 1 << 24);
    const dim3 grid((unsigned)std::max<int64_t>(blocks, 1)), block(kBlock);
    auto go = [&](void (*kernel)(Params, int, int, int)) {
      return launch_kernel(kernel, grid, block, 0, p, c, d, stream, window, msg, len, pl.lanes, pl.groups, pl.slices);
    };
    if (pl.unroll == 4) {
      switch (pl.vb) {
        case 16: return go(warp_kernel<DT, IdxT, 16, 4>);
        case 8: return go(warp_kernel<DT, IdxT, 8, 4>);
        default: return go(warp_kernel<DT, IdxT, 4, 4>);
      }
    }
    switch (pl.vb) {
      case 16: return go(warp_kernel<DT, IdxT, 16, 8>);
      case 8: return go(warp_kernel<DT, IdxT, 8, 8>);
      default: return go(warp_kernel<DT, IdxT, 4, 8>);
    }
  }
  // Thread-per-feature family: PyTorch's launch shape, 32x8 threads, up to 1024 blocks.
  const int64_t chunks = bags * ((c.dim + 31) / 32);
  const dim3 block(32, kBlock / 32);
  const dim3 grid((unsigned)std::max<int64_t>(1, std::min<int64_t>(1024, (chunks + 7) / 8)));
  if (pinning && (pl.variant == DD_L2PIN || pl.variant == DD_COMBINED)) {
    const int64_t lines = (int64_t)c.num_tables * c.pinned_rows * ((p.row_bytes + 127) / 128);
    const unsigned pgrid = (unsigned)std::max<int64_t>(1, std::min<int64_t>((lines + 255) / 256, dev.sms * 8));
    prefetch_hot_rows<<<pgrid, 256, 0, stream>>>(p);
  }
  switch (pl.variant) {
    case DD_BASELINE: return launch_kernel(bag_kernel<DT, IdxT, 0, 1, false>, grid, block, 0, p, c, d, stream, false, msg, len);
    case DD_OCCUPANCY: return launch_kernel(bag_kernel<DT, IdxT, 0, -1, false>, grid, block, 0, p, c, d, stream, false, msg, len);
    case DD_PREFETCH:
      if (pl.pd == 4) return launch_kernel(bag_kernel<DT, IdxT, 4, 1, false>, grid, block, 0, p, c, d, stream, false, msg, len);
      if (pl.pd == 8) return launch_kernel(bag_kernel<DT, IdxT, 8, 1, false>, grid, block, 0, p, c, d, stream, false, msg, len);
      return launch_kernel(bag_kernel<DT, IdxT, 16, 1, false>, grid, block, 0, p, c, d, stream, false, msg, len);
    case DD_L2PIN: return launch_kernel(bag_kernel<DT, IdxT, 0, 1, true>, grid, block, 0, p, c, d, stream, window, msg, len);
    default:  // DD_COMBINED
      if (pl.pd == 4) return launch_kernel(bag_kernel<DT, IdxT, 4, -1, true>, grid, block, 0, p, c, d, stream, window, msg, len);
      if (pl.pd == 8) return launch_kernel(bag_kernel<DT, IdxT, 8, -1, true>, grid, block, 0, p, c, d, stream, window, msg, len);
      return launch_kernel(bag_kernel<DT, IdxT, 16, -1, true>, grid, block, 0, p, c, d, stream, window, msg, len);
  }
}

template <typename IdxT>
int launch_index(const Params& p, const dd_config& c, const Plan& pl, const DeviceInfo& dev, cudaStream_t s, char* msg,
                 size_t len) {
  switch (c.dtype) {
    case DD_FP32: return launch_typed<DD_FP32, IdxT>(p, c, pl, dev, s, msg, len);
    case DD_FP16: return launch_typed<DD_FP16, IdxT>(p, c, pl, dev, s, msg, len);
    case DD_BF16: return launch_typed<DD_BF16, IdxT>(p, c, pl, dev, s, msg, len);
    default: return launch_typed<DD_INT8, IdxT>(p, c, pl, dev, s, msg, len);
  }
}

}  // namespace
}  // namespace dd
