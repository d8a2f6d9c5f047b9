// A chain of fully connected layers in one kernel (dlrm_deploy::Mlp) on the GPU. DLRM's MLPs are
// narrow (the paper model's: 256-128-128 and 206-128-64-1), so at serving batches every GEMM is a
// few microseconds and ONNX Runtime spends as long again on a bias-broadcast kernel, an activation
// kernel and the launch gaps around each layer. Here a block takes a few rows of the batch through
// every layer with the activations kept in shared memory: one launch for the whole chain.
//
// Per layer, thread (group g, column c) computes output c of rows g, g + G, g + 2G, ... (fp32 FMAs,
// up to 8 accumulators) from the input rows in shared memory (every thread of a warp reads the same
// address) and weight tiles of KT columns staged in shared memory by the whole block with coalesced
// loads, the next tile's loads in flight while the current one is summed.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>

#include "cuda/status.cuh"
#include "dlrm_deploy/mlp.h"
#include "internal.h"

using dd::fail;

namespace {
constexpr int kThreads = 256;
constexpr int kMaxRows = 16;  // rows of the batch per block
constexpr int kMaxAcc = 8;    // rows per thread: block rows <= kMaxAcc x the fewest row groups of a layer
constexpr int kMaxDevices = 64;

struct Layers {
  const float* w[DD_MLP_MAX_LAYERS];
  const float* b[DD_MLP_MAX_LAYERS];
  int n[DD_MLP_MAX_LAYERS];
  int k[DD_MLP_MAX_LAYERS];
  int act[DD_MLP_MAX_LAYERS];
  int vec[DD_MLP_MAX_LAYERS];  // floats per weight load when staging: 4, 2 or 1
  int count;
};

__device__ __forceinline__ float activate(float v, int act) {
  if (act == DD_MLP_RELU) return v > 0.f ? v : 0.f;
  if (act == DD_MLP_SIGMOID) {
    if (v >= 0.f) return 1.f / (1.f + expf(-v));
    const float z = expf(v);
    return z / (1.f + z);
  }
  return v;
}

// Weight tiles: KT columns of up to kThreads weight rows, staged in shared memory (row stride
// kWsLd: a quarter-warp's 16-byte reads of 8 different rows fall in 8 different bank groups).
constexpr int KT = 16;
constexpr int kWsLd = KT + 4;

// A weight tile [c0, c0 + pe) x [k0, k0 + KT) in registers: each thread's share, loaded V floats at
// a time (consecutive threads, consecutive addresses), then stored to shared memory. V = 4 needs
// K % 4 == 0 and 16-byte aligned weights, V = 2 K % 2 == 0 and 8 bytes.
template <int V>
struct Tile {
  static constexpr int kSlots = KT / V;  // per thread: (kThreads * KT / V) / kThreads
  static constexpr int kVecs = KT / V;   // vectors per staged row
  float v[KT];
  __device__ void load(const float* __restrict__ W, int K, int c0, int pe, int k0) {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int e = threadIdx.x + s * kThreads, p = e / kVecs, q = (e % kVecs) * V;
      if (p < pe && k0 + q < K) {
        const float* src = W + (size_t)(c0 + p) * K + k0 + q;
        if constexpr (V == 4) {
          const float4 x = __ldg(reinterpret_cast<const float4*>(src));
          v[4 * s] = x.x, v[4 * s + 1] = x.y, v[4 * s + 2] = x.z, v[4 * s + 3] = x.w;
        } else if constexpr (V == 2) {
          const float2 x = __ldg(reinterpret_cast<const float2*>(src));
          v[2 * s] = x.x, v[2 * s + 1] = x.y;
        } else {
          v[s] = __ldg(src);
        }
      }
    }
  }
  __device__ void store(float* ws, int pe) const {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int e = threadIdx.x + s * kThreads, p = e / kVecs, q = (e % kVecs) * V;
      if (p < pe) {
        if constexpr (V == 4)
          *reinterpret_cast<float4*>(ws + p * kWsLd + q) = make_float4(v[4 * s], v[4 * s + 1], v[4 * s + 2], v[4 * s + 3]);
        else if constexpr (V == 2)
          *reinterpret_cast<float2*>(ws + p * kWsLd + q) = make_float2(v[2 * s], v[2 * s + 1]);
        else
          ws[p * kWsLd + q] = v[s];
      }
    }
  }
};

// One layer for `rows` rows: in (shared memory, row stride ld_in) -> out (row stride ld_out).
// Columns go in chunks of P = min(N, kThreads); thread (g, lc) of a chunk computes column c0 + lc
// of rows g, g + G, ... (G = kThreads / P groups), from weight tiles staged in ws while the next
// tile's loads are in flight. Every thread takes part in the staging (the barriers need all).
template <int V>
__device__ __forceinline__ void dense(const float* in, int ld_in, int rows, int K, const float* __restrict__ W,
                                      const float* __restrict__ bias, int N, int act, float* out, int64_t ld_out,
                                      float* ws) {
  const int P = N < kThreads ? N : kThreads;
  const int G = kThreads / P;
  const int g = threadIdx.x / P, lc = threadIdx.x % P;
  const int per = (rows + G - 1) / G;  // rows of each group (uniform over the block)
  const int tiles = (K + KT - 1) / KT;
  for (int c0 = 0; c0 < N; c0 += P) {
    const int pe = min(P, N - c0);
    const bool active = g < G && lc < pe;
    float acc[kMaxAcc];
#pragma unroll
    for (int i = 0; i < kMaxAcc; ++i) acc[i] = 0.f;
    Tile<V == 1 ? 2 : V> tile;  // (V == 1: unused; its loads go straight to shared memory)
    if constexpr (V > 1) tile.load(W, K, c0, pe, 0);
    for (int t = 0; t < tiles; ++t) {
      __syncthreads();  // the previous tile is no longer read
      if constexpr (V > 1) {
        tile.store(ws, pe);
        __syncthreads();
        if (t + 1 < tiles) tile.load(W, K, c0, pe, (t + 1) * KT);  // in flight during this tile's sums
      } else {  // odd K: no register double buffer (it would cost KT live registers per thread)
        for (int e = threadIdx.x; e < pe * KT; e += kThreads)
          if (t * KT + e % KT < K) ws[(e / KT) * kWsLd + e % KT] = __ldg(W + (size_t)(c0 + e / KT) * K + t * KT + e % KT);
        __syncthreads();
      }
      if (active) {
        const int k0 = t * KT, kt = min(KT, K - k0), kt4 = kt & ~3;
        const float* wr = ws + lc * kWsLd;
        for (int kk = 0; kk < kt4; kk += 4) {
          const float4 w4 = *reinterpret_cast<const float4*>(wr + kk);
#pragma unroll
          for (int i = 0; i < kMaxAcc; ++i)
            if (i < per) {
              const int r = min(g + i * G, rows - 1);  // past the rows: a repeat, never stored
              const float4 x = *reinterpret_cast<const float4*>(in + r * ld_in + k0 + kk);
              acc[i] = fmaf(x.w, w4.w, fmaf(x.z, w4.z, fmaf(x.y, w4.y, fmaf(x.x, w4.x, acc[i]))));
            }
        }
        for (int kk = kt4; kk < kt; ++kk) {
          const float w1 = wr[kk];
#pragma unroll
          for (int i = 0; i < kMaxAcc; ++i)
            if (i < per) acc[i] = fmaf(in[min(g + i * G, rows - 1) * ld_in + k0 + kk], w1, acc[i]);
        }
      }
    }
    if (active) {
      const float b = __ldg(bias + c0 + lc);
#pragma unroll
      for (int i = 0; i < kMaxAcc; ++i)
        if (i < per && g + i * G < rows) out[(g + i * G) * ld_out + c0 + lc] = activate(acc[i] + b, act);
    }
  }
}

__global__ void __launch_bounds__(kThreads) mlp_kernel(const float* __restrict__ x, int64_t batch, int in_width,
                                                       Layers L, float* __restrict__ y, int block_rows, int ld,
                                                       bool x_vec) {
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
      dense<4>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out, ws);
    else if (L.vec[l] == 2)
      dense<2>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out, ws);
    else
      dense<1>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out, ws);
    __syncthreads();
    float* t = in;
    in = out;
    out = t;
  }
}

// The device's SM count and opt-in shared memory per block, read once per device.
struct DeviceInfo {
  std::atomic<int> sms{0}, smem{0}, raised{0};
};
DeviceInfo g_devices[kMaxDevices];

int device_info(int* device, int* sms, int* smem, char* msg, size_t len) {
  cudaError_t e = cudaGetDevice(device);
  if (e != cudaSuccess) return dd::cuda_fail(e, "querying the device", msg, len);
  if (*device < 0 || *device >= kMaxDevices) return fail(DD_ERR_UNSUPPORTED, msg, len, "device %d", *device);
  DeviceInfo& d = g_devices[*device];
  if (d.sms.load() == 0) {
    int s = 0, m = 0;
    e = cudaDeviceGetAttribute(&s, cudaDevAttrMultiProcessorCount, *device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&m, cudaDevAttrMaxSharedMemoryPerBlockOptin, *device);
    if (e != cudaSuccess) return dd::cuda_fail(e, "querying the device", msg, len);
    d.smem.store(m);
    d.sms.store(s);
  }
  *sms = d.sms.load();
  *smem = d.smem.load();
  return DD_OK;
}

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
  int device = 0, sms = 0, smem_limit = 0;
  if (int rc = device_info(&device, &sms, &smem_limit, msg, len)) return rc;
  int groups = kThreads;  // the fewest row groups of any layer bounds the rows a block can take
  for (int i = 0; i < a->layers; ++i) groups = min(groups, kThreads / (L.n[i] < kThreads ? L.n[i] : kThreads));
  int block_rows = min(rows_per_block(a->batch, sms), kMaxAcc * groups);
  const size_t ws_bytes = sizeof(float) * kThreads * kWsLd;
  while (block_rows > 1 && 2 * sizeof(float) * (size_t)block_rows * ld + ws_bytes > (size_t)smem_limit) --block_rows;
  const size_t smem = 2 * sizeof(float) * (size_t)block_rows * ld + ws_bytes;
  if (smem > (size_t)smem_limit)
    return fail(DD_ERR_UNSUPPORTED, msg, len, "layers %lld wide do not fit in shared memory (%d bytes)",
                (long long)widest, smem_limit);
  cudaError_t e = cudaSuccess;
  if (smem > 48 * 1024 && g_devices[device].raised.load() == 0) {
    e = cudaFuncSetAttribute(mlp_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit);
    if (e != cudaSuccess) return dd::cuda_fail(e, "raising the MLP kernel's shared memory", msg, len);
    g_devices[device].raised.store(1);
  }
  const int64_t blocks = (a->batch + block_rows - 1) / block_rows;
  if (blocks > 0x7fffffff) return fail(DD_ERR_INPUT, msg, len, "batch too large");
  const bool x_vec = a->in_width % 4 == 0 && aligned(a->x, 16);
  mlp_kernel<<<(unsigned)blocks, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      a->x, a->batch, (int)a->in_width, L, a->out, block_rows, ld, x_vec);
  e = cudaGetLastError();
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "launching the MLP kernel", msg, len);
}

}  // extern "C"
