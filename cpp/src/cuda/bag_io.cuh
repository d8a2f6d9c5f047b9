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

// W 32-bit words to o (4-byte aligned) with the widest stores (up to 16 bytes) its address allows.
template <int W>
__device__ __forceinline__ void store_words(void* o, const uint32_t (&w)[W]) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(o);
  uint32_t* d = static_cast<uint32_t*>(o);
  if constexpr (W % 4 == 0) {
    if (a % 16 == 0) {
#pragma unroll
      for (int i = 0; i < W; i += 4) *reinterpret_cast<uint4*>(d + i) = make_uint4(w[i], w[i + 1], w[i + 2], w[i + 3]);
      return;
    }
  }
  if constexpr (W % 2 == 0) {
    if (a % 8 == 0) {
#pragma unroll
      for (int i = 0; i < W; i += 2) *reinterpret_cast<uint2*>(d + i) = make_uint2(w[i], w[i + 1]);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < W; ++i) d[i] = w[i];
}

// Outputs pos..pos+N-1 in the output dtype, with the widest stores their address allows. One
// lane's elements in one store: a warp then writes whole 32-byte sectors, where element-wise stores
// wrote each sector in pieces from several instructions, a cost L2 paid at every bag
// (docs/benchmarks.md). 16-bit outputs that do not start on 4 bytes go element by element.
template <int N>
__device__ __forceinline__ void store_run(const Params& p, int64_t pos, const float (&v)[N]) {
  if (p.out_dtype == DD_FP32) {
    uint32_t w[N];
#pragma unroll
    for (int i = 0; i < N; ++i) w[i] = __float_as_uint(v[i]);
    store_words<N>(static_cast<float*>(p.out) + pos, w);
    return;
  }
  if constexpr (N % 2 == 0) {
    uint16_t* o = static_cast<uint16_t*>(p.out) + pos;
    if (reinterpret_cast<uintptr_t>(o) % 4 == 0) {
      uint32_t w[N / 2];
#pragma unroll
      for (int i = 0; i < N / 2; ++i) w[i] = pack_half2(p, v[2 * i], v[2 * i + 1]);
      store_words<N / 2>(o, w);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) store(p, pos + i, v[i]);
}

}  // namespace
}  // namespace dd
