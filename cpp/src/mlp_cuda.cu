// A chain of fully connected layers in one kernel (dlrm_deploy::Mlp) on the GPU. DLRM's MLPs are
// narrow (the paper model's: 256-128-128 and 206-128-64-1), so at serving batches every GEMM is a
// few microseconds and ONNX Runtime spends as long again on a bias-broadcast kernel, an activation
// kernel and the launch gaps around each layer. Here a block takes a few rows of the batch through
// every layer with the activations kept in shared memory: one launch for the whole chain.
//
// The block's weights: where every layer fits in shared memory beside the activations (DLRM's
// MLPs do), all layers are requested at the start and each layer waits only for its own. On sm_90+
// by bulk copies (the tensor memory accelerator) shared by a cluster of 2 blocks: each block copies
// half the rows into both blocks' shared memory (multicast), so the weights leave L2 half as often.
// Elsewhere by cp.async, each block starting at its own row; layers too big go in column chunks.
// A warp computes a tile of rows x columns (picked per layer by a cost model of FMA issue against
// shared-memory wavefronts) whose 16-byte loads touch 8 or 16 weight rows (one or two wavefronts;
// the paper's 128-wide layers: 16 weight rows and 2 input rows), fp32 FMAs, up to 16 sums a thread.
// Measured on the H100 (paper MLPs 256-128-128 / 206-128-64-1, one kernel each, back-to-back
// launches): batch 2048 17.5 / 17.2 us (weights in L2; 20.4 / 20.1 us with L2 flushed), against
// 21.2 / 19.6 (24.5 / 23.7) for the kernel before (every block staging every weight by cp.async,
// a warp's lanes on 32 weight rows); batch 256 10.6 / 11.9 us. Clusters of 4 or 8 blocks measured
// slower (32 / 31 us at batch 2048): fewer of them fit the SMs at once. The K loop unrolled by 8
// (was 2): 18.0 / 17.7 -> 16.7 / 15.9 us. Biases read before the sums, not in the epilogue: 15.9 /
// 15.0 -> 15.3 / 14.5 us (batch 2048, graphed back to back).
//
// Beside the lookups (dd_mlp_args.max_blocks, the op's beside=1): few blocks, each staging the
// weights once and looping over groups of rows, so that the lookups keep the other SMs (a block
// needs a whole SM's shared memory: a full grid launched beside them either waits for their tail or
// holds every SM while they start). See beside_blocks below and docs/benchmarks.md.
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <cstdio>
#include <cstdlib>

#include "cuda/status.cuh"
#include "dlrm_deploy/mlp.h"
#include "cuda/device.cuh"
#include "cuda/pdl.cuh"
#include "internal.h"
#include "mlp_internal.h"

using dd::fail;

namespace {
#ifndef DD_MLP_THREADS
#define DD_MLP_THREADS 256
#endif
constexpr int kThreads = DD_MLP_THREADS;  // 512 measured 5-25% slower on the H100 (paper MLPs, batch 256-4096)
constexpr int kWarps = kThreads / 32;
#ifndef DD_MLP_UNROLL
#define DD_MLP_UNROLL 8
#endif
constexpr int kUnroll = DD_MLP_UNROLL;  // steps of K per unrolled loop body
constexpr int kMaxRows = 16;  // rows of the batch per block
constexpr int kMaxDevices = 64;
constexpr int kCluster = 2;  // blocks sharing each weight read (bulk copies)
constexpr int kBarBytes = 8 * DD_MLP_MAX_LAYERS;  // in front of the activations (16-byte multiple)

struct Layers {
  const float* w[DD_MLP_MAX_LAYERS];
  const float* b[DD_MLP_MAX_LAYERS];
  int n[DD_MLP_MAX_LAYERS];
  int k[DD_MLP_MAX_LAYERS];
  int act[DD_MLP_MAX_LAYERS];
  int vec[DD_MLP_MAX_LAYERS];  // floats per asynchronous copy when staging weights: 4, 2 or 1
  int ldw[DD_MLP_MAX_LAYERS];  // staged weight row stride: >= K, a multiple of 4, 4 mod 32 (no bank conflicts)
  int off[DD_MLP_MAX_LAYERS];  // preloaded: the layer's weights' offset (floats) in the weight area
  // A warp computes a tile of (rg x r) rows by (32 / rg x cb) columns: lane (i, j) of the rg x 32/rg
  // lanes takes r rows i, i + rg, ... and cb columns j, j + 32/rg (chosen per layer on the host).
  int rg[DD_MLP_MAX_LAYERS];
  int r[DD_MLP_MAX_LAYERS];
  int cb[DD_MLP_MAX_LAYERS];
  int count;
  bool preload;  // every layer's weights staged at the start (they fit), else layer by layer in chunks
  bool bulk;     // preloaded by bulk copies (vec holds each layer's kStageRows / kStageFlat form)
};

// Stage weight rows [c0, c0 + pe) (all K columns) into shared memory at row stride ldw, by
// asynchronous copies (cp.async: no registers, every copy of the block in flight at once) of V
// floats each, committed as one group. V = 4 needs K % 4 == 0 and 16-byte aligned weights, V = 2
// K % 2 == 0 and 8 bytes.
template <int V>
__device__ __forceinline__ void stage_weights(float* ws, int ldw, const float* __restrict__ W, int K, int c0, int pe) {
  const int per_row = K / V, lane = threadIdx.x % 32;
  // Every block reads the same weights: each starts at its own row, so that the blocks' requests
  // spread over L2's slices instead of queueing at the same lines together.
  const int rot = (int)((int64_t)blockIdx.x * pe / gridDim.x);
  for (int j = threadIdx.x / 32; j < pe; j += kWarps) {  // a warp per row: consecutive lanes, consecutive bytes
    const int p = j + rot < pe ? j + rot : j + rot - pe;
    const float* src = W + (size_t)(c0 + p) * K;
    float* dst = ws + p * ldw;
    for (int q = lane; q < per_row; q += 32) __pipeline_memcpy_async(dst + q * V, src + q * V, V * sizeof(float));
  }
  __pipeline_commit();
}

__device__ __forceinline__ void stage_layer(float* ws, int ldw, const float* __restrict__ W, int K, int vec, int c0,
                                            int pe) {
  if (vec == 4)
    stage_weights<4>(ws, ldw, W, K, c0, pe);
  else if (vec == 2)
    stage_weights<2>(ws, ldw, W, K, c0, pe);
  else
    stage_weights<1>(ws, ldw, W, K, c0, pe);
}

// Columns [c0, c0 + pe) of one layer for `rows` rows, from the input rows (shared memory, stride
// ld_in) and the staged weight rows of those columns (ws, stride ldw), into out (stride ld_out).
// The output goes in warp tiles of (RG x R) rows by (CL x CB) columns, CL = 32 / RG: lane (i, j)
// sums rows i + RG * a and columns j + CL * b over K in R x CB registers. A warp's weight loads then
// touch only CL rows and its input loads RG rows (with CL = 8 and rows at 4 mod 32 floats, each
// 16-byte load of the warp is one shared-memory wavefront), so each load serves R or CB sums.
// Rows and columns past the ends repeat the last one (never stored).
template <int R, int CB, int VW>
__device__ __forceinline__ void tiles(const float* in, int ld_in, int rows, int K, const float* ws, int ldw, int c0,
                                      int pe, const float* __restrict__ bias, int act, float* out, int64_t ld_out,
                                      int RG) {
  using Vec = typename std::conditional<VW == 4, float4, float2>::type;
  const int CL = 32 / RG, lane = threadIdx.x % 32;
  const int li = lane / CL, lj = lane % CL;
  const int tr = RG * R, tc = CL * CB;
  const int trows = (rows + tr - 1) / tr, tcols = (pe + tc - 1) / tc;
  const int kv = K / VW * VW;
  for (int t = threadIdx.x / 32; t < trows * tcols; t += kWarps) {
    const int r0 = (t / tcols) * tr + li, cc = (t % tcols) * tc + lj;
    const float* x[R];
    const float* w[CB];
#pragma unroll
    for (int i = 0; i < R; ++i) x[i] = in + min(r0 + i * RG, rows - 1) * ld_in;
#pragma unroll
    for (int j = 0; j < CB; ++j) w[j] = ws + min(cc + j * CL, pe - 1) * ldw;
    // The biases first: their load's latency hides behind the sums (in the epilogue it stalled
    // every warp once per layer).
    float bias_of[CB];
#pragma unroll
    for (int j = 0; j < CB; ++j) bias_of[j] = __ldg(bias + c0 + min(cc + j * CL, pe - 1));
    float acc[R][CB];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < CB; ++j) acc[i][j] = 0.f;
#pragma unroll kUnroll
    for (int k = 0; k < kv; k += VW) {
      Vec wv[CB], xv[R];
#pragma unroll
      for (int j = 0; j < CB; ++j) wv[j] = *reinterpret_cast<const Vec*>(w[j] + k);
#pragma unroll
      for (int i = 0; i < R; ++i) xv[i] = *reinterpret_cast<const Vec*>(x[i] + k);
      // R x CB independent FMAs between two on the same sum (none waits on the one before)
#pragma unroll
      for (int u = 0; u < VW; ++u)
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int j = 0; j < CB; ++j)
            acc[i][j] = fmaf(reinterpret_cast<const float*>(&xv[i])[u], reinterpret_cast<const float*>(&wv[j])[u],
                             acc[i][j]);
    }
    for (int k = kv; k < K; ++k) {
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < CB; ++j) acc[i][j] = fmaf(x[i][k], w[j][k], acc[i][j]);
    }
#pragma unroll
    for (int j = 0; j < CB; ++j) {
      const int c = cc + j * CL;
      if (c >= pe) break;
#pragma unroll
      for (int i = 0; i < R; ++i)
        if (r0 + i * RG < rows) out[(r0 + i * RG) * ld_out + c0 + c] = dd::mlp_activate(acc[i][j] + bias_of[j], act);
    }
  }
}

// VW = 4 where the staged rows are 16-byte aligned (ldw % 4 == 0), else 2 (ldw % 4 == 2).
__device__ __forceinline__ void layer_tiles(int R, int CB, const float* in, int ld_in, int rows, int K, const float* ws,
                                            int ldw, int c0, int pe, const float* __restrict__ bias, int act,
                                            float* out, int64_t ld_out, int RG) {
#define DD_MLP_TILES(R_, CB_)                                                                          \
  (ldw % 4 == 0 ? tiles<R_, CB_, 4>(in, ld_in, rows, K, ws, ldw, c0, pe, bias, act, out, ld_out, RG) \
                : tiles<R_, CB_, 2>(in, ld_in, rows, K, ws, ldw, c0, pe, bias, act, out, ld_out, RG))
  if (CB == 2) {
    if (R == 1) DD_MLP_TILES(1, 2);
    else if (R == 2) DD_MLP_TILES(2, 2);
    else if (R == 4) DD_MLP_TILES(4, 2);
    else DD_MLP_TILES(8, 2);
  } else {
    if (R == 1) DD_MLP_TILES(1, 1);
    else if (R == 2) DD_MLP_TILES(2, 1);
    else if (R == 4) DD_MLP_TILES(4, 1);
    else DD_MLP_TILES(8, 1);
  }
#undef DD_MLP_TILES
}

// ---- every layer's weights by the tensor memory accelerator (sm_90+) ----
// One bulk copy per weight row (form kRows: K % 4 == 0, rows land at the padded stride) or per
// 4 KB piece of the whole matrix (form kFlat: K even, rows land at stride K and are read as float2),
// each completing on the layer's mbarrier in shared memory. A cluster of C blocks shares the reads:
// block q copies every C-th row or piece into all C blocks' shared memory at once (multicast), so a
// weight byte leaves L2 once per cluster.
enum { kStageRows = 1, kStageFlat = 2 };

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar, uint16_t mask,
                                          bool multicast) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (multicast)
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1], %2, [%3], "
        "%4;" ::"r"(smem_u32(dst)),
        "l"(src), "r"(bytes), "r"(smem_u32(bar)), "h"(mask)
        : "memory");
  else
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(bar))
                 : "memory");
#endif
}
#endif

__device__ __forceinline__ void bulk_preload(const Layers& L, float* ws, uint64_t* bars) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t rank = 0, csize = 1;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(csize));
  if (threadIdx.x == 0) {
    for (int l = 0; l < L.count; ++l)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bars + l)) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    // This block's arrival, expecting every byte of the layer (its own copies' and its peers').
    for (int l = 0; l < L.count; ++l)
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bars + l)),
                   "r"((uint32_t)((size_t)L.n[l] * L.k[l] * sizeof(float)))
                   : "memory");
  }
  // Every block's barriers are ready before any block's copies can complete on them.
  if (csize > 1)
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
  else
    __syncthreads();
  constexpr int kFlatPiece = 4096;  // bytes per bulk copy of a flat-form matrix
  const uint16_t mask = (uint16_t)((1u << csize) - 1);
  const bool mc = csize > 1;
  for (int l = 0; l < L.count; ++l) {
    float* dst = ws + L.off[l];
    const float* W = L.w[l];
    const int K = L.k[l];
    if (L.vec[l] == kStageRows) {
      for (int p = rank + csize * threadIdx.x; p < L.n[l]; p += csize * kThreads)
        bulk_copy(dst + (size_t)p * L.ldw[l], W + (size_t)p * K, (uint32_t)(K * sizeof(float)), bars + l, mask, mc);
    } else {
      const size_t total = (size_t)L.n[l] * K * sizeof(float);
      const size_t pieces = (total + kFlatPiece - 1) / kFlatPiece;
      for (size_t q = rank + csize * threadIdx.x; q < pieces; q += csize * kThreads) {
        const size_t at = q * kFlatPiece;
        bulk_copy(reinterpret_cast<char*>(dst) + at, reinterpret_cast<const char*>(W) + at,
                  (uint32_t)min((size_t)kFlatPiece, total - at), bars + l, mask, mc);
      }
    }
  }
#endif
}

__device__ __forceinline__ void bulk_wait(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\nselp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(smem_u32(bar))
        : "memory");
  } while (!done);
#endif
}

// Activations ping-pong between two buffers: A (the input, and the output of odd layers) at row
// stride ld_a, B (the output of even layers) at ld_b; the last layer writes y.
__global__ void __launch_bounds__(kThreads, 1) mlp_kernel(const float* __restrict__ x, int64_t batch, int in_width,
                                                       Layers L, float* __restrict__ y, int block_rows, int ld_a,
                                                       int ld_b, bool x_vec, int chunk, bool fixed_weights, bool x_ready) {
  extern __shared__ float4 smem4[];
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem4);  // kBarBytes: one mbarrier per layer (bulk)
  float* buf_a = reinterpret_cast<float*>(smem4) + kBarBytes / sizeof(float);
  float* buf_b = buf_a + block_rows * ld_a;
  float* ws = buf_b + block_rows * ld_b;
  dd::pdl_trigger();  // the next kernel's blocks may take SMs as this one's finish
  // Fixed weights are copied while the kernel before this one finishes (pdl.cuh); x and any weights
  // an earlier kernel may write are read after it. With x_ready (dd_mlp_args.input_ready, fixed
  // weights only) every layer but the last runs before the wait too: nothing is written to global
  // memory before it.
  if (!fixed_weights) dd::pdl_wait();
  if (L.bulk)
    bulk_preload(L, ws, bars);
  else if (L.preload)  // every layer's weights in flight at once, one commit group per layer
    for (int l = 0; l < L.count; ++l) stage_layer(ws + L.off[l], L.ldw[l], L.w[l], L.k[l], L.vec[l], 0, L.n[l]);
  if (fixed_weights && !x_ready) dd::pdl_wait();
  // A block per group of block_rows rows, or (a grid of fewer blocks) each block taking every
  // gridDim.x-th group with its weights staged once. A block with no rows (a cluster's spare)
  // still waits for every layer's copies: its peers write into its shared memory.
  const int64_t groups = (batch + block_rows - 1) / block_rows;
  for (int64_t g = blockIdx.x; g < max(groups, (int64_t)gridDim.x); g += gridDim.x) {
    const int64_t r0 = g * block_rows;
    const int rows = (int)max((int64_t)0, min((int64_t)block_rows, batch - r0));
    if (g != blockIdx.x) __syncthreads();  // the previous group's last layer has read its input
    const float* xs = x + r0 * in_width;  // the group's rows, contiguous
    if (x_vec) {
      const int q = in_width / 4;
      for (int e = threadIdx.x; e < rows * q; e += kThreads)
        *reinterpret_cast<float4*>(buf_a + (e / q) * ld_a + 4 * (e % q)) = __ldg(reinterpret_cast<const float4*>(xs) + e);
    } else {
      for (int e = threadIdx.x; e < rows * in_width; e += kThreads)
        buf_a[(e / in_width) * ld_a + e % in_width] = __ldg(xs + e);
    }
    for (int l = 0; l < L.count; ++l) {
      const bool last = l + 1 == L.count, even = l % 2 == 0;
      const float* in = even ? buf_a : buf_b;
      const int ld_in = even ? ld_a : ld_b;
      float* dst = last ? y + r0 * L.n[l] : even ? buf_b : buf_a;
      const int64_t ld_out = last ? L.n[l] : even ? ld_b : ld_a;
      const int K = L.k[l], N = L.n[l];
      if (last && x_ready) dd::pdl_wait();  // out may be memory the kernels before read or write
      if (L.preload) {
        if (L.bulk)
          bulk_wait(bars + l);  // this layer's bytes landed (later layers' may still fly); at once after the first group
        else
          __pipeline_wait_prior(L.count - 1 - l);  // this layer's group landed (later layers' may still fly)
        __syncthreads();                           // ... for every thread's copies; the layer's input written
        layer_tiles(L.r[l], L.cb[l], in, ld_in, rows, K, ws + L.off[l], L.ldw[l], 0, N, L.b[l], L.act[l], dst,
                    ld_out, L.rg[l]);
        continue;
      }
      for (int c0 = 0; c0 < N; c0 += chunk) {
        const int pe = min(chunk, N - c0);
        __syncthreads();  // ws and the layer's input are free / written
        stage_layer(ws, L.ldw[l], L.w[l] + (size_t)c0 * K, K, L.vec[l], 0, pe);
        __pipeline_wait_prior(0);
        __syncthreads();
        layer_tiles(L.r[l], L.cb[l], in, ld_in, rows, K, ws, L.ldw[l], c0, pe, L.b[l], L.act[l], dst, ld_out,
                    L.rg[l]);
      }
    }
  }
}

// The kernel's opt-in shared memory raised once per device (cudaFuncSetAttribute).
std::atomic<int> g_raised[kMaxDevices];

// Rows per block: DLRM_DEPLOY_MLP_ROWS when set (1..16, for tuning), else enough blocks for every SM.
int rows_per_block(int64_t batch, int sms) {
  static const int forced = [] {
    const char* s = std::getenv("DLRM_DEPLOY_MLP_ROWS");
    const int v = s ? std::atoi(s) : 0;
    return v >= 1 && v <= kMaxRows ? v : 0;
  }();
  if (forced) return forced;
  const int64_t r = (batch + sms - 1) / (sms > 0 ? sms : 1);
  return (int)(r < 1 ? 1 : r > kMaxRows ? kMaxRows : r);
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// A row stride in floats for n floats: a multiple of 4 (16-byte loads) and 4 mod 32, so that
// consecutive rows' 16-byte pieces fall in different banks.
int padded(int64_t n) {
  int v = (int)((n + 3) / 4 * 4);
  return v + (36 - v % 32) % 32;
}

// The warp tile of a layer (rows x pe columns per block): the (rg, r, cb) with the least estimated
// time per 4 steps of K for the block. A warp's step costs r x cb x 4 FMA instructions (4 warps
// share an SM's cycle of FMAs) and r + cb x ceil(cl / 8) shared-memory wavefronts (one per cycle
// for the SM); ties go to more busy warps.
void pick_tile(int rows, int pe, int* rg_out, int* r_out, int* cb_out) {
  long best = -1;
  int best_active = 0;
  for (int rg : {1, 2, 4, 8})
    for (int r : {1, 2, 4, 8})
      for (int cb : {1, 2}) {
        const int cl = 32 / rg;
        const long tiles = (long)((rows + rg * r - 1) / (rg * r)) * ((pe + cl * cb - 1) / (cl * cb));
        const long rounds = (tiles + kWarps - 1) / kWarps;
        const int active = (int)std::min<long>(tiles, kWarps);
        const long fma = (long)r * cb * 4 * ((active + 3) / 4);
        const long lds = (long)(r + cb * ((cl + 7) / 8)) * active;
        const long cost = rounds * std::max(fma, lds);
        if (best < 0 || cost < best || (cost == best && active > best_active)) {
          best = cost;
          best_active = active;
          *rg_out = rg;
          *r_out = r;
          *cb_out = cb;
        }
      }
}
// DLRM_DEPLOY_MLP_TILE="rg,r,cb" (for tuning): one warp tile for every layer, read once per
// process; (0, 0, 0) when unset or not one of the compiled tiles.
int3 forced_tile() {
  static const int3 t = [] {
    const char* s = std::getenv("DLRM_DEPLOY_MLP_TILE");
    int rg = 0, r = 0, cb = 0;
    auto pow2 = [](int v, int most) { return v >= 1 && v <= most && (v & (v - 1)) == 0; };
    if (s && std::sscanf(s, "%d,%d,%d", &rg, &r, &cb) == 3 && pow2(rg, 8) && pow2(r, 8) && pow2(cb, 2))
      return make_int3(rg, r, cb);
    return make_int3(0, 0, 0);
  }();
  return t;
}
// Blocks per cluster for the bulk copies: DLRM_DEPLOY_MLP_CLUSTER when set (1, 2, 4 or 8, for
// tuning), else kCluster; never more than the blocks.
int cluster_size(int64_t blocks) {
  static const int forced = [] {
    const char* s = std::getenv("DLRM_DEPLOY_MLP_CLUSTER");
    const int v = s ? std::atoi(s) : 0;
    return v == 1 || v == 2 || v == 4 || v == 8 ? v : 0;
  }();
  int c = forced ? forced : kCluster;
  while (c > 1 && c > blocks) c /= 2;
  return c;
}
// Beside other kernels (the lookups; DD_MLP_BESIDE): a quarter of the SMs, blocks of kMaxRows rows
// each looping over the groups of rows, so that the others keep most SMs; where that would give a
// block less than two groups, 0: the usual grid over every SM. Smaller batches measured level or
// slower beside the lookups (H100, paper model fp32, graphed end to end: batch 512 with 16 blocks
// 0.209 against 0.203 ms, batch 256 with 16 blocks of one group 0.132 against 0.119 ms; batch 2048
// with 34 blocks 0.666 against 0.674 ms).
// DLRM_DEPLOY_MLP_BESIDE (blocks, for tuning) replaces the quarter, read once per process.
int64_t beside_blocks(int64_t batch, int sms) {
  static const int forced = [] {
    const char* s = std::getenv("DLRM_DEPLOY_MLP_BESIDE");
    const int v = s ? std::atoi(s) : 0;
    return v > 0 ? v : 0;
  }();
  const int64_t blocks = forced ? forced : std::max(1, sms / 4);
  return (batch + kMaxRows - 1) / kMaxRows >= 2 * blocks ? blocks : 0;
}

// One chain's launch: the kernel's layer table, activation strides, rows per block, weight rows
// per chunk (layers staged one by one) and dynamic shared memory.
struct ChainPlan {
  Layers L{};
  int ld_a = 0, ld_b = 0, block_rows = 0, chunk = 0;
  int64_t max_blocks = 0;  // > 0: blocks looping over the groups of rows (beside other kernels)
  size_t smem = 0;
};

// Plans a chain for the device: how the weights are staged (bulk copies or cp.async; every layer
// at once or in chunks), the activation buffers' strides, the rows per block and each layer's
// warp tile. DD_ERR_UNSUPPORTED when the layers do not fit in shared memory.
int plan_chain(const dd_mlp_args* a, const dd::DeviceInfo& dev, ChainPlan* p, char* msg, size_t len) {
  Layers& L = p->L;
  L.count = a->layers;
  L.bulk = dev.major >= 9;  // until a layer has no bulk form
  int64_t wide_a = a->in_width, wide_b = 1;  // the widest activation each buffer holds
  int widest_n = 1;
  for (int i = 0; i < a->layers; ++i) {
    L.w[i] = a->weights[i];
    L.b[i] = a->biases[i];
    L.n[i] = (int)a->w_rows[i];
    L.k[i] = (int)a->w_cols[i];
    L.act[i] = a->activations[i];
    const bool rows_form = L.k[i] % 4 == 0 && aligned(L.w[i], 16);
    const bool flat_form = L.k[i] % 2 == 0 && (int64_t)L.n[i] * L.k[i] % 4 == 0 && aligned(L.w[i], 16);
    L.bulk = L.bulk && (rows_form || flat_form);
    widest_n = std::max(widest_n, L.n[i]);
    if (i + 1 < a->layers) {
      int64_t& w = i % 2 == 0 ? wide_b : wide_a;
      w = std::max(w, a->w_rows[i]);
    }
  }
  // Staged weight strides: the padded stride, or K for the bulk copies' flat form.
  int max_ldw = 0;
  size_t all_weights = 0;  // floats, every layer staged
  for (int i = 0; i < a->layers; ++i) {
    const bool flat = L.bulk && L.k[i] % 4 != 0;
    L.vec[i] = L.bulk ? (flat ? kStageFlat : kStageRows)
               : L.k[i] % 4 == 0 && aligned(L.w[i], 16) ? 4
               : L.k[i] % 2 == 0 && aligned(L.w[i], 8) ? 2
                                                         : 1;
    L.ldw[i] = flat ? L.k[i] : padded(L.k[i]);
    L.off[i] = (int)all_weights;
    all_weights += (size_t)L.n[i] * L.ldw[i];
    max_ldw = std::max(max_ldw, L.ldw[i]);
  }
  const int ld_a = padded(wide_a), ld_b = padded(wide_b);
  const size_t smem_limit = (size_t)dev.smem_optin;
  p->max_blocks = a->max_blocks > 0 ? a->max_blocks : a->max_blocks == DD_MLP_BESIDE ? beside_blocks(a->batch, dev.sms) : 0;
  int block_rows = p->max_blocks > 0 ? kMaxRows : rows_per_block(a->batch, dev.sms);
  auto bytes = [&](int rows_, size_t weight_floats) {
    return kBarBytes + sizeof(float) * ((size_t)rows_ * (ld_a + ld_b) + weight_floats);
  };
  // Every layer's weights staged at once where they fit beside the activations (DLRM's MLPs do),
  // else layer by layer in chunks of as many weight rows as fit (at least 8 of the widest).
  L.preload = bytes(block_rows, all_weights) <= smem_limit;
  int chunk = widest_n;
  if (!L.preload) {
    if (L.bulk) {  // the chunked path stages by cp.async at padded strides
      L.bulk = false;
      max_ldw = 0;
      for (int i = 0; i < a->layers; ++i) {
        L.vec[i] = L.k[i] % 4 == 0 ? 4 : L.k[i] % 2 == 0 ? 2 : 1;
        L.ldw[i] = padded(L.k[i]);
        max_ldw = std::max(max_ldw, L.ldw[i]);
      }
    }
    while (chunk > 8 && bytes(block_rows, (size_t)chunk * max_ldw) > smem_limit) chunk = (chunk + 1) / 2;
    while (block_rows > 1 && bytes(block_rows, (size_t)chunk * max_ldw) > smem_limit) --block_rows;
  }
  const size_t smem = bytes(block_rows, L.preload ? all_weights : (size_t)chunk * max_ldw);
  if (smem > smem_limit)
    return fail(DD_ERR_UNSUPPORTED, msg, len, "layers %lld wide do not fit in shared memory (%d bytes)",
                (long long)std::max<int64_t>(std::max<int64_t>(wide_a, wide_b), widest_n), dev.smem_optin);
  for (int i = 0; i < a->layers; ++i) pick_tile(block_rows, std::min(chunk, L.n[i]), &L.rg[i], &L.r[i], &L.cb[i]);
  const int3 tile = forced_tile();
  if (tile.x > 0)
    for (int i = 0; i < a->layers; ++i) L.rg[i] = tile.x, L.r[i] = tile.y, L.cb[i] = tile.z;
  p->ld_a = ld_a;
  p->ld_b = ld_b;
  p->block_rows = block_rows;
  p->chunk = chunk;
  p->smem = smem;
  return DD_OK;
}
}  // namespace

extern "C" {

int64_t dd_mlp_beside_blocks(int64_t batch) {
  dd::DeviceInfo dev;
  char msg[DD_MSG_LEN];
  return batch > 0 && dd::device_info(&dev, msg, sizeof(msg)) == DD_OK ? beside_blocks(batch, dev.sms) : 0;
}

int dd_mlp_cuda(const dd_mlp_args* a, void* stream, char* msg, size_t len) {
  if (int rc = dd_mlp_check(a, msg, len)) return rc;
  if (a->batch == 0) return DD_OK;
  if (a->batch > ((int64_t)1 << 40)) return fail(DD_ERR_INPUT, msg, len, "batch too large");
  dd::DeviceInfo dev;
  if (int rc = dd::device_info(&dev, msg, len)) return rc;
  if (dev.ordinal < 0 || dev.ordinal >= kMaxDevices) return fail(DD_ERR_UNSUPPORTED, msg, len, "device %d", dev.ordinal);
  ChainPlan plan;
  if (int rc = plan_chain(a, dev, &plan, msg, len)) return rc;
  const Layers& L = plan.L;
  const int block_rows = plan.block_rows;
  const size_t smem = plan.smem;
  cudaError_t e = cudaSuccess;
  if (smem > 48 * 1024 && g_raised[dev.ordinal].load() == 0) {
    e = cudaFuncSetAttribute(mlp_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_optin);
    if (e != cudaSuccess) return dd::cuda_fail(e, "raising the MLP kernel's shared memory", msg, len);
    g_raised[dev.ordinal].store(1);
  }
  int64_t blocks = (a->batch + block_rows - 1) / block_rows;
  if (plan.max_blocks > 0) blocks = std::min(blocks, plan.max_blocks);
  // Bulk copies shared by a cluster of blocks (a multiple of its size, spare blocks compute nothing).
  const int csize = L.bulk ? cluster_size(blocks) : 1;
  blocks = (blocks + csize - 1) / csize * csize;
  if (blocks > 0x7fffffff) return fail(DD_ERR_INPUT, msg, len, "batch too large");
  const bool x_vec = a->in_width % 4 == 0 && aligned(a->x, 16);
  cudaLaunchConfig_t cfg =
      dd::launch_config(dim3((unsigned)blocks), dim3(kThreads), smem, static_cast<cudaStream_t>(stream));
  // Programmatic dependent launch first (kept when a cluster is refused), then the cluster.
  cudaLaunchAttribute attr[2];
  const int pdl = dd::pdl_attribute(dev.major, &attr[0]);
  if (csize > 1) {
    attr[pdl].id = cudaLaunchAttributeClusterDimension;
    attr[pdl].val.clusterDim.x = csize;
    attr[pdl].val.clusterDim.y = 1;
    attr[pdl].val.clusterDim.z = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = pdl + (csize > 1 ? 1 : 0);
  const bool fixed = a->fixed_weights != 0, x_ready = fixed && a->input_ready != 0;
  e = cudaLaunchKernelEx(&cfg, mlp_kernel, a->x, a->batch, (int)a->in_width, L, a->out, block_rows, plan.ld_a,
                         plan.ld_b, x_vec, plan.chunk, fixed, x_ready);
  if (e != cudaSuccess && csize > 1) {  // no room for a cluster here (e.g. a shared or partitioned GPU): blocks alone
    cudaGetLastError();
    cfg.numAttrs = pdl;
    e = cudaLaunchKernelEx(&cfg, mlp_kernel, a->x, a->batch, (int)a->in_width, L, a->out, block_rows, plan.ld_a,
                           plan.ld_b, x_vec, plan.chunk, fixed, x_ready);
  }
  if (e != cudaSuccess) return dd::cuda_fail(e, "launching the MLP kernel", msg, len);
  e = cudaGetLastError();
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "launching the MLP kernel", msg, len);
}

}  // extern "C"
