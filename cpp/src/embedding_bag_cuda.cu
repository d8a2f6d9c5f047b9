// CUDA kernels of the op. Two templated kernel families, instantiated as compile-time policies and
// dispatched in one place (launch()):
//  - bag_kernel: PyTorch's EmbeddingBag forward structure (a thread per output feature, 32x8
//    blocks, scalar loads), with the paper's optimisations as policies: register cap (MinBlocks),
//    register prefetch of the next PD lookups, and L2 pinning (evict_last hints for hot rows plus
//    an evict_last prefetch pass). Variants baseline/occupancy/prefetch/l2pin/combined.
//  - warp_kernel: what `auto` runs. A warp (or a group of lanes) per bag and column slice, 4-16
//    byte vector loads of whole rows, U independent row loads in flight per lane, the next 32
//    indices fetched while the current ones are consumed; with pinned_rows and the hot_first
//    layout, a persisting-L2 access-policy window over the hot rows.
// Both add each bag's rows in index order in fp32, so results equal the CPU reference bit for bit
// whenever one lane group covers a whole row (rows of 64..512 bytes, e.g. fp32 D=16..128); when a
// row takes fewer lanes (fp16 and int8 at D=128, small D) several lane groups share a bag and their
// partial sums are added in a fixed tree order instead (within the tests' tolerance).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "internal.h"

#ifndef DD_OCC_MIN_BLOCKS_SM80
#define DD_OCC_MIN_BLOCKS_SM80 6
#endif
#ifndef DD_OCC_MIN_BLOCKS_SM90
#define DD_OCC_MIN_BLOCKS_SM90 8
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define DD_OCC_MIN_BLOCKS DD_OCC_MIN_BLOCKS_SM90
#else
#define DD_OCC_MIN_BLOCKS DD_OCC_MIN_BLOCKS_SM80
#endif

namespace dd {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kBlock = 256;

// Passed by value (about 14 KB: kernel parameters above 4 KB need CUDA 12.1 and sm_70+), so a
// launch captured into a CUDA graph carries every table's pointers and sizes with it.
struct Params {
  const uint8_t* weights;
  void* out;
  ErrorRecord* err;
  int64_t batch, row_bytes, pinned;
  int32_t dim, mode, out_dtype, check;
  Tables tab;
  Lookups lk;
};

// ---- memory access with L2 eviction-priority hints (sm_80+) ----
__device__ __forceinline__ uint64_t policy(bool hot, bool pinning) {
  uint64_t p;
  if (hot) asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
  else if (pinning) asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  else asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
  return p;
}

template <int Bytes> struct Raw;
template <> struct Raw<16> { using T = uint4; };
template <> struct Raw<8> { using T = uint2; };
template <> struct Raw<4> { using T = uint32_t; };
template <> struct Raw<2> { using T = uint16_t; };
template <> struct Raw<1> { using T = uint8_t; };

template <int Bytes>
__device__ __forceinline__ typename Raw<Bytes>::T ld(const uint8_t* p, uint64_t pol) {
  typename Raw<Bytes>::T v;
  if constexpr (Bytes == 16) {
    asm volatile("ld.global.nc.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(pol));
  } else if constexpr (Bytes == 8) {
    asm volatile("ld.global.nc.L2::cache_hint.v2.u32 {%0,%1}, [%2], %3;" : "=r"(v.x), "=r"(v.y) : "l"(p), "l"(pol));
  } else if constexpr (Bytes == 4) {
    asm volatile("ld.global.nc.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(v) : "l"(p), "l"(pol));
  } else if constexpr (Bytes == 2) {
    asm volatile("ld.global.nc.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(v) : "l"(p), "l"(pol));
  } else {
    uint16_t h;
    asm volatile("ld.global.nc.L2::cache_hint.u8 %0, [%1], %2;" : "=h"(h) : "l"(p), "l"(pol));
    v = (uint8_t)h;
  }
  return v;
}

__device__ __forceinline__ float2 ld_scale_bias(const uint8_t* p, uint64_t pol) {
  return make_float2(__uint_as_float(ld<4>(p, pol)), __uint_as_float(ld<4>(p + 4, pol)));
}

// ---- element decoding: Raw bytes -> E floats (int8 codes use the row's scale and bias) ----
template <int DT> struct Storage;
template <> struct Storage<DD_FP32> { static constexpr int kSize = 4; };
template <> struct Storage<DD_FP16> { static constexpr int kSize = 2; };
template <> struct Storage<DD_BF16> { static constexpr int kSize = 2; };
template <> struct Storage<DD_INT8> { static constexpr int kSize = 1; };

template <int DT>
__device__ __forceinline__ float decode_word(uint32_t w, int k, float2 sb) {
  // k-th element stored in a 32-bit word
  if constexpr (DT == DD_FP32) return __uint_as_float(w);
  else if constexpr (DT == DD_FP16) return __half2float(__ushort_as_half((unsigned short)(w >> (16 * k))));
  else if constexpr (DT == DD_BF16) return __uint_as_float((w >> (16 * k)) << 16);
  else return fmaf(sb.x, (float)((w >> (8 * k)) & 0xffu), sb.y);
}

template <int DT, int Bytes>
__device__ __forceinline__ void decode(const typename Raw<Bytes>::T& r, float2 sb, float* v) {
  constexpr int per_word = 4 / Storage<DT>::kSize;
  uint32_t words[Bytes / 4];
  if constexpr (Bytes == 16) { words[0] = r.x; words[1] = r.y; words[2] = r.z; words[3] = r.w; }
  else if constexpr (Bytes == 8) { words[0] = r.x; words[1] = r.y; }
  else { words[0] = r; }
#pragma unroll
  for (int w = 0; w < Bytes / 4; ++w)
#pragma unroll
    for (int k = 0; k < per_word; ++k) v[w * per_word + k] = decode_word<DT>(words[w], k, sb);
}

template <int DT>
__device__ __forceinline__ float load_element(const uint8_t* row, int feature, int dim, uint64_t pol) {
  if constexpr (DT == DD_FP32) return __uint_as_float(ld<4>(row + 4 * feature, pol));
  else if constexpr (DT == DD_FP16) return __half2float(__ushort_as_half(ld<2>(row + 2 * feature, pol)));
  else if constexpr (DT == DD_BF16) return __uint_as_float((uint32_t)ld<2>(row + 2 * feature, pol) << 16);
  else {
    float2 sb = ld_scale_bias(row + dim, pol);
    return fmaf(sb.x, (float)ld<1>(row + feature, pol), sb.y);
  }
}

// ---- bad input: the first error wins; the bag/lookup then counts as empty/zero ----
__device__ __forceinline__ void record(ErrorRecord* e, int32_t code, int32_t table, int64_t pos, int64_t value,
                                       int64_t limit) {
  if (atomicCAS(&e->code, 0, code) == 0) {
    e->table = table;
    e->position = pos;
    e->value = value;
    e->limit = limit;
  }
}

// Bag b of table t: [start, end) of the table's ids; a bad bag is reported and counts as empty.
template <typename IdxT>
__device__ __forceinline__ void bag_range(const Params& p, int t, int64_t b, bool report, int64_t& start,
                                          int64_t& end) {
  const TableIO& io = p.lk.io[t];
  int64_t value = 0;
  const int32_t code = bag_bounds<IdxT>(io, b, !p.lk.packed || t == 0, &start, &end, &value);
  if (p.check && code) {
    if (report) record(p.err, code, t, p.lk.packed ? (int64_t)t * p.batch + b : b, value, io.num_idx);
    start = end = 0;
  }
}

__device__ __forceinline__ void store(const Params& p, int64_t pos, float v) {
  if (p.out_dtype == DD_FP32) static_cast<float*>(p.out)[pos] = v;
  else if (p.out_dtype == DD_FP16) static_cast<__half*>(p.out)[pos] = __float2half_rn(v);
  else static_cast<__nv_bfloat16*>(p.out)[pos] = __float2bfloat16_rn(v);
}

// ---- family 1: PyTorch's structure (thread per feature) with the paper's policies ----
template <int DT, typename IdxT, int PD, int MinBlocks, bool Hint>
__global__ void __launch_bounds__(kBlock, (MinBlocks < 0 ? DD_OCC_MIN_BLOCKS : MinBlocks))
    bag_kernel(const Params p) {
  const int D = p.dim;
  const int chunks_per_bag = (D + 31) / 32;
  const int64_t num_chunks = (int64_t)p.tab.num_tables * p.batch * chunks_per_bag;
  const int64_t stride = (int64_t)gridDim.x * blockDim.y;
  const uint64_t pol_cold = policy(false, Hint && p.pinned > 0);
  const uint64_t pol_hot = policy(Hint, Hint && p.pinned > 0);
  for (int64_t chunk = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; chunk < num_chunks; chunk += stride) {
    const int feature = (int)(chunk % chunks_per_bag) * 32 + threadIdx.x;
    if (feature >= D) continue;
    const int64_t bag = chunk / chunks_per_bag;
    const int t = (int)(bag / p.batch);
    const int64_t b = bag - (int64_t)t * p.batch;
    const int64_t rows = p.tab.rows[t];
    const IdxT* idx = static_cast<const IdxT*>(p.lk.io[t].idx);
    const float* psw = p.lk.io[t].psw;
    int64_t start, end;
    bag_range<IdxT>(p, t, b, threadIdx.x == 0, start, end);
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
      const uint8_t* row = p.weights + global_row(p.tab, t, id) * p.row_bytes;
      v = load_element<DT>(row, feature, D, (Hint && id < p.pinned) ? pol_hot : pol_cold);
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
    store(p, b * (int64_t)p.tab.num_tables * D + (int64_t)t * D + feature, acc);
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
  if (DT == DD_INT8) return U >= 8 ? 1 : 2;
  if (DT == DD_FP32) return U >= 8 ? 3 : 4;
  return U >= 8 ? 2 : 4;
}

template <int DT, typename IdxT, int VB, int U>
__global__ void __launch_bounds__(kBlock, warp_min_blocks<DT, U>()) warp_kernel(const Params p, int lanes, int groups, int slices) {
  constexpr int E = VB / Storage<DT>::kSize;  // elements per lane per row
  using RawT = typename Raw<VB>::T;
  const int lane = threadIdx.x & 31;
  const int gsize = groups > 1 ? lanes : 32;
  const int g = lane / gsize;
  const int s = lane - g * gsize;
  const uint64_t pol = policy(false, false);
  const uint32_t row_bytes = (uint32_t)p.row_bytes;
  const int64_t total_bags = (int64_t)p.tab.num_tables * p.batch;
  const int64_t units = total_bags * slices;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t u = (((int64_t)blockIdx.x * blockDim.x) + threadIdx.x) >> 5; u < units; u += warps) {
    const int64_t bag = u / slices;
    const int slice = (int)(u - bag * slices);
    const int t = (int)(bag / p.batch);
    const int64_t b = bag - (int64_t)t * p.batch;
    const int64_t rows = p.tab.rows[t];
    const int chunk = (groups > 1 ? 0 : slice * 32) + s;  // which VB-byte piece of the row
    const bool active = chunk * E < p.dim;
    const uint8_t* col = p.weights + chunk * VB;
    const IdxT* idx = static_cast<const IdxT*>(p.lk.io[t].idx);
    const float* psw = p.lk.io[t].psw;
    int64_t start, end;
    bag_range<IdxT>(p, t, b, lane == 0 && slice == 0, start, end);

    // Global row of lookup base+lane (kSkip = nothing to add) and its weight.
    constexpr uint32_t kSkip = 0xffffffffu;
    auto fetch_index = [&](int64_t base, uint32_t& row, float& w) {
      row = kSkip;
      w = 1.0f;
      if (base + lane < end) {
        const int64_t id = (int64_t)idx[base + lane];
        if (psw) w = psw[base + lane];
        if (p.check && (id < 0 || id >= rows)) {
          if (slice == 0) record(p.err, kIndexOutOfRange, t, base + lane, id, rows);
        } else {
          row = (uint32_t)global_row(p.tab, t, id);
        }
      }
    };
    float acc[E];
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = 0.0f;
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
            if constexpr (DT == DD_INT8) sb[k] = ld_scale_bias(p.weights + off + p.dim, pol);
          }
        }
#pragma unroll
        for (int k = 0; k < U; ++k) {
          if (ok[k]) {
            float x[E];
            decode<DT, VB>(v[k], DT == DD_INT8 ? sb[k] : make_float2(0.f, 0.f), x);
#pragma unroll
            for (int e = 0; e < E; ++e) acc[e] = psw ? fmaf(w[k], x[e], acc[e]) : acc[e] + x[e];
          }
        }
      }
    }
    if (groups > 1) {
#pragma unroll
      for (int e = 0; e < E; ++e)
        for (int o = gsize; o < 32; o <<= 1) acc[e] += __shfl_xor_sync(kFull, acc[e], o);
    }
    if (g == 0 && active) {
      const int64_t out = b * (int64_t)p.tab.num_tables * p.dim + (int64_t)t * p.dim + (int64_t)chunk * E;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        float r = acc[e];
        if (p.mode == DD_MEAN) r = end > start ? r / (float)(end - start) : 0.0f;
        store(p, out + e, r);
      }
    }
  }
}

// ---- device facts, read once per device ----
struct DeviceInfo {
  int sms = 0, major = 0, minor = 0, max_window = 0;
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

// ---- the one dispatch point ----
struct Plan {
  int variant;  // resolved (never DD_AUTO)
  bool warp;    // warp_kernel (auto) or bag_kernel
  int vb = 0, lanes = 0, groups = 1, slices = 1;
  int pd = 0;
  int unroll = 8;  // row loads in flight per lane (warp_kernel)
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

Plan make_plan(const dd_config& c, const void* weights) {
  Plan pl;
  pl.variant = c.variant;
  pl.warp = c.variant == DD_AUTO;
  const int esize = c.dtype == DD_FP32 ? 4 : c.dtype == DD_INT8 ? 1 : 2;
  const int64_t data_bytes = (int64_t)c.dim * esize;
  const int64_t row_bytes = dd_row_bytes(&c);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(weights);
  // Vector width: the widest that divides the row data, the row stride and the base address
  // (16 bytes measured fastest for every dtype at D=128 on H100, docs/benchmarks.md).
  int want = env_int("DLRM_DEPLOY_VEC_BYTES", 16);
  for (int vb : {16, 8, 4}) {
    if (vb > want) continue;
    if (data_bytes % vb == 0 && row_bytes % vb == 0 && addr % vb == 0) {
      pl.vb = vb;
      break;
    }
  }
  // warp_kernel shuffles 32-bit row numbers: larger blobs go to the thread-per-feature kernel.
  const bool small_blob = dd_total_rows(&c) < 0xffffffffLL && row_bytes < 0xffffffffLL;
  if (pl.warp && (pl.vb == 0 || !small_blob)) {  // odd shapes: the thread-per-feature kernel with every policy
    pl.warp = false;
    pl.variant = DD_COMBINED;
  }
  if (pl.warp) {
    pl.lanes = (int)(data_bytes / pl.vb);
    if (pl.lanes < 32 && 32 % pl.lanes == 0) {
      pl.groups = 32 / pl.lanes;
    } else {
      pl.slices = (pl.lanes + 31) / 32;
    }
  }
  // Loads in flight per lane, measured on H100 (docs/benchmarks.md): 2-byte tables gain from the
  // extra occupancy of 4 on skewed batches, fp32 and int8 from 8.
  pl.unroll = env_int("DLRM_DEPLOY_UNROLL", esize == 2 ? 4 : 8) <= 4 ? 4 : 8;
  pl.pd = c.prefetch_distance ? c.prefetch_distance : 8;
  pl.pd = pl.pd <= 4 ? 4 : pl.pd <= 8 ? 8 : 16;  // compiled distances
  return pl;
}

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
  const bool window = pinning && c.hot_first && persist > 0 && d.max_window > 0 &&
                      env_int("DLRM_DEPLOY_L2_WINDOW", 1) != 0 &&
                      (pl.variant == DD_AUTO || pl.variant == DD_L2PIN || pl.variant == DD_COMBINED);
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

int cuda_fail(cudaError_t e, const char* what, char* msg, size_t len) {
  return fail(DD_ERR_CUDA, msg, len, "%s: %s", what, cudaGetErrorString(e));
}

}  // namespace
}  // namespace dd

using dd::fail;

extern "C" {

}  // extern "C"

namespace dd {
namespace {

// Both forms' launch: view holds the call's per-table tensors, already checked on the host.
int forward_cuda_view(const dd_config* cfg, const void* weights, const Lookups& view, void* output, void* workspace,
                      void* stream_ptr, const dd_table_lookups* names, char* msg, size_t len) {
  if (view.batch == 0) return DD_OK;
  if (cfg->check != DD_UNCHECKED && !workspace)
    return fail(DD_ERR_CONFIG, msg, len, "check=%s needs a workspace of dd_workspace_size() bytes",
                dd_name("check", cfg->check));
  DeviceInfo dev;
  int rc = device_info(&dev, msg, len);
  if (rc) return rc;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  auto p = std::make_unique<Params>();
  p->weights = static_cast<const uint8_t*>(weights);
  p->out = output;
  p->err = static_cast<ErrorRecord*>(workspace);
  p->batch = view.batch;
  p->row_bytes = dd_row_bytes(cfg);
  p->pinned = cfg->pinned_rows;
  p->dim = cfg->dim;
  p->mode = cfg->mode;
  p->out_dtype = cfg->out_dtype;
  p->check = cfg->check != DD_UNCHECKED;
  make_tables(*cfg, &p->tab);
  p->lk = view;
  if (cfg->check == DD_CHECKED) {
    cudaError_t e = cudaMemsetAsync(workspace, 0, sizeof(ErrorRecord), stream);
    if (e != cudaSuccess) return cuda_fail(e, "clearing the error record", msg, len);
  }
  const Plan pl = make_plan(*cfg, weights);
  rc = cfg->index_type == DD_INT32 ? launch_index<int32_t>(*p, *cfg, pl, dev, stream, msg, len)
                                   : launch_index<int64_t>(*p, *cfg, pl, dev, stream, msg, len);
  if (rc) return rc;
  if (cfg->check == DD_CHECKED) {
    ErrorRecord rec;
    cudaError_t e = cudaMemcpyAsync(&rec, workspace, sizeof(rec), cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) return cuda_fail(e, "reading the error record", msg, len);
    if (rec.code) return fail(DD_ERR_INPUT, msg, len, "%s", error_message(rec, names).c_str());
  }
  return DD_OK;
}

}  // namespace
}  // namespace dd

extern "C" {

int dd_forward_cuda(const dd_config* cfg, const void* weights, const void* indices, const void* offsets,
                    const float* psw, int64_t num_indices, int64_t num_offsets, void* output, void* workspace,
                    void* stream_ptr, char* msg, size_t len) {
  auto view = std::make_unique<dd::Lookups>();
  int rc = dd::check_call(cfg, weights, indices, offsets, psw, num_indices, num_offsets, output, view.get(), msg, len);
  if (rc) return rc;
  return dd::forward_cuda_view(cfg, weights, *view, output, workspace, stream_ptr, nullptr, msg, len);
}

int dd_forward_tables_cuda(const dd_config* cfg, const void* weights, const dd_table_lookups* tables, void* output,
                           void* workspace, void* stream_ptr, char* msg, size_t len) {
  auto view = std::make_unique<dd::Lookups>();
  int rc = dd::check_tables_call(cfg, weights, tables, output, view.get(), msg, len);
  if (rc) return rc;
  return dd::forward_cuda_view(cfg, weights, *view, output, workspace, stream_ptr, tables, msg, len);
}

int dd_clear_error(void* workspace, void* stream_ptr, char* msg, size_t len) {
  if (!workspace) return fail(DD_ERR_CONFIG, msg, len, "no workspace");
  cudaError_t e = cudaMemsetAsync(workspace, 0, sizeof(dd::ErrorRecord), static_cast<cudaStream_t>(stream_ptr));
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "clearing the error record", msg, len);
}

int dd_fetch_error(void* workspace, void* stream_ptr, dd_error_record* record, char* msg, size_t len) {
  if (!workspace || !record) return fail(DD_ERR_CONFIG, msg, len, "no workspace");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t e = cudaMemcpyAsync(record, workspace, sizeof(*record), cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaMemsetAsync(workspace, 0, sizeof(*record), stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "reading the error record", msg, len);
}

int dd_read_error(const dd_config*, void* workspace, void* stream_ptr, char* msg, size_t len) {
  dd::ErrorRecord rec{};
  const int rc = dd_fetch_error(workspace, stream_ptr, &rec, msg, len);
  return rc != DD_OK ? rc : dd_format_error(&rec, msg, len);
}

struct dd_deferred {
  dd_error_record* host = nullptr;  // pinned
  cudaEvent_t done = nullptr;
  bool pending = false;   // a copy with an event behind it was queued and not yet examined
  bool captured = false;  // a copy was captured into a CUDA graph: replays write host, no event says when
};

dd_deferred* dd_deferred_create(char* msg, size_t len) {
  auto* d = new dd_deferred;
  cudaError_t e = cudaHostAlloc(reinterpret_cast<void**>(&d->host), sizeof(dd_error_record), cudaHostAllocDefault);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&d->done, cudaEventDisableTiming);
  if (e != cudaSuccess) {
    dd::cuda_fail(e, "setting up deferred error reports", msg, len);
    dd_deferred_destroy(d);
    return nullptr;
  }
  std::memset(d->host, 0, sizeof(dd_error_record));
  return d;
}

void dd_deferred_destroy(dd_deferred* d) {
  if (!d) return;
  if (d->done) cudaEventDestroy(d->done);
  if (d->host) cudaFreeHost(d->host);
  delete d;
}

int dd_deferred_after_launch(dd_deferred* d, const void* workspace, void* stream_ptr, char* msg, size_t len) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaStreamIsCapturing(stream, &capture);
  cudaError_t e = cudaMemcpyAsync(d->host, workspace, sizeof(dd_error_record), cudaMemcpyDeviceToHost, stream);
  if (e != cudaSuccess) return dd::cuda_fail(e, "queueing the error-record copy", msg, len);
  if (capture != cudaStreamCaptureStatusNone) {
    d->captured = true;
  } else {
    e = cudaEventRecord(d->done, stream);
    if (e != cudaSuccess) return dd::cuda_fail(e, "recording the error-record event", msg, len);
    d->pending = true;
  }
  return DD_OK;
}

int dd_deferred_poll(dd_deferred* d, void* workspace, void* stream_ptr, int wait, char* msg, size_t len) {
  return dd_deferred_poll_tables(d, workspace, stream_ptr, wait, nullptr, msg, len);
}

int dd_deferred_poll_tables(dd_deferred* d, void* workspace, void* stream_ptr, int wait, const dd_table_lookups* tables,
                            char* msg, size_t len) {
  if (msg && len) msg[0] = 0;
  if (d->pending) {
    cudaError_t e = wait ? cudaEventSynchronize(d->done) : cudaEventQuery(d->done);
    if (e == cudaErrorNotReady) return DD_OK;  // still running: looked at next time
    if (e != cudaSuccess) return dd::cuda_fail(e, "waiting for the error-record copy", msg, len);
    d->pending = false;
  } else if (!(wait && d->captured)) {
    return DD_OK;
  }
  const int rc = dd_format_error_tables(d->host, tables, msg, len);
  if (rc != DD_OK) {
    d->host->code = 0;
    if (workspace) cudaMemsetAsync(workspace, 0, sizeof(dd_error_record), static_cast<cudaStream_t>(stream_ptr));
  }
  return rc;
}

int dd_setup_l2_persistence(const dd_config* cfg, size_t* reserved, char* msg, size_t len) {
  if (reserved) *reserved = 0;
  int dev = 0, max_persist = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&max_persist, cudaDevAttrMaxPersistingL2CacheSize, dev);
  if (e != cudaSuccess) return dd::cuda_fail(e, "querying persisting L2", msg, len);
  const size_t want = (size_t)cfg->num_tables * (size_t)cfg->pinned_rows * (size_t)dd_row_bytes(cfg);
  const size_t bytes = std::min(want, (size_t)max_persist);
  size_t current = 0;
  cudaDeviceGetLimit(&current, cudaLimitPersistingL2CacheSize);
  if (bytes > current) {
    e = cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, bytes);
    if (e != cudaSuccess) return dd::cuda_fail(e, "cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize)", msg, len);
    current = bytes;
  }
  if (reserved) *reserved = current;
  return DD_OK;
}

struct dd_overlap {
  cudaStream_t side = nullptr;
  cudaEvent_t fork = nullptr, done = nullptr;
};

dd_overlap* dd_overlap_create(char* msg, size_t len) {
  auto* o = new dd_overlap;
  cudaError_t e = cudaStreamCreateWithFlags(&o->side, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&o->fork, cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&o->done, cudaEventDisableTiming);
  if (e != cudaSuccess) {
    dd::cuda_fail(e, "creating the overlap stream", msg, len);
    dd_overlap_destroy(o);
    return nullptr;
  }
  return o;
}

void dd_overlap_destroy(dd_overlap* o) {
  if (!o) return;
  if (o->side) cudaStreamSynchronize(o->side);
  if (o->fork) cudaEventDestroy(o->fork);
  if (o->done) cudaEventDestroy(o->done);
  if (o->side) cudaStreamDestroy(o->side);
  delete o;
}

void* dd_overlap_fork(dd_overlap* o, void* stream, char* msg, size_t len) {
  cudaError_t e = cudaEventRecord(o->fork, static_cast<cudaStream_t>(stream));
  if (e == cudaSuccess) e = cudaStreamWaitEvent(o->side, o->fork, 0);
  if (e != cudaSuccess) {
    dd::cuda_fail(e, "forking the overlap stream", msg, len);
    return nullptr;
  }
  return o->side;
}

int dd_overlap_done(dd_overlap* o, char* msg, size_t len) {
  cudaError_t e = cudaEventRecord(o->done, o->side);
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "recording the end of the overlapped work", msg, len);
}

int dd_overlap_join(dd_overlap* o, void* stream, char* msg, size_t len) {
  cudaError_t e = cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), o->done, 0);
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "joining the overlap stream", msg, len);
}

int dd_copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                 int on_device, void* stream, char* msg, size_t len) {
  if (rows == 0 || width == 0) return DD_OK;
  if (!on_device) {
    for (size_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
    return DD_OK;
  }
  cudaError_t e = cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice,
                                    static_cast<cudaStream_t>(stream));
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "copying rows", msg, len);
}

int dd_stream_capturing(void* stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status) != cudaSuccess) return 0;
  return status == cudaStreamCaptureStatusActive ? 1 : 0;
}

int dd_cuda_available(void) {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0 ? 1 : 0;
}

const char* dd_describe_kernel(const dd_config* cfg, char* buf, size_t len) {
  if (!buf || !len) return buf;
  const dd::Plan pl = dd::make_plan(*cfg, nullptr);
  if (pl.warp)
    snprintf(buf, len, "warp_kernel(vec=%dB, lanes=%d, groups=%d, slices=%d, unroll=%d)", pl.vb, pl.lanes,
             pl.groups, pl.slices, pl.unroll);
  else
    snprintf(buf, len, "bag_kernel(%s, prefetch=%d)", dd_name("variant", pl.variant),
             (pl.variant == DD_PREFETCH || pl.variant == DD_COMBINED) ? pl.pd : 0);
  return buf;
}

}  // extern "C"
