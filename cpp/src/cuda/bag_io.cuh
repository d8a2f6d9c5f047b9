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

}  // namespace
}  // namespace dd
