// Per-bag input and output of both kernel families: a bag's id range (bad bags reported and
// counted as empty), the recording of bad input, and the store in the output dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "params.cuh"

namespace dd {
namespace {

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

// One bag's inputs: table t, sample b, the table's row count, its ids [start, end) and per-sample
// weights (psw; null without).
template <typename IdxT>
struct Bag {
  int t;
  int64_t b, rows, start, end;
  const IdxT* idx;
  const float* psw;
};

// Bag number bag (table-major) of the launch; report: this thread records a bad bag.
template <typename IdxT>
__device__ __forceinline__ Bag<IdxT> open_bag(const Params& p, int64_t bag, bool report) {
  Bag<IdxT> bg;
  bg.t = (int)(bag / p.batch);
  bg.b = bag - (int64_t)bg.t * p.batch;
  bg.rows = p.tab.rows[bg.t];
  bg.idx = static_cast<const IdxT*>(p.lk.io[bg.t].idx);
  bg.psw = p.lk.io[bg.t].psw;
  bag_range<IdxT>(p, bg.t, bg.b, report, bg.start, bg.end);
  return bg;
}

__device__ __forceinline__ void store(const Params& p, int64_t pos, float v) {
  if (p.out_dtype == DD_FP32) static_cast<float*>(p.out)[pos] = v;
  else if (p.out_dtype == DD_FP16) static_cast<__half*>(p.out)[pos] = __float2half_rn(v);
  else static_cast<__nv_bfloat16*>(p.out)[pos] = __float2bfloat16_rn(v);
}

// Two outputs as the 32 bits of two 16-bit outputs (the first in the low half).
__device__ __forceinline__ uint32_t pack_half2(const Params& p, float a, float b) {
  if (p.out_dtype == DD_FP16) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Outputs pos..pos+N-1 with the widest stores (up to 16 bytes) their address allows. One lane's
// elements in one store: a warp then writes whole 32-byte sectors, where element-wise stores wrote
// each sector in pieces from several instructions, a cost L2 paid at every bag (docs/benchmarks.md).
template <int N>
__device__ __forceinline__ void store_run(const Params& p, int64_t pos, const float (&v)[N]) {
  if (p.out_dtype == DD_FP32) {
    float* o = static_cast<float*>(p.out) + pos;
    const uintptr_t a = reinterpret_cast<uintptr_t>(o);
    if constexpr (N % 4 == 0) {
      if (a % 16 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 4) *reinterpret_cast<float4*>(o + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
        return;
      }
    }
    if constexpr (N % 2 == 0) {
      if (a % 8 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 2) *reinterpret_cast<float2*>(o + i) = make_float2(v[i], v[i + 1]);
        return;
      }
    }
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = v[i];
    return;
  }
  uint16_t* o = static_cast<uint16_t*>(p.out) + pos;
  const uintptr_t a = reinterpret_cast<uintptr_t>(o);
  if constexpr (N % 8 == 0) {
    if (a % 16 == 0) {
#pragma unroll
      for (int i = 0; i < N; i += 8)
        *reinterpret_cast<uint4*>(o + i) = make_uint4(pack_half2(p, v[i], v[i + 1]), pack_half2(p, v[i + 2], v[i + 3]),
                                                      pack_half2(p, v[i + 4], v[i + 5]), pack_half2(p, v[i + 6], v[i + 7]));
      return;
    }
  }
  if constexpr (N % 4 == 0) {
    if (a % 8 == 0) {
#pragma unroll
      for (int i = 0; i < N; i += 4)
        *reinterpret_cast<uint2*>(o + i) = make_uint2(pack_half2(p, v[i], v[i + 1]), pack_half2(p, v[i + 2], v[i + 3]));
      return;
    }
  }
  if constexpr (N % 2 == 0) {
    if (a % 4 == 0) {
#pragma unroll
      for (int i = 0; i < N; i += 2) *reinterpret_cast<uint32_t*>(o + i) = pack_half2(p, v[i], v[i + 1]);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) store(p, pos + i, v[i]);
}

}  // namespace
}  // namespace dd
