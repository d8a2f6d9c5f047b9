// A chain of fully connected layers in one kernel (dlrm_deploy::Mlp) on the GPU. DLRM's MLPs are
// narrow (the paper model's: 256-128-128 and 206-128-64-1), so at serving batches every GEMM is a
// few microseconds and ONNX Runtime spends as long again on a bias-broadcast kernel, an activation
// kernel and the launch gaps around each layer. Here a block takes a few rows of the batch through
// every layer with the activations kept in shared memory: one launch for the whole chain.
//
// Per layer, thread (group g, column c) computes output c of rows g, g + G, g + 2G, ... (fp32 FMAs;
// up to 16 accumulators), reading the weight row c in 16-, 8- or 4-byte loads (L1/L2-resident: the
// weights are small and every block reads them) and the input rows from shared memory, where every
// thread of a warp reads the same address.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>

#include "cuda/status.cuh"
#include "dlrm_deploy/mlp.h"
#include "internal.h"

using dd::fail;

namespace {
constexpr int kThreads = 256;
constexpr int kMaxRows = 16;  // rows of the batch per block (and accumulators per thread)
constexpr int kMaxDevices = 64;

struct Layers {
  const float* w[DD_MLP_MAX_LAYERS];
  const float* b[DD_MLP_MAX_LAYERS];
  int n[DD_MLP_MAX_LAYERS];
  int k[DD_MLP_MAX_LAYERS];
  int act[DD_MLP_MAX_LAYERS];
  int vec[DD_MLP_MAX_LAYERS];  // floats per weight load: 4, 2 or 1
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

template <int V>
struct Vec;
template <>
struct Vec<4> {
  __device__ static float4 load(const float* p) { return *reinterpret_cast<const float4*>(p); }
  __device__ static float4 ldg(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
  __device__ static float fma(float4 x, float4 w, float acc) {
    return fmaf(x.w, w.w, fmaf(x.z, w.z, fmaf(x.y, w.y, fmaf(x.x, w.x, acc))));
  }
};
template <>
struct Vec<2> {
  __device__ static float2 load(const float* p) { return *reinterpret_cast<const float2*>(p); }
  __device__ static float2 ldg(const float* p) { return __ldg(reinterpret_cast<const float2*>(p)); }
  __device__ static float fma(float2 x, float2 w, float acc) { return fmaf(x.y, w.y, fmaf(x.x, w.x, acc)); }
};
template <>
struct Vec<1> {
  __device__ static float load(const float* p) { return *p; }
  __device__ static float ldg(const float* p) { return __ldg(p); }
  __device__ static float fma(float x, float w, float acc) { return fmaf(x, w, acc); }
};

// One layer for `rows` rows: in (shared memory, row stride ld_in) -> out (row stride ld_out).
template <int V>
__device__ __forceinline__ void dense(const float* in, int ld_in, int rows, int K, const float* __restrict__ W,
                                      const float* __restrict__ bias, int N, int act, float* out, int64_t ld_out) {
  const int P = N < kThreads ? N : kThreads;  // columns per pass
  const int G = kThreads / P;                 // row groups
  const int g = threadIdx.x / P;
  if (g >= G) return;
  const int per = (rows + G - 1) / G;  // rows of each group (uniform over the block)
  for (int c = threadIdx.x % P; c < N; c += P) {
    float acc[kMaxRows];
#pragma unroll
    for (int i = 0; i < kMaxRows; ++i) acc[i] = 0.f;
    const float* w = W + (size_t)c * K;
    for (int k = 0; k < K; k += V) {
      const auto wv = Vec<V>::ldg(w + k);
#pragma unroll
      for (int i = 0; i < kMaxRows; ++i)
        if (i < per) {
          const int r = min(g + i * G, rows - 1);  // past the rows: a repeat, never stored
          acc[i] = Vec<V>::fma(Vec<V>::load(in + r * ld_in + k), wv, acc[i]);
        }
    }
    const float b = __ldg(bias + c);
#pragma unroll
    for (int i = 0; i < kMaxRows; ++i)
      if (i < per && g + i * G < rows) out[(g + i * G) * ld_out + c] = activate(acc[i] + b, act);
  }
}

__global__ void __launch_bounds__(kThreads) mlp_kernel(const float* __restrict__ x, int64_t batch, int in_width,
                                                       Layers L, float* __restrict__ y, int block_rows, int ld,
                                                       bool x_vec) {
  extern __shared__ float4 smem4[];
  float* in = reinterpret_cast<float*>(smem4);
  float* out = in + block_rows * ld;
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
  __syncthreads();
  for (int l = 0; l < L.count; ++l) {
    const bool last = l + 1 == L.count;
    float* dst = last ? y + r0 * L.n[l] : out;
    const int64_t ld_out = last ? L.n[l] : ld;
    if (L.vec[l] == 4)
      dense<4>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out);
    else if (L.vec[l] == 2)
      dense<2>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out);
    else
      dense<1>(in, ld, rows, L.k[l], L.w[l], L.b[l], L.n[l], L.act[l], dst, ld_out);
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
  int block_rows = rows_per_block(a->batch, sms);
  while (block_rows > 1 && 2 * sizeof(float) * (size_t)block_rows * ld > (size_t)smem_limit) --block_rows;
  const size_t smem = 2 * sizeof(float) * (size_t)block_rows * ld;
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
