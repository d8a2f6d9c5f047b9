// Kernel family 3, what `auto` runs for short bags (plan.cuh, short_rule): a warp sums K consecutive
// bags of one table at once. Each step, lane l < N fetches the id of row l % R of bag l / R (K x R =
// N rows a step) and the warp copies those N rows into its shared memory (cp.async; rows past a
// bag's end or with a bad id are zero-filled and weigh 0); then every lane adds its CB bytes of
// each row to its bag's sums. The K bags' rows are in flight together, and a bag's end is a store.
// Rows of 128 bytes and more: CB = RB / 32, a lane's columns need no shuffles. Rows of 16-64 bytes:
// CB = 4, the warp's G = 32 / (RB / 4) lane groups take a bag's rows in turn, and their sums meet by
// shuffles.
#pragma once

#include "bag_io.cuh"
#include "device_loads.cuh"
#include "pdl.cuh"
#include "policies.cuh"
#include "warp_kernel.cuh"

namespace dd {
namespace {

constexpr int kShortBlock = 128;

// One warp's shared memory: N rows of RB bytes, then each row's scale and bias (row-wise dtypes)
// and weight.
template <int RB, int N>
__host__ __device__ constexpr int short_warp_bytes() { return N * RB + N * 8 + N * 4; }

// Resident blocks an SM the register budget is cut for: what shared memory allows on sm_90 (about
// 227 KB), at most 8 (64 registers).
template <int RB, int N>
constexpr int short_min_blocks() {
  return 227 * 1024 / (kShortBlock / 32 * short_warp_bytes<RB, N>()) < 8
             ? 227 * 1024 / (kShortBlock / 32 * short_warp_bytes<RB, N>())
             : 8;
}

// cp_async (warp_kernel.cuh) that zero-fills the destination instead of copying where copy is false
// (src must still be a valid address); through L1 at every size.
template <int Bytes>
__device__ __forceinline__ void cp_async_zfill(uint32_t dst, const uint8_t* src, bool copy) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(dst), "l"(src), "n"(Bytes), "r"(copy ? Bytes : 0)
               : "memory");
#endif
}

template <int DT, typename IdxT, typename Policy>
__global__ void __launch_bounds__(kShortBlock, short_min_blocks<Policy::kRowBytes, Policy::kRows>())
    short_kernel(const Params p) {
  constexpr int RB = Policy::kRowBytes, K = Policy::kBags, N = Policy::kRows, R = N / K;
  constexpr int CB = short_lane_bytes(RB);                                // bytes of a row a lane adds
  constexpr int LR = RB / CB, G = 32 / LR;                                 // lanes a row, rows added at once
  constexpr int E = CB / 4 * Storage<DT>::kPerWord;                        // its elements
  static_assert(R % G == 0, "a step's rows of a bag split evenly among the lane groups");
  constexpr int kPieces = RB / 16;                                         // 16-byte copies a row
  using RawT = typename Raw<CB>::T;
  extern __shared__ __align__(16) uint8_t short_smem[];
  pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int g = lane / LR, col = lane % LR;  // the rows (g, g + G, ...) and columns this lane adds
  uint8_t* rows = short_smem + (threadIdx.x >> 5) * short_warp_bytes<RB, N>();
  const uint32_t rows_u32 = (uint32_t)__cvta_generic_to_shared(rows);
  float2* sbs = reinterpret_cast<float2*>(rows + N * RB);
  float* ws = reinterpret_cast<float*>(rows + N * RB + N * 8);
  const int64_t groups_per_table = (p.batch + K - 1) / K;
  const int64_t units = groups_per_table * p.tab.num_tables;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const int mine = lane < N ? lane / R : K, r = lane % R;  // the bag and row this lane fetches ids for
  for (int64_t u = (((int64_t)blockIdx.x * blockDim.x) + threadIdx.x) >> 5; u < units; u += warps) {
    const int t = (int)(u / groups_per_table);
    const int64_t b0 = (u - (int64_t)t * groups_per_table) * K;
    const int nb = (int)min((int64_t)K, p.batch - b0);
    const IdxT* idx = static_cast<const IdxT*>(p.lk.io[t].idx);
    const float* psw = p.lk.io[t].psw;
    const int64_t nrows = p.tab.rows[t];
    int64_t start = 0, end = 0;
    if (mine < nb) bag_range<IdxT>(p, t, b0 + mine, r == 0, start, end);
    const int64_t len = end - start;
    int64_t most = len;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) most = max(most, (int64_t)__shfl_xor_sync(kFull, (long long)most, o));
    float acc[K][E];
    float bsum[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
      bsum[i] = 0.0f;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[i][e] = 0.0f;
    }
    for (int64_t l0 = 0; l0 < most; l0 += R) {
      // this lane's row: its global row number (kSkip: zero-filled) and weight
      uint32_t row = kSkip;
      float w = 0.0f;
      if (mine < K && l0 + r < len) {
        const int64_t pos = start + l0 + r;
        const int64_t id = (int64_t)idx[pos];
        if (p.check && (id < 0 || id >= nrows)) {
          record(p.err, kIndexOutOfRange, t, pos, id, nrows);
        } else {
          row = (uint32_t)global_row(p.tab, t, id);
          w = psw ? psw[pos] : 1.0f;
        }
      }
#pragma unroll
      for (int c = 0; c < N * kPieces / 32; ++c) {  // piece (c*32 + lane): row q, 16 bytes at k
        const int piece = c * 32 + lane;
        const int q = piece / kPieces, k = piece % kPieces;
        const uint32_t rq = __shfl_sync(kFull, row, q);
        const bool copy = rq != kSkip;
        cp_async_zfill<16>(rows_u32 + q * RB + k * 16, p.weights + (copy ? (uint64_t)rq * p.row_bytes + k * 16 : 0),
                         copy);
      }
      if constexpr (Storage<DT>::kRowwise) {
        const uint8_t* sbp = row != kSkip ? p.sb + (uint64_t)row * p.sb_stride : p.sb;
        if (lane < N) {
          cp_async_zfill<4>(rows_u32 + N * RB + lane * 8, sbp, row != kSkip);
          cp_async_zfill<4>(rows_u32 + N * RB + lane * 8 + 4, sbp + 4, row != kSkip);
        }
      }
      if (lane < N) ws[lane] = w;
      cp_async_commit();
      cp_async_wait<0>();
      __syncwarp();
#pragma unroll 4
      for (int q0 = 0; q0 < R; q0 += G) {
        const int q = q0 + g;
#pragma unroll
        for (int i = 0; i < K; ++i) {
          const RawT v = *reinterpret_cast<const RawT*>(rows + (i * R + q) * RB + col * CB);
          const float2 sb = Storage<DT>::kRowwise ? sbs[i * R + q] : make_float2(0.f, 0.f);
          add_row<DT, CB>(acc[i], bsum[i], v, sb, ws[i * R + q], true);
        }
      }
      __syncwarp();  // every lane has read the rows before the next step's copies
    }
    const int64_t out0 = b0 * (int64_t)p.tab.num_tables * p.dim + (int64_t)t * p.dim + col * E;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int64_t n = __shfl_sync(kFull, (long long)len, i * R);
      add_biases<DT>(acc[i], bsum[i]);
      sum_groups(acc[i], LR);  // G > 1: the lane groups' sums of alternate rows meet
      if (i < nb && g == i % G) {  // G > 1: each bag stored by one group
        if (p.mode == DD_MEAN) {
#pragma unroll
          for (int e = 0; e < E; ++e) acc[i][e] = n > 0 ? acc[i][e] / (float)n : 0.0f;
        }
        store_run<E>(p, out0 + (int64_t)i * p.tab.num_tables * p.dim, acc[i]);
      }
    }
  }
}

}  // namespace
}  // namespace dd
