// Kernel family 1: PyTorch's EmbeddingBag forward structure (a thread per output feature, 32x8
// blocks, scalar loads) with the paper's optimisations as a BagPolicy (policies.cuh): register cap
// (kMinBlocks), register prefetch of the next kPrefetch lookups, L2 pinning (evict_last hints for
// hot rows plus the evict_last prefetch pass prefetch_hot_rows). Variants baseline/occupancy/
// prefetch/l2pin/combined; instantiated from policies.cuh's BagPolicies by launch.cuh only.
#pragma once

#include "bag_io.cuh"
#include "device_loads.cuh"
#include "pdl.cuh"
#include "policies.cuh"

namespace dd {
namespace {

// ---- family 1: PyTorch's structure (thread per feature) with the paper's policies ----
template <int DT, typename IdxT, typename Policy>
__global__ void __launch_bounds__(kBlock, Policy::kMinBlocks) bag_kernel(const Params p) {
  constexpr int PD = Policy::kPrefetch;
  constexpr bool Hint = Policy::kHint;
  pdl_trigger();  // a kernel after the lookups (pdl.cuh) may start its prologue in their tail
  const int D = p.dim;
  const int chunks_per_bag = (D + 31) / 32;
  const int64_t num_chunks = (int64_t)p.tab.num_tables * p.batch * chunks_per_bag;
  const int64_t stride = (int64_t)gridDim.x * blockDim.y;
  const uint64_t pol_cold = policy(false, Hint && p.pinned > 0);
  const uint64_t pol_hot = policy(Hint, Hint && p.pinned > 0);
  for (int64_t chunk = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; chunk < num_chunks; chunk += stride) {
    const int feature = (int)(chunk % chunks_per_bag) * 32 + threadIdx.x;
    if (feature >= D) continue;
    const Bag<IdxT> bg = open_bag<IdxT>(p, chunk / chunks_per_bag, threadIdx.x == 0);
    const int t = bg.t;
    const int64_t start = bg.start, end = bg.end, rows = bg.rows;
    const IdxT* idx = bg.idx;
    const float* psw = bg.psw;
    // One lookup: its index, bounds check, element and weight.
    auto fetch = [&](int64_t i, float& v, float& w) {
      const int64_t id = (int64_t)idx[i];
      w = psw ? psw[i] : 1.0f;
      if (p.check && (id < 0 || id >= rows)) {
        if (feature == 0) record(p.err, kIndexOutOfRange, t, i, id, rows);
        v = 0.0f;
        w = 0.0f;
        return;
      }
      const int64_t g = global_row(p.tab, t, id);
      v = load_element<DT>(p.weights + g * p.row_bytes, p.sb + g * p.sb_stride, feature,
                           (Hint && id < p.pinned) ? pol_hot : pol_cold);
    };
    float acc = 0.0f;
    if constexpr (PD == 0) {
      for (int64_t i = start; i < end; ++i) {
        float v, w;
        fetch(i, v, w);
        acc = psw ? fmaf(w, v, acc) : acc + v;
      }
    } else {
      // Register prefetch: lookups i+1..i+PD are in flight while lookup i is added.
      float v[PD], w[PD];
#pragma unroll
      for (int k = 0; k < PD; ++k)
        if (start + k < end) fetch(start + k, v[k], w[k]);
      for (int64_t i = start; i < end; i += PD) {
#pragma unroll
        for (int k = 0; k < PD; ++k) {
          if (i + k < end) {
            acc = psw ? fmaf(w[k], v[k], acc) : acc + v[k];
            if (i + k + PD < end) fetch(i + k + PD, v[k], w[k]);
          }
        }
      }
    }
    if (p.mode == DD_MEAN) acc = end > start ? acc / (float)(end - start) : 0.0f;
    store(p, bg.b * (int64_t)p.tab.num_tables * D + (int64_t)t * D + feature, acc);
  }
}

// The paper's L2 pinning step: pull the hot rows into L2 with evict_last priority before the lookups.
__global__ void prefetch_hot_rows(const Params p) {
  const int64_t lines_per_row = (p.row_bytes + 127) / 128;
  const int64_t hot_rows = (int64_t)p.tab.num_tables * p.pinned;
  const int64_t n = hot_rows * lines_per_row;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / lines_per_row;
    const int t = (int)(r / p.pinned);
    const int64_t id = r - (int64_t)t * p.pinned;
    if (id >= p.tab.rows[t]) continue;
    const uint8_t* a = p.weights + global_row(p.tab, t, id) * p.row_bytes + (i - r * lines_per_row) * 128;
    asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(a));
  }
}

}  // namespace
}  // namespace dd
