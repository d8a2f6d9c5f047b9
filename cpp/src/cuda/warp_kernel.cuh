// Kernel family 2, what `auto` runs: a warp (or a group of lanes) per bag and column slice, 4-16
// byte vector loads of whole rows, U independent row loads in flight per lane, the next 32 indices
// fetched while the current ones are consumed. Templated on a WarpPolicy (policies.cuh),
// instantiated from WarpPolicies by launch.cuh only.
#pragma once

#include <type_traits>

#include "bag_io.cuh"
#include "device_loads.cuh"
#include "pdl.cuh"
#include "policies.cuh"

namespace dd {
namespace {

// ---- family 2 (auto): vector loads, warp per bag and column slice ----
// lanes: lanes covering one row slice (<= 32); groups: lookups handled side by side in a warp
// (32/lanes when a row needs fewer than 32 lanes); slices: column slices per bag.
// Lean per lookup: one 32-bit shuffle of the row number, one wide multiply, one vector load.
// (Measured on H100, docs/benchmarks.md: cache-priority hints and shared-memory counting of the
// hottest rows made skewed batches slower here, so this kernel has neither.)
// Resident blocks per SM the register budget is cut for, per dtype and unroll: the most that
// compiles without spills (ptxas -v) for 16-byte loads.
template <int DT, int U>
constexpr int warp_min_blocks() {
  if (DT == DD_INT8) return U >= 8 ? 1 : 3;  // U 4: 80 registers, 24 warps an SM (4 blocks spill)
  if (DT == DD_INT4) return U >= 8 ? 1 : 2;
  if (DT == DD_FP32) return U >= 8 ? 3 : 4;
  return U >= 8 ? 2 : 4;
}

// Row number of a lookup that adds nothing (past its bag's end, or a bad id).
constexpr uint32_t kSkip = 0xffffffffu;

// Global row (or kSkip) and weight of lookup base+lane of bag bg; report: record a bad id.
template <typename IdxT>
__device__ __forceinline__ void fetch_row(const Params& p, const Bag<IdxT>& bg, int64_t base, int lane, bool report,
                                          uint32_t& row, float& w) {
  row = kSkip;
  w = 1.0f;
  if (base + lane < bg.end) {
    const int64_t id = (int64_t)bg.idx[base + lane];
    if (bg.psw) w = bg.psw[base + lane];
    if (p.check && (id < 0 || id >= bg.rows)) {
      if (report) record(p.err, kIndexOutOfRange, bg.t, base + lane, id, bg.rows);
    } else {
      row = (uint32_t)global_row(p.tab, bg.t, id);
    }
  }
}

// Group g's part of a lane's E sums (all groups hold all E after the reduction): elements
// g*PER..g*PER+PER-1, picked without indexing the array by a run-time number.
template <int PER, int E>
__device__ __forceinline__ void group_part(const float (&acc)[E], int g, float (&v)[PER]) {
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    float x = acc[i];
#pragma unroll
    for (int c = 1; c < E / PER; ++c) x = g == c ? acc[c * PER + i] : x;
    v[i] = x;
  }
}

// The sums of a warp's 32/gsize lane groups added up (lane i and i xor gsize, ...), so that every
// group holds them.
template <int E>
__device__ __forceinline__ void sum_groups(float (&acc)[E], int gsize) {
#pragma unroll
  for (int e = 0; e < E; ++e)
    for (int o = gsize; o < 32; o <<= 1) acc[e] += __shfl_xor_sync(kFull, acc[e], o);
}

// A warp's end of a bag: the sums of its lane groups added up (sum_groups); then each group stores
// its share of a lane's elements col..col+E-1 (the mean applied): with G groups, group g the E/G
// elements from col + g*E/G, so that a warp's stores cover the bag's output in whole sectors
// (store_run). Lanes whose columns are past the row's end (active false) store nothing.
template <int E, typename IdxT>
__device__ __forceinline__ void finish_bag(const Params& p, float (&acc)[E], int gsize, int g, bool active,
                                           const Bag<IdxT>& bg, int col) {
  sum_groups(acc, gsize);
  if (!active) return;
  if (p.mode == DD_MEAN) {
    const float n = (float)(bg.end - bg.start);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = bg.end > bg.start ? acc[e] / n : 0.0f;
  }
  const int64_t out = bg.b * (int64_t)p.tab.num_tables * p.dim + (int64_t)bg.t * p.dim + col;
  const int groups = 32 / gsize;
  auto part = [&](auto per) {
    constexpr int PER = decltype(per)::value;
    float v[PER];
    group_part<PER>(acc, g, v);
    store_run<PER>(p, out + g * PER, v);
  };
  // groups is 1, 2, 4, ... 32: each group stores E / groups elements, or one where there are more
  // groups than elements (groups g >= E then store nothing).
  auto by = [&](auto gc) {
    constexpr int G = decltype(gc)::value;
    if (groups != G) return false;
    if constexpr (G <= E) part(std::integral_constant<int, E / G>{});
    else if (g < E) part(std::integral_constant<int, 1>{});
    return true;
  };
  by(std::integral_constant<int, 1>{}) || by(std::integral_constant<int, 2>{}) || by(std::integral_constant<int, 4>{}) ||
      by(std::integral_constant<int, 8>{}) || by(std::integral_constant<int, 16>{}) ||
      by(std::integral_constant<int, 32>{});
}

// One row's piece v (row-wise dtypes: with the row's scale and bias sb) added to a lane's sums acc,
// times w where weighted. int8 sums its biases apart: acc += code * (scale * w) per element and
// bsum += bias * w once per row, bsum added to every element at the bag's end (add_biases). That is
// one FFMA per code besides its conversion, where scale * code + bias and then the sum took two
// (H100, paper shape, split_scales, D 128: 0.217-0.218 ms against 0.221-0.222; D 64 0.147 against
// 0.149). The sums are the same up to fp32 rounding, but not in the CPU reference's
// order, so int8 lookups of these kernels are never bit-exact with the CPU.
template <int DT, int VB, int E>
__device__ __forceinline__ void add_row(float (&acc)[E], float& bsum, const typename Raw<VB>::T& v, float2 sb, float w,
                                        bool weighted) {
  if constexpr (DT == DD_INT8) {
    const float sw = weighted ? sb.x * w : sb.x;
    bsum = weighted ? fmaf(sb.y, w, bsum) : bsum + sb.y;
    uint32_t words[VB / 4];
    if constexpr (VB == 16) { words[0] = v.x; words[1] = v.y; words[2] = v.z; words[3] = v.w; }
    else if constexpr (VB == 8) { words[0] = v.x; words[1] = v.y; }
    else { words[0] = v; }
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = fmaf((float)((words[e / 4] >> (8 * (e % 4))) & 0xffu), sw, acc[e]);
  } else {
    float x[E];
    decode<DT, VB>(v, sb, x);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = weighted ? fmaf(w, x[e], acc[e]) : acc[e] + x[e];
  }
}

// The biases add_row summed apart, added to each of a lane's sums (int8 only; nothing otherwise).
template <int DT, int E>
__device__ __forceinline__ void add_biases(float (&acc)[E], float bsum) {
  if constexpr (DT == DD_INT8) {
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] += bsum;
  }
}

template <int DT, typename IdxT, typename Policy>
__global__ void __launch_bounds__(kBlock, warp_min_blocks<DT, Policy::kUnroll>())
    warp_kernel(const Params p, int lanes, int groups, int slices) {
  constexpr int VB = Policy::kVecBytes;
  constexpr int U = Policy::kUnroll;
  constexpr int E = VB / 4 * Storage<DT>::kPerWord;  // elements per lane per row
  using RawT = typename Raw<VB>::T;
  pdl_trigger();  // a kernel after the lookups (pdl.cuh) may start its prologue in their tail
  const int lane = threadIdx.x & 31;
  const int gsize = groups > 1 ? lanes : 32;
  const int g = lane / gsize;
  const int s = lane - g * gsize;
  const uint64_t pol = policy(false, false);
  const uint32_t row_bytes = (uint32_t)p.row_bytes, sb_stride = (uint32_t)p.sb_stride;
  const int64_t total_bags = (int64_t)p.tab.num_tables * p.batch;
  const int64_t units = total_bags * slices;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t u = (((int64_t)blockIdx.x * blockDim.x) + threadIdx.x) >> 5; u < units; u += warps) {
    const int64_t bag = u / slices;
    const int slice = (int)(u - bag * slices);
    const Bag<IdxT> bg = open_bag<IdxT>(p, bag, lane == 0 && slice == 0);
    const int64_t start = bg.start, end = bg.end;
    const float* psw = bg.psw;
    const int chunk = (groups > 1 ? 0 : slice * 32) + s;  // which VB-byte piece of the row
    const bool active = chunk * E < p.dim;
    const uint8_t* col = p.weights + chunk * VB;
    auto fetch_index = [&](int64_t base, uint32_t& row, float& w) { fetch_row(p, bg, base, lane, slice == 0, row, w); };
    float acc[E];
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = 0.0f;
    float bsum = 0.0f;
    uint32_t next_row;
    float next_w;
    fetch_index(start, next_row, next_w);
    for (int64_t base = start; base < end; base += 32) {
      const uint32_t my_row = next_row;
      const float my_w = next_w;
      const int n = (int)min((int64_t)32, end - base);
      fetch_index(base + 32, next_row, next_w);  // in flight while this batch is summed
      for (int j0 = 0; j0 < n; j0 += groups * U) {
        RawT v[U];
        float2 sb[U];
        float w[U];
        bool ok[U];
#pragma unroll
        for (int k = 0; k < U; ++k) {
          const int j = j0 + k * groups + g;
          const uint32_t r = __shfl_sync(kFull, my_row, j & 31);
          w[k] = psw ? __shfl_sync(kFull, my_w, j & 31) : 1.0f;
          ok[k] = active && j < n && r != kSkip;
          if (ok[k]) {
            const uint64_t off = (uint64_t)r * row_bytes;  // one IMAD.WIDE
            v[k] = ld<VB>(col + off, pol);
            if constexpr (Storage<DT>::kRowwise) sb[k] = ld_scale_bias(p.sb + (uint64_t)r * sb_stride, pol);
          }
        }
#pragma unroll
        for (int k = 0; k < U; ++k) {
          if (ok[k]) {
            add_row<DT, VB>(acc, bsum, v[k], Storage<DT>::kRowwise ? sb[k] : make_float2(0.f, 0.f), w[k],
                            psw != nullptr);
          }
        }
      }
    }
    add_biases<DT>(acc, bsum);
    finish_bag(p, acc, gsize, g, active, bg, chunk * E);
  }
}

// ---- int8 rows through shared memory (sm_80+): the same work as warp_kernel, where a plan has
// groups x U == 32 (one index batch a step) and U <= lanes. Each lane copies its piece of U rows
// (and lane s of a group the scale and bias of row s) with cp.async into its warp's shared memory,
// two index batches in flight (the next one's copies issued before this one is decoded), so rows
// in flight take shared memory, not registers: 4 blocks an SM where the plan uses it (64 registers,
// no spills; H100, int8 D 64 split, 16-byte loads: 0.148 ms against 0.163 at 3 blocks).
template <int Bytes>
__device__ __forceinline__ void cp_async(uint32_t dst, const uint8_t* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (Bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(dst), "l"(src), "n"(Bytes) : "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Bytes of one stage of a warp: U rows' pieces of 32 lanes, then 32 scale/bias pairs (one per
// lookup of the batch).
template <int VB, int U>
__host__ __device__ constexpr int async_stage_bytes() { return U * 32 * VB + 32 * 8; }

// Resident blocks per SM warp_async_kernel's register budget is cut for: 4 (64 registers, no spills),
// except 16-byte loads 8 in flight (D 128, DLRM_DEPLOY_ASYNC_ROWS=2 only): 12 bytes of spills at
// 64 registers, and its 70 KB of shared memory a block hold it to 3 anyway.
template <int VB, int U>
constexpr int async_min_blocks() { return VB * U > 64 ? 3 : 4; }

template <int DT, typename IdxT, typename Policy>
__global__ void __launch_bounds__(kBlock, async_min_blocks<Policy::kVecBytes, Policy::kUnroll>())
    warp_async_kernel(const Params p, int lanes, int groups) {
  constexpr int VB = Policy::kVecBytes;
  constexpr int U = Policy::kUnroll;
  constexpr int E = VB / 4 * Storage<DT>::kPerWord;
  constexpr int kStage = async_stage_bytes<VB, U>();
  using RawT = typename Raw<VB>::T;
  extern __shared__ __align__(16) uint8_t async_smem[];
  pdl_trigger();
  const int lane = threadIdx.x & 31;
  uint8_t* stages = async_smem + (threadIdx.x >> 5) * 2 * kStage;
  const uint32_t stages_u32 = (uint32_t)__cvta_generic_to_shared(stages);
  const int g = lane / lanes;
  const int s = lane - g * lanes;
  const bool active = s * E < p.dim;
  const uint32_t row_bytes = (uint32_t)p.row_bytes, sb_stride = (uint32_t)p.sb_stride;
  const uint8_t* col = p.weights + s * VB;
  const int64_t total_bags = (int64_t)p.tab.num_tables * p.batch;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t bag = (((int64_t)blockIdx.x * blockDim.x) + threadIdx.x) >> 5; bag < total_bags; bag += warps) {
    const Bag<IdxT> bg = open_bag<IdxT>(p, bag, lane == 0);
    const int64_t start = bg.start, end = bg.end;
    const float* psw = bg.psw;
    auto fetch_index = [&](int64_t base, uint32_t& row, float& w) { fetch_row(p, bg, base, lane, true, row, w); };
    // The copies of the batch at base (rows held one per lane in batch_rows) into stage st.
    auto issue = [&](int64_t base, uint32_t batch_rows, int st) {
      const uint32_t at = stages_u32 + st * kStage;
#pragma unroll
      for (int k = 0; k < U; ++k) {
        const int j = k * groups + g;
        const uint32_t r = __shfl_sync(kFull, batch_rows, j);
        if (base + j < end && r != kSkip) {
          if (active) cp_async<VB>(at + (k * 32 + lane) * VB, col + (uint64_t)r * row_bytes);
          if (s == k) {
            const uint8_t* sbp = p.sb + (uint64_t)r * sb_stride;
            cp_async<4>(at + U * 32 * VB + j * 8, sbp);
            cp_async<4>(at + U * 32 * VB + j * 8 + 4, sbp + 4);
          }
        }
      }
      cp_async_commit();
    };
    float acc[E];
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = 0.0f;
    float bsum = 0.0f;
    uint32_t cur_row, next_row;
    float cur_w, next_w;
    fetch_index(start, cur_row, cur_w);
    if (start < end) issue(start, cur_row, 0);
    fetch_index(start + 32, next_row, next_w);
    int st = 0;
    for (int64_t base = start; base < end; base += 32) {
      const int n = (int)min((int64_t)32, end - base);
      const bool more = base + 32 < end;
      if (more) issue(base + 32, next_row, st ^ 1);
      uint32_t after_row;
      float after_w;
      fetch_index(base + 64, after_row, after_w);
      if (more) cp_async_wait<1>();
      else cp_async_wait<0>();
      __syncwarp();
      const uint8_t* here = stages + st * kStage;
#pragma unroll
      for (int k = 0; k < U; ++k) {
        const int j = k * groups + g;
        const uint32_t r = __shfl_sync(kFull, cur_row, j);
        const float w = psw ? __shfl_sync(kFull, cur_w, j) : 1.0f;
        if (active && j < n && r != kSkip) {
          const RawT v = *reinterpret_cast<const RawT*>(here + (k * 32 + lane) * VB);
          const float2 sb = *reinterpret_cast<const float2*>(here + U * 32 * VB + j * 8);
          add_row<DT, VB>(acc, bsum, v, sb, w, psw != nullptr);
        }
      }
      __syncwarp();  // every lane has read this stage before the next step refills it
      st ^= 1;
      cur_row = next_row;
      cur_w = next_w;
      next_row = after_row;
      next_w = after_w;
    }
    add_biases<DT>(acc, bsum);
    finish_bag(p, acc, lanes, g, active, bg, s * E);
  }
}

}  // namespace
}  // namespace dd
