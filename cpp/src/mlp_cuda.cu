// A chain of fully connected layers in one kernel (dlrm_deploy::Mlp) on the GPU. DLRM's MLPs are
// narrow (the paper model's: 256-128-128 and 206-128-64-1), so at serving batches every GEMM is a
// few microseconds and ONNX Runtime spends as long again on a bias-broadcast kernel, an activation
// kernel and the launch gaps around each layer. Here a block takes a few rows of the batch through
// every layer with the activations kept in shared memory: one launch for the whole chain.
//
// Per layer, the block copies the layer's weights into shared memory with asynchronous copies (all
// in flight at once, each block starting at its own row; in column chunks where a layer is too
// big), then thread (group g, column c) computes output c (and c + P/2: two columns where there are
// enough rows) of rows g, g + G, g + 2G, ... (fp32 FMAs, up to 8 sums) from the input rows in
// shared memory (every thread of a warp reads the same address).
// Measured on the H100 (paper MLPs 256-128-128 / 206-128-64-1, one kernel each): batch 2048 21.2 /
// 19.6 us, where ONNX Runtime's kernels and gaps take about 21 / 30 us; batch 256 12.6 / 12.7 us.
// Every block stages every weight, so the weights' trip from L2 bounds the time at small batches.
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>

#include "cuda/status.cuh"
#include "dlrm_deploy/mlp.h"
#include "cuda/device.cuh"
#include "internal.h"
#include "mlp_internal.h"

using dd::fail;

namespace {
#ifndef DD_MLP_THREADS
#define DD_MLP_THREADS 256
#endif
constexpr int kThreads = DD_MLP_THREADS;  // 512 measured 5-25% slower on the H100 (paper MLPs, batch 256-4096)
constexpr int kMaxRows = 16;  // rows of the batch per block
constexpr int kMaxAcc = 8;    // rows per thread: block rows <= kMaxAcc x the fewest row groups of a layer
constexpr int kMaxDevices = 64;

struct Layers {
  const float* w[DD_MLP_MAX_LAYERS];
  const float* b[DD_MLP_MAX_LAYERS];
  int n[DD_MLP_MAX_LAYERS];
  int k[DD_MLP_MAX_LAYERS];
  int act[DD_MLP_MAX_LAYERS];
  int vec[DD_MLP_MAX_LAYERS];  // floats per asynchronous copy when staging weights: 4, 2 or 1
  int ldw[DD_MLP_MAX_LAYERS];  // staged weight row stride: >= K, a multiple of 4, 4 mod 32 (no bank conflicts)
  int count;
};

// Stage weight rows [c0, c0 + pe) (all K columns) into shared memory at row stride ldw, by
// asynchronous copies (cp.async: no registers, every copy of the block in flight at once) of V
// floats each. V = 4 needs K % 4 == 0 and 16-byte aligned weights, V = 2 K % 2 == 0 and 8 bytes.
template <int V>
__device__ __forceinline__ void stage_weights(float* ws, int ldw, const float* __restrict__ W, int K, int c0, int pe) {
  const int per_row = K / V, warps = kThreads / 32, lane = threadIdx.x % 32;
  // Every block reads the same weights: each starts at its own row, so that the blocks' requests
  // spread over L2's slices instead of queueing at the same lines together.
  const int rot = (int)((int64_t)blockIdx.x * pe / gridDim.x);
  for (int j = threadIdx.x / 32; j < pe; j += warps) {  // a warp per row: consecutive lanes, consecutive bytes
    const int p = j + rot < pe ? j + rot : j + rot - pe;
    const float* src = W + (size_t)(c0 + p) * K;
    float* dst = ws + p * ldw;
    for (int q = lane; q < per_row; q += 32) __pipeline_memcpy_async(dst + q * V, src + q * V, V * sizeof(float));
  }
  __pipeline_commit();
}

// Output columns c and (CB == 2) c + cstep of R rows (g, g + G, ...; repeats of the last row past
// `per`, never stored): R x CB independent sums over K from the staged weight rows and the input
// rows in shared memory (each input load serves CB columns, each weight load R rows).
template <int R, int CB>
__device__ __forceinline__ void columns(const float* in, int ld_in, int rows, int K, const float* wr, int wstep, int g,
                                        int G, int per, const float* __restrict__ bias, int act, float* out,
                                        int64_t ld_out, int c, int cstep, int c_end) {
  const float* x[R];
#pragma unroll
  for (int i = 0; i < R; ++i) x[i] = in + min(g + min(i, per - 1) * G, rows - 1) * ld_in;
  float acc[R][CB];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < CB; ++j) acc[i][j] = 0.f;
  const int k4 = K & ~3;
#pragma unroll 2
  for (int k = 0; k < k4; k += 4) {
    float4 w4[CB];
#pragma unroll
    for (int j = 0; j < CB; ++j) w4[j] = *reinterpret_cast<const float4*>(wr + j * wstep + k);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const float4 v = *reinterpret_cast<const float4*>(x[i] + k);
#pragma unroll
      for (int j = 0; j < CB; ++j)
        acc[i][j] = fmaf(v.w, w4[j].w, fmaf(v.z, w4[j].z, fmaf(v.y, w4[j].y, fmaf(v.x, w4[j].x, acc[i][j]))));
    }
  }
  for (int k = k4; k < K; ++k) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < CB; ++j) acc[i][j] = fmaf(x[i][k], wr[j * wstep + k], acc[i][j]);
  }
#pragma unroll
  for (int j = 0; j < CB; ++j) {
    const int cj = c + j * cstep;
    if (cj >= c_end) break;
    const float b = __ldg(bias + cj);
#pragma unroll
    for (int i = 0; i < R; ++i)
      if (i < per && g + i * G < rows) out[(g + i * G) * ld_out + cj] = dd::mlp_activate(acc[i][j] + b, act);
  }
}

// One layer for `rows` rows: in (shared memory, row stride ld_in) -> out (row stride ld_out).
// Columns go in chunks of up to `chunk` weight rows staged in ws; thread (g, lc) computes column
// c0 + lc of rows g, g + G, ... (P = min(chunk, N) columns per chunk, G = kThreads / P groups).
template <int V>
__device__ __forceinline__ void dense(const float* in, int ld_in, int rows, int K, const float* __restrict__ W,
                                      const float* __restrict__ bias, int N, int act, float* out, int64_t ld_out,
                                      float* ws, int ldw, int chunk) {
  const int P = N < chunk ? N : chunk;
  // Two columns per thread where the chunk has enough of them: half the input loads per sum.
  // (Where each thread gets 2 to 4 rows that way: at most 4 x 2 sums; with a single row the second
  // column only idles threads. Paper MLPs on the H100, batch 2048: 21.2 / 19.6 us against 25.1 /
  // 21.4 with one column.)
  const int rows_cb2 = P % 2 == 0 && P >= 64 ? (rows + 2 * kThreads / P - 1) / (2 * kThreads / P) : 0;
  const int CB = rows_cb2 >= 2 && rows_cb2 <= 4 ? 2 : 1;
  const int Pt = P / CB;  // threads per row group
  const int G = kThreads / Pt;
  const int g = threadIdx.x / Pt, lc = threadIdx.x % Pt;
  const int per = (rows + G - 1) / G;  // rows of each group (uniform over the block)
  for (int c0 = 0; c0 < N; c0 += P) {
    const int pe = min(P, N - c0);
    __syncthreads();  // ws and the layer's input are free / written
    stage_weights<V>(ws, ldw, W, K, c0, pe);
    __pipeline_wait_prior(0);
    __syncthreads();
    if (g >= G || lc >= pe) continue;
    // rows per thread rounded up to 1, 2, 4 or 8 (repeats of the last row pad, never stored)
    const float* wr = ws + lc * ldw;
    const int c = c0 + lc, end = c0 + pe;
#define DD_MLP_COLUMNS(R, CB_) \
  columns<R, CB_>(in, ld_in, rows, K, wr, Pt * ldw, g, G, per, bias, act, out, ld_out, c, Pt, end)
    if (CB == 2) {
      if (per <= 2) DD_MLP_COLUMNS(2, 2);
      else DD_MLP_COLUMNS(4, 2);
    } else {
      if (per <= 1) DD_MLP_COLUMNS(1, 1);
      else if (per <= 2) DD_MLP_COLUMNS(2, 1);
      else if (per <= 4) DD_MLP_COLUMNS(4, 1);
      else DD_MLP_COLUMNS(8, 1);
    }
#undef DD_MLP_COLUMNS
  }
}

__global__ void __launch_bounds__(kThreads) mlp_kernel(const float* __restrict__ x, int64_t batch, int in_width,
                                                       Layers L, float* __restrict__ y, int block_rows, int ld,
                                                       bool x_vec, int chunk) {
  extern __shared__ float4 smem4[];
  float* in = reinterpret_cast<float*>(smem4);
  float* out = in + block_rows * ld;
  float* ws = out + block_rows * ld;
  const int64_t r0 = (int64_t)blockIdx.x * block_rows;
  const int rows = (int)min((int64_t)block_rows, batch - r0);
  const float* xs = x + r0 * in_width;  // the block's rows, contiguous
  if (x_vec) {
    const int q = in_width / 4;
    for (int e = threadIdx.x; e < rows * q; e += kThreads)
      *reinterpret_cast<float4*>(in + (e / q) * ld + 4 * (e % q)) = __ldg(reinterpret_cast<const float4*>(xs) + e);
  } else {
    for (int e = threadIdx.x; e < rows * in_width; e += kThreads) in[(e / in_width) * ld + e % in_width] = __ldg(xs + e);
  }
  // (dense's first barrier orders these stores before any read)
  for (int l = 0; l < L.count; ++l) {
    const bool last = l + 1 == L.count;
    float* dst = last ? y + r0 * L.n[l] : out;
    const int64_t ld_out = last ? L.n[l] : ld;
    if (L.vec[l] == 4)
      dense<4>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out, ws, L.ldw[l], chunk);
    else if (L.vec[l] == 2)
      dense<2>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out, ws, L.ldw[l], chunk);
    else
      dense<1>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out, ws, L.ldw[l], chunk);
    float* t = in;
    in = out;
    out = t;
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
}  // namespace

extern "C" {

int dd_mlp_cuda(const dd_mlp_args* a, void* stream, char* msg, size_t len) {
  if (int rc = dd_mlp_check(a, msg, len)) return rc;
  if (a->batch == 0) return DD_OK;
  if (a->batch > ((int64_t)1 << 40)) return fail(DD_ERR_INPUT, msg, len, "batch too large");
  Layers L{};
  L.count = a->layers;
  int64_t widest = a->in_width;
  for (int i = 0; i < a->layers; ++i) {
    L.w[i] = a->weights[i];
    L.b[i] = a->biases[i];
    L.n[i] = (int)a->w_rows[i];
    L.k[i] = (int)a->w_cols[i];
    L.act[i] = a->activations[i];
    L.vec[i] = L.k[i] % 4 == 0 && aligned(L.w[i], 16) ? 4 : L.k[i] % 2 == 0 && aligned(L.w[i], 8) ? 2 : 1;
    if (i + 1 < a->layers && a->w_rows[i] > widest) widest = a->w_rows[i];
  }
  int ld = (int)((widest + 3) / 4 * 4);
  if (ld % 32 == 0) ld += 4;  // rows of a group fall in different banks
  int max_ldw = 0;
  for (int i = 0; i < a->layers; ++i) {
    L.ldw[i] = (L.k[i] + 3) / 4 * 4;
    L.ldw[i] += (36 - L.ldw[i] % 32) % 32;
    max_ldw = max(max_ldw, L.ldw[i]);
  }
  dd::DeviceInfo dev;
  if (int rc = dd::device_info(&dev, msg, len)) return rc;
  if (dev.ordinal < 0 || dev.ordinal >= kMaxDevices) return fail(DD_ERR_UNSUPPORTED, msg, len, "device %d", dev.ordinal);
  const int sms = dev.sms, smem_limit = dev.smem_optin;
  // Weight rows staged per chunk: a layer's whole weight where it fits beside the activations
  // (DLRM's layers do), else as many rows as fit (at least 8 of the widest).
  int groups = kThreads;  // the fewest row groups of any layer bounds the rows a block can take
  for (int i = 0; i < a->layers; ++i) groups = min(groups, kThreads / min(L.n[i], kThreads));
  int block_rows = min(rows_per_block(a->batch, sms), kMaxAcc * groups);
  int widest_n = 1;
  for (int i = 0; i < a->layers; ++i) widest_n = max(widest_n, L.n[i]);
  auto bytes = [&](int rows_, int chunk_) { return sizeof(float) * ((size_t)2 * rows_ * ld + (size_t)chunk_ * max_ldw); };
  int chunk = min(widest_n, kThreads);
  while (chunk > 8 && bytes(block_rows, chunk) > (size_t)smem_limit) chunk = (chunk + 1) / 2;
  while (block_rows > 1 && bytes(block_rows, chunk) > (size_t)smem_limit) --block_rows;
  if (chunk < kThreads) {  // fewer columns per pass: more row groups, so more rows per block fit
    groups = kThreads;
    for (int i = 0; i < a->layers; ++i) groups = min(groups, kThreads / min(L.n[i], chunk));
    block_rows = min(block_rows, kMaxAcc * groups);
  }
  const size_t smem = bytes(block_rows, chunk);
  if (smem > (size_t)smem_limit)
    return fail(DD_ERR_UNSUPPORTED, msg, len, "layers %lld wide do not fit in shared memory (%d bytes)",
                (long long)widest, smem_limit);
  cudaError_t e = cudaSuccess;
  if (smem > 48 * 1024 && g_raised[dev.ordinal].load() == 0) {
    e = cudaFuncSetAttribute(mlp_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit);
    if (e != cudaSuccess) return dd::cuda_fail(e, "raising the MLP kernel's shared memory", msg, len);
    g_raised[dev.ordinal].store(1);
  }
  const int64_t blocks = (a->batch + block_rows - 1) / block_rows;
  if (blocks > 0x7fffffff) return fail(DD_ERR_INPUT, msg, len, "batch too large");
  const bool x_vec = a->in_width % 4 == 0 && aligned(a->x, 16);
  mlp_kernel<<<(unsigned)blocks, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      a->x, a->batch, (int)a->in_width, L, a->out, block_rows, ld, x_vec, chunk);
  e = cudaGetLastError();
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "launching the MLP kernel", msg, len);
}

}  // extern "C"
