// Dispatch layer: the one point from a Plan to a kernel instantiation (dtype x index type x policy
// from the lists of policies.cuh), with the persisting-L2 access-policy window attached to the
// launch where it applies.
#pragma once

#include <algorithm>

#include "bag_kernel.cuh"
#include "plan.cuh"
#include "short_kernel.cuh"
#include "warp_kernel.cuh"

namespace dd {
namespace {

// Launches kernel(p, extra...) on stream; with `window`, a persisting-L2 access-policy window over
// the contiguous hot region (hot_first layout) is attached to this launch only. Never with
// programmatic dependent launch: the lookups start after all work queued before them, which an Mlp
// right after them relies on to read its input early (dd_mlp_args.input_ready).
template <typename... Args>
int launch_kernel(void (*kernel)(Params, Args...), dim3 grid, dim3 block, size_t smem, const Params& p,
                  const dd_config& c, const DeviceInfo& dev, cudaStream_t stream, bool window, char* msg, size_t len,
                  Args... extra) {
  cudaLaunchConfig_t cfg = launch_config(grid, block, smem, stream);
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

// The first policy of a list the plan selects, handed to go as a tag (so that go instantiates the
// kernel of that policy); DD_ERR_UNSUPPORTED when the list has none (a plan outside the table).
template <typename Match, typename Go, typename... Ps>
int dispatch(PolicyList<Ps...>, Match&& match, Go&& go, char* msg, size_t len) {
  int rc = DD_ERR_UNSUPPORTED;
  const bool found = ((match(Ps{}) ? (rc = go(Ps{}), true) : false) || ...);
  if (!found) fail(rc, msg, len, "no compiled kernel for this plan");
  return rc;
}

// Whether policy P is compiled for DT and is the short plan's (its rows a step 0: any).
template <int DT, typename P>
bool short_matches(const ShortPlan& sp) {
  return short_compiled<DT, P::kRowBytes, P::kBags, P::kRows>() && P::kRowBytes == sp.row_bytes &&
         P::kBags == sp.bags && (sp.rows == 0 || P::kRows == sp.rows);
}

// Whether ShortPolicies has the short plan's kernel for DT (else the call runs warp_kernel:
// DLRM_DEPLOY_SHORT_BAGS and DLRM_DEPLOY_SHORT_ROWS may ask for one it lacks).
template <int DT, typename... Ps>
bool short_has(PolicyList<Ps...>, const ShortPlan& sp) {
  return (short_matches<DT, Ps>(sp) || ...);
}

template <int DT, typename IdxT>
int launch_typed(const Params& p, const dd_config& c, const Plan& pl, const DeviceInfo& dev, cudaStream_t stream,
                 char* msg, size_t len) {
  const int64_t bags = (int64_t)c.num_tables * p.batch;
  size_t persist = 0;
  cudaDeviceGetLimit(&persist, cudaLimitPersistingL2CacheSize);
  DeviceInfo d = dev;
  d.persisting_limit = persist;
  // dd_uses_l2 on the config: auto resolves to warp_kernel or combined, both with the window.
  const bool window = dd_uses_l2(&c) && c.hot_first && persist > 0 && d.max_window > 0 && knobs().l2_window != 0;
  if constexpr (DT != DD_INT4) {
    const ShortPlan sp = make_short_plan(c, pl, p.lk, dev, p.weights);
    if (sp.row_bytes && short_has<DT>(ShortPolicies{}, sp)) {
      auto match = [&](auto policy) { return short_matches<DT, decltype(policy)>(sp); };
      auto go = [&](auto policy) {
        using P = decltype(policy);
        if constexpr (!short_compiled<DT, P::kRowBytes, P::kBags, P::kRows>()) {  // never matched (short_has)
          return fail(DD_ERR_UNSUPPORTED, msg, len, "no compiled kernel for this plan");
        } else {
          const int64_t units = (int64_t)c.num_tables * ((p.batch + P::kBags - 1) / P::kBags);  // a warp each
          const dim3 grid((unsigned)std::max<int64_t>(
              std::min<int64_t>((units * 32 + kShortBlock - 1) / kShortBlock, 1 << 24), 1));
          const size_t smem = (size_t)(kShortBlock / 32) * short_warp_bytes<P::kRowBytes, P::kRows>();
          return launch_kernel(short_kernel<DT, IdxT, P>, grid, dim3(kShortBlock), smem, p, c, d, stream, window, msg,
                               len);
        }
      };
      return dispatch(ShortPolicies{}, match, go, msg, len);
    }
  }
  if (pl.warp && pl.async_rows && dev.major >= 8) {
    if constexpr (DT == DD_INT8) {
      const dim3 grid((unsigned)std::max<int64_t>(std::min<int64_t>((bags * 32 + kBlock - 1) / kBlock, 1 << 24), 1));
      auto match = [&](auto policy) {
        using P = decltype(policy);
        return P::kVecBytes == pl.vb && P::kUnroll == pl.unroll;
      };
      auto go = [&](auto policy) {
        using P = decltype(policy);
        auto kernel = warp_async_kernel<DT, IdxT, P>;
        const size_t smem = (size_t)(kBlock / 32) * 2 * async_stage_bytes<P::kVecBytes, P::kUnroll>();
        if (smem > 48 * 1024) {
          cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
          if (e != cudaSuccess)
            return fail(DD_ERR_CUDA, msg, len, "raising the lookups' shared memory: %s", cudaGetErrorString(e));
        }
        return launch_kernel(kernel, grid, dim3(kBlock), smem, p, c, d, stream, window, msg, len, pl.lanes, pl.groups);
      };
      return dispatch(WarpPolicies{}, match, go, msg, len);
    }
  }
  if (pl.warp) {
    const int64_t units = bags * pl.slices;
    const int64_t blocks = std::min<int64_t>((units * 32 + kBlock - 1) / kBlock, 1 << 24);
    const dim3 grid((unsigned)std::max<int64_t>(blocks, 1)), block(kBlock);
    auto match = [&](auto policy) {
      using P = decltype(policy);
      return P::kVecBytes == pl.vb && P::kUnroll == pl.unroll;
    };
    auto go = [&](auto policy) {
      return launch_kernel(warp_kernel<DT, IdxT, decltype(policy)>, grid, block, 0, p, c, d, stream, window, msg, len,
                           pl.lanes, pl.groups, pl.slices);
    };
    return dispatch(WarpPolicies{}, match, go, msg, len);
  }
  // Thread-per-feature family: PyTorch's launch shape, 32x8 threads, up to 1024 blocks.
  const int64_t chunks = bags * ((c.dim + 31) / 32);
  const dim3 block(32, kBlock / 32);
  const dim3 grid((unsigned)std::max<int64_t>(1, std::min<int64_t>(1024, (chunks + 7) / 8)));
  auto match = [&](auto policy) {
    using P = decltype(policy);
    return P::kVariant == pl.variant && (P::kPrefetch == 0 || P::kPrefetch == pl.pd);
  };
  auto go = [&](auto policy) {
    using P = decltype(policy);
    if (P::kHint && c.pinned_rows > 0) {  // the L2 policies pull the hot rows in first
      const int64_t lines = (int64_t)c.num_tables * c.pinned_rows * ((p.row_bytes + 127) / 128);
      const unsigned pgrid = (unsigned)std::max<int64_t>(1, std::min<int64_t>((lines + 255) / 256, dev.sms * 8));
      prefetch_hot_rows<<<pgrid, 256, 0, stream>>>(p);
    }
    return launch_kernel(bag_kernel<DT, IdxT, P>, grid, block, 0, p, c, d, stream, window && P::kHint, msg, len);
  };
  return dispatch(BagPolicies{}, match, go, msg, len);
}

template <typename IdxT>
int launch_index(const Params& p, const dd_config& c, const Plan& pl, const DeviceInfo& dev, cudaStream_t s, char* msg,
                 size_t len) {
  switch (c.dtype) {
    case DD_FP32: return launch_typed<DD_FP32, IdxT>(p, c, pl, dev, s, msg, len);
    case DD_FP16: return launch_typed<DD_FP16, IdxT>(p, c, pl, dev, s, msg, len);
    case DD_BF16: return launch_typed<DD_BF16, IdxT>(p, c, pl, dev, s, msg, len);
    case DD_INT4: return launch_typed<DD_INT4, IdxT>(p, c, pl, dev, s, msg, len);
    default: return launch_typed<DD_INT8, IdxT>(p, c, pl, dev, s, msg, len);
  }
}

}  // namespace
}  // namespace dd
