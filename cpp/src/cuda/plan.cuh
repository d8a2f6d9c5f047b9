// Planning, on the host: the device's facts (read once per device) and the kernel a config runs
// (family, vector width, lanes per row, unroll, prefetch distance). Shared by the launch and by
// dd_describe_kernel, so what is described is what runs.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "../internal.h"
#include "device.cuh"
#include "policies.cuh"

namespace dd {
namespace {

// ---- the kernel a config runs ----
struct Plan {
  int variant;  // resolved (never DD_AUTO)
  bool warp;    // warp_kernel (auto) or bag_kernel
  int vb = 0, lanes = 0, groups = 1, slices = 1;
  int64_t data_bytes = 0;  // a row's bytes of elements (codes)
  int pd = 0;
  int unroll = 8;  // row loads in flight per lane (warp_kernel)
  bool async_rows = false;  // int8: warp_async_kernel (rows in flight in shared memory), sm_80+
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

// Environment knobs for experiments (docs/benchmarks.md), read once per process, not per launch.
struct Knobs {
  int vec_bytes;  // DLRM_DEPLOY_VEC_BYTES: widest vector load tried (0: the plan's choice below)
  int unroll;     // DLRM_DEPLOY_UNROLL: row loads in flight per lane; -1 = per dtype
  int l2_window;  // DLRM_DEPLOY_L2_WINDOW: 0 turns the persisting-L2 access-policy window off
  int async_rows; // DLRM_DEPLOY_ASYNC_ROWS: 0 keeps int8 rows in registers (warp_kernel); 2 also
                  // takes rows of 128 bytes of codes and more through shared memory
  int short_max;  // DLRM_DEPLOY_SHORT: short_kernel up to this many lookups a bag on average
                  // (-1: short_rule's threshold by row size; 0: never)
  int short_bags; // DLRM_DEPLOY_SHORT_BAGS: short_kernel's bags a warp (0: short_bags' choice; where
                  // ShortPolicies lacks the value for the row size and dtype, warp_kernel runs)
  int short_rows; // DLRM_DEPLOY_SHORT_ROWS: short_kernel's rows a step (0: the plan's, or with
                  // DLRM_DEPLOY_SHORT_BAGS the first policy's with those bags)
};

const Knobs& knobs() {
  static const Knobs k = {env_int("DLRM_DEPLOY_VEC_BYTES", 0), env_int("DLRM_DEPLOY_UNROLL", -1),
                          env_int("DLRM_DEPLOY_L2_WINDOW", 1), env_int("DLRM_DEPLOY_ASYNC_ROWS", 1),
                          env_int("DLRM_DEPLOY_SHORT", -1), env_int("DLRM_DEPLOY_SHORT_BAGS", 0),
                          env_int("DLRM_DEPLOY_SHORT_ROWS", 0)};
  return k;
}

Plan make_plan(const dd_config& c, const void* weights) {
  Plan pl;
  pl.variant = c.variant;
  pl.warp = c.variant == DD_AUTO;
  const bool int4 = c.dtype == DD_INT4;
  const int esize = c.dtype == DD_FP32 ? 4 : (c.dtype == DD_INT8 || int4) ? 1 : 2;
  const int64_t data_bytes = int4 ? (int64_t)c.dim / 2 : (int64_t)c.dim * esize;  // int4: two codes per byte
  pl.data_bytes = data_bytes;
  const int64_t row_bytes = row_layout(c).stride;  // bytes from one row's elements (codes) to the next
  const uintptr_t addr = reinterpret_cast<uintptr_t>(weights);
  // Vector width: the widest that divides the row data, the row stride and the base address
  // (16 bytes measured fastest for every dtype at D=128 on H100, docs/benchmarks.md).
  // int4 at D=128 (64 bytes of codes): 8-byte loads, 8 lanes per row (H100, paper shape, uniform:
  // 0.255 ms against 0.269 ms with 16-byte loads; FBGEMM 0.260). D=32 and 64 keep 16 bytes (1.19x
  // and 1.12x FBGEMM measured that way).
  // int8 rows under 128 bytes of codes: narrower loads, more lanes per row, and 4 loads in flight
  // (H100, paper shape, uniform; ours / FBGEMM ms): D 32 8 bytes 0.127 / 0.182 (0.172; 4 bytes
  // 0.141), D 16 4 bytes 0.101 / 0.175 (0.161; 8 bytes 0.106). D 128 keeps 16 bytes (0.259 against
  // 0.273-0.291 with 8 in flight). D 64 first took 8-byte loads (0.176 / 0.200 in warp_kernel);
  // with warp_async_kernel at 4 blocks an SM, 16-byte loads (4 lanes a row, 8 rows a step): split
  // 0.148, row form 0.163, against 0.163 and 0.170 with 8-byte loads (FBGEMM 0.200).
  const bool small_int8 = c.dtype == DD_INT8 && data_bytes < 128;
  const int chosen = int4 && data_bytes == 64 ? 8
                     : small_int8             ? (data_bytes == 64 ? 16 : data_bytes >= 32 ? 8 : 4)
                                              : 16;
  const int want = knobs().vec_bytes > 0 ? knobs().vec_bytes : chosen;
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
  // extra occupancy of 4 on skewed batches, fp32 from 8, int8 from 4.
  // int4 (not measured yet): 8 unless fewer loads per lane cover the 32 lookups of one index batch
  // (groups * 4 >= 32, e.g. D=128: 4 lanes per row, 8 groups), which frees registers.
  // int8 at D 128 and up: 4 in flight at 3 blocks an SM (warp_min_blocks; H100, paper shape, ms: row
  // form 0.252 against 0.257 with 8 in flight at 2 blocks, split_scales 0.221 against 0.238).
  const int dflt = esize == 2 || c.dtype == DD_INT8 ? 4 : (int4 && pl.warp && pl.groups * 4 >= 32) ? 4 : 8;
  pl.unroll = (knobs().unroll != -1 ? knobs().unroll : dflt) <= 4 ? 4 : 8;
  // int8 rows under 128 bytes of codes: rows in flight in shared memory (warp_async_kernel), one
  // index batch a step (groups x unroll = 32). H100, paper shape, uniform, ours / FBGEMM ms, against
  // warp_kernel in the same session: D 16 0.092 (0.101) / 0.176, D 32 0.118 (0.128) / 0.183, D 64
  // with 8 in flight 0.173 (0.177 with 4) / 0.200. D 128 keeps warp_kernel (0.259 against 0.260 with
  // 8 in flight at 2 blocks; with split_scales 0.238 against 0.240).
  const int step_unroll = pl.groups > 1 ? 32 / pl.groups : 0;
  const bool async_int8 = small_int8 || (c.dtype == DD_INT8 && knobs().async_rows == 2);
  if (pl.warp && async_int8 && knobs().async_rows != 0 && (step_unroll == 4 || step_unroll == 8) &&
      step_unroll <= pl.lanes) {
    if (knobs().unroll == -1) pl.unroll = step_unroll;
    pl.async_rows = pl.unroll == step_unroll;
  }
  pl.pd = c.prefetch_distance ? c.prefetch_distance : 8;
  pl.pd = pl.pd <= 4 ? 4 : pl.pd <= 8 ? 8 : 16;  // compiled distances
  return pl;
}

// ---- short bags: short_kernel in place of warp_kernel (short_kernel.cuh) ----
// Where it runs: rows of these bytes of elements (codes), 16-byte aligned rows and blob (its cp.async
// copies), sm_80+, up to max_lookups lookups a bag on average over the call. Measured against
// warp_kernel (warp_async_kernel for int8 at D 64 and under), 12 tables, ms (docs/benchmarks.md):
//  - 128 and 256 bytes, H100: faster at 1 to 38 lookups in every dtype (fp16 D 128 at 19: 0.315
//    against 0.356; int8 D 128 split 0.230 against 0.389; fp16 D 64 at 1: 0.073 against 0.341); at
//    75 warp_kernel is faster for fp16 and fp32 (fp16 D 128 0.302 against 0.317), at 150 for all.
//  - 64 bytes and under, H100: at 1 to 38 lookups faster in every dtype (fp16 D 32 at 5: 0.092
//    against 0.370; at 38, fp16 D 16 0.084 against 0.138, fp32 D 32 0.156 against 0.190; not
//    measured beyond). int8 D 64 (H200): faster up to 100 lookups (split 0.126 against 0.141),
//    slower at 150 (0.137 against 0.127).
//  - 512 bytes, fp32 D 128 only: at 19 lookups 0.632 against 0.641 (H100) and 0.430 against 0.475
//    (H200), at 1-10 lookups 0.180-0.688 against 0.382-0.760 (H100); at 38 slower on the H100
//    (0.631 against 0.615).
struct ShortRule {
  int row_bytes = 0;  // 0: never
  int max_lookups = 0;
};

ShortRule short_rule(const dd_config& c, const Plan& pl) {
  if (!pl.warp || c.dtype == DD_INT4 || row_layout(c).stride % 16) return {};
  const int rb = (int)pl.data_bytes;
  if (rb == 128 || rb == 256) return {rb, 48};
  if (rb == 64 && c.dtype == DD_INT8) return {64, 120};
  if (rb == 16 || rb == 32 || rb == 64) return {rb, 48};
  if (rb == 512 && c.dtype == DD_FP32) return {512, 28};
  return {};
}

// Bags of a few lookups (up to short_few's average): 8 rows a step (16 for 32-byte rows, whose 4
// lane groups each need a row of a bag), as many bags a warp as 16 sums a lane allow (e: a lane's
// elements of a row; 8 bags for fp32 and fp16 rows of 128 bytes and fp32 of 256, 4 for fp16 D 128,
// fp32 D 128 and int8). Small steps leave shared memory for more warps and few zero-filled rows.
// H100, batch 32768, 12 tables, ms, this shape against the older tiers' (docs/benchmarks.md):
// fp16 D 128 at 1 / 2 / 3 / 5 / 10 lookups 0.123 / 0.146 / 0.180 / 0.235 / 0.369 against 0.151 /
// 0.188 / 0.225 / 0.240 / 0.372; fp32 D 128 at 1 / 2 / 3 0.148 / 0.210 / 0.268 against 0.179 /
// 0.221 / 0.270 (at 10 slower, 0.694 against 0.688); fp32 D 64 at 1 / 3 0.079 / 0.138 against
// 0.094 / 0.154; fp32 D 32 at 1 0.053 against 0.069; int8 at 1 lookup, D 32 / 64 / 128, 0.091 /
// 0.097 / 0.124 against 0.099 / 0.111 / 0.160. Where it runs: rows of 128 bytes and more, int8
// rows of 32-128 bytes (int8 D 256 would spill).
struct ShortShape {
  int bags = 0, rows = 0;
};

__host__ __device__ constexpr bool few_used(int dt, int rb) {
  return dt == DD_INT8 ? rb >= 32 && rb <= 128 : rb >= 128;
}

__host__ __device__ constexpr ShortShape few_shape(int dt, int rb) {
  const int cb = short_lane_bytes(rb);
  const int e = cb / 4 * (dt == DD_FP32 ? 1 : dt == DD_INT8 ? 4 : 2);
  const int bags = 16 / e < 8 ? 16 / e : 8;
  const int groups = 32 / (rb / cb), rows = 8 / bags > groups ? 8 / bags : groups;  // rows of a bag a step
  return {bags, bags * rows};
}

// The older tiers' rows a step for these bags a warp (ShortPolicies).
__host__ __device__ constexpr int many_rows(int rb, int bags) {
  return rb == 512 ? 8 : bags == 2 && rb >= 128 ? 16 : 32;
}

// Up to how many lookups a bag on average the few-lookups shape runs: 2, more where it was
// measured faster (fp16 D 128 up to 12, fp32 D 64 and D 128 up to 5, fp32 D 32 and int8 D 32 and
// 128 up to 3). ms against the older tiers, H100: fp32 D 64 at 5 lookups 0.197 against 0.207, at
// 10 slower (0.338 against 0.332); fp32 D 32 at 3 0.086 against 0.106; int8 D 128 at 3 0.178
// against 0.195. H200: fp32 D 32 at 5 0.098 against 0.099; int8 D 128 at 5 0.190 against 0.193;
// slower at 5: fp16 D 64 (0.117 against 0.113), int8 D 64 (0.151 against 0.124), int8 D 32 (0.123
// against 0.113).
int short_few(const dd_config& c, int rb) {
  const bool fp32 = c.dtype == DD_FP32, int8 = c.dtype == DD_INT8;
  if (rb == 512) return 5;
  if (rb == 256 && !int8) return fp32 ? 5 : 12;
  return (rb == 128 && (fp32 || int8)) || (int8 && rb == 32) ? 3 : 2;
}

// What short_kernel is compiled for (ShortPolicies x dtypes): 512-byte rows fp32 only; int8 never
// 8 bags a warp (its 8 bags' sums and biases spill at 64 registers); the few-lookups shapes only for
// the dtypes that take them.
template <int DT, int RB, int K, int N>
constexpr bool short_compiled() {
  if (DT == DD_INT4 || (RB == 512 && DT != DD_FP32)) return false;
  if (N == many_rows(RB, K)) return !(DT == DD_INT8 && K == 8);
  return few_used(DT, RB) && few_shape(DT, RB).bags == K && few_shape(DT, RB).rows == N;
}

// The rule's threshold, or DLRM_DEPLOY_SHORT's where set.
int short_threshold(const ShortRule& r) { return knobs().short_max == -1 ? r.max_lookups : knobs().short_max; }

// The short_kernel a call runs (ShortPolicies): row_bytes 0 runs warp_kernel (or its int8 twin).
struct ShortPlan {
  int row_bytes = 0;
  int bags = 2;
  int rows = 0;  // rows a step (0, from DLRM_DEPLOY_SHORT_BAGS alone: the first policy with those bags)
};

// Bags a warp above short_few, by row bytes and lookups a bag on average (avg_x4: 4 x the
// average). More bags a warp, fewer rows of each a step (ShortPolicies): short bags keep more rows
// in flight. H100, batch 32768, 12 tables, ms with 2 / 4 / 8 bags a warp (docs/benchmarks.md):
//  - 64 bytes and under: 8 up to 12 lookups (fp16 D 32 at 1 lookup 0.133 / 0.088 / 0.061, at 10
//    0.156 / 0.139 / 0.124), then 4 (at 38: 0.107 with 4 against 0.127 with 8); always 4 for int8
//    (D 32 at 5: 0.163 / 0.117 / 0.164, 8 spilling) and for 16-byte rows (a step's 8 lane groups
//    need 8 rows of a bag); int8 D 64 above 48 lookups 2 (H200, at 56: 0.117 against 0.128 with 4).
//  - 128 bytes: 8 up to 3 lookups but for int8 (fp16 D 64 at 3: 0.096 against 0.106 with 8 bags of
//    one row a step), 4 up to 12 (fp32 D 32 at 5: 0.142 / 0.112 / 0.140), then 2 (H100, 19
//    lookups, fp16 D 128: faster than 4 bags of 8 rows).
//  - 256 and 512 bytes: 2 (fp32 D 64 at 5: 0.207 / 0.213 / 0.219).
int short_bags(const dd_config& c, int rb, int64_t avg_x4) {
  const bool int8 = c.dtype == DD_INT8, few = avg_x4 <= 3 * 4, some = avg_x4 <= 12 * 4;
  if (rb <= 64) return int8 ? (rb == 64 && avg_x4 > 48 * 4 ? 2 : 4) : rb == 16 || !some ? 4 : 8;
  if (rb == 128) return !int8 && few ? 8 : some ? 4 : 2;
  return 2;
}

// The shape a call runs: the few-lookups shape up to short_few, else short_bags' bags.
ShortShape short_shape(const dd_config& c, int rb, int64_t avg_x4) {
  if (few_used(c.dtype, rb) && avg_x4 <= 4 * short_few(c, rb)) return few_shape(c.dtype, rb);
  const int bags = short_bags(c, rb, avg_x4);
  return {bags, many_rows(rb, bags)};
}

ShortPlan make_short_plan(const dd_config& c, const Plan& pl, const Lookups& lk, const DeviceInfo& dev,
                          const void* weights) {
  ShortPlan sp;
  const ShortRule rule = short_rule(c, pl);
  const int threshold = short_threshold(rule);
  if (!rule.row_bytes || dev.major < 8 || threshold <= 0 || lk.batch <= 0 || reinterpret_cast<uintptr_t>(weights) % 16)
    return sp;
  int64_t lookups = 0;  // every table's; the packed form's tables share one ids tensor
  for (int t = 0; t < (lk.packed ? 1 : c.num_tables); ++t) lookups += lk.io[t].num_idx;
  const int64_t bags = (int64_t)c.num_tables * lk.batch;
  if (lookups > (int64_t)threshold * bags) return sp;
  sp.row_bytes = rule.row_bytes;
  const ShortShape shape = short_shape(c, rule.row_bytes, lookups * 4 / bags);
  sp.bags = knobs().short_bags > 0 ? knobs().short_bags : shape.bags;
  sp.rows = knobs().short_bags > 0 || knobs().short_rows > 0 ? knobs().short_rows : shape.rows;
  return sp;
}

}  // namespace
}  // namespace dd
