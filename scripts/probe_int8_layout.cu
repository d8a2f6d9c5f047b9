// Probe (not part of the library): random int8 row-wise lookups at the paper shape (12 tables x
// 500,000 rows, D 128, batch 2048, 150 ids a bag, int32 ids) with rows in the row form (codes,
// scale, bias, padding: 144 bytes) against the codes and the scales stored apart (codes 128 bytes,
// fp32 or fp16 scale and bias in an array of their own), with and without L2 eviction hints. One
// warp per bag, 8 lanes per row (16 codes a lane), U rows in flight a lane group; the outputs of
// every layout are compared with the first one's. docs/benchmarks.md has the H100 numbers.
//   nvcc -arch=sm_90 -O3 -std=c++17 -o probe_int8_layout scripts/probe_int8_layout.cu && ./probe_int8_layout
#include <cstdio>
#include <cstdint>
#include <vector>
#include <random>
#include <algorithm>
#include <cstring>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#define CK(x) do { cudaError_t e = (x); if (e) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)

constexpr int T = 12, B = 2048, L = 150, D = 128;
constexpr long N = 500000;

__device__ __forceinline__ uint4 ld16(const void* p, int hint) {
  uint4 v;
  if (hint == 1) { uint64_t pol; asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(pol)); }
  else asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ float2 ld8(const void* p, int hint) {
  float2 v;
  if (hint == 1) { uint64_t pol; asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("ld.global.nc.L2::cache_hint.v2.f32 {%0,%1}, [%2], %3;" : "=f"(v.x), "=f"(v.y) : "l"(p), "l"(pol)); }
  else asm volatile("ld.global.nc.v2.f32 {%0,%1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ float2 ld4h(const void* p, int hint) {
  unsigned u;
  if (hint == 1) { uint64_t pol; asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("ld.global.nc.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(u) : "l"(p), "l"(pol)); }
  else asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(u) : "l"(p));
  __half2 h = *reinterpret_cast<__half2*>(&u);
  return __half22float2(h);
}

// mode 0: interleaved 144 B rows; 1: split fp32 qparams; 2: split half qparams; 3: codes only (bound)
template <int MODE, int U>
__global__ void __launch_bounds__(256) lookup(const uint8_t* codes, const void* qp, const int* ids,
                                              float* out, int hint) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (warp >= T * B) return;
  int t = warp / B, b = warp % B;
  const int* bag = ids + ((long)t * B + b) * L;
  int g = lane >> 3, s = lane & 7;  // 4 row groups of 8 lanes, 16 codes a lane
  float acc[16];
#pragma unroll
  for (int k = 0; k < 16; ++k) acc[k] = 0.f;
  long base = (long)t * N;
  for (int i0 = 0; i0 < L; i0 += 4 * U) {
    uint4 v[U]; float2 sb[U]; bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int i = i0 + u * 4 + g;
      ok[u] = i < L;
      long r = base + (ok[u] ? __ldg(bag + i) : 0);
      if (MODE == 0) {
        const uint8_t* row = codes + r * 144;
        v[u] = ld16(row + s * 16, hint);
        sb[u] = ld8(row + 128, 0);
      } else {
        v[u] = ld16(codes + r * 128 + s * 16, hint);
        if (MODE == 1) sb[u] = ld8((const float2*)qp + r, hint);
        else if (MODE == 2) sb[u] = ld4h((const unsigned*)qp + r, hint);
        else sb[u] = make_float2(1.f, 0.f);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!ok[u]) continue;
      const uint32_t w[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
      for (int k = 0; k < 16; ++k) acc[k] += float((w[k >> 2] >> (8 * (k & 3))) & 255u) * sb[u].x + sb[u].y;
    }
  }
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], 8);
    acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], 16);
  }
  if (g == 0) {
    float4* o = reinterpret_cast<float4*>(out + ((long)b * T + t) * D + s * 16);
#pragma unroll
    for (int k = 0; k < 4; ++k) o[k] = make_float4(acc[4 * k], acc[4 * k + 1], acc[4 * k + 2], acc[4 * k + 3]);
  }
}

cudaStream_t g_stream = 0;  // the launches' stream (one with a persisting-L2 window for the last rows)

template <int MODE, int U>
float run(const uint8_t* codes, const void* qp, const int* ids, float* out, int hint, std::vector<float>& host) {
  int blocks = (T * B * 32 + 255) / 256;
  cudaStream_t st = g_stream;
  cudaEvent_t a, z; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&z));
  for (int i = 0; i < 5; ++i) lookup<MODE, U><<<blocks, 256, 0, st>>>(codes, qp, ids, out, hint);
  std::vector<float> ms;
  for (int i = 0; i < 30; ++i) {
    CK(cudaEventRecord(a, st)); lookup<MODE, U><<<blocks, 256, 0, st>>>(codes, qp, ids, out, hint); CK(cudaEventRecord(z, st));
    CK(cudaEventSynchronize(z)); float m; CK(cudaEventElapsedTime(&m, a, z)); ms.push_back(m);
  }
  CK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  host.resize((size_t)B * T * D);
  CK(cudaMemcpy(host.data(), out, host.size() * 4, cudaMemcpyDeviceToHost));
  return ms[ms.size() / 2];
}

double diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0; for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (double)fabsf(a[i] - b[i]) / (1.0 + fabsf(a[i])));
  return m;
}

#include <algorithm>
int main() {
  std::mt19937_64 rng(7);
  size_t rows = (size_t)T * N;
  std::vector<uint8_t> inter(rows * 144), split(rows * 128);
  std::vector<float2> q32(rows); std::vector<__half2> q16(rows);
  for (size_t r = 0; r < rows; ++r) {
    uint64_t x = rng();
    for (int k = 0; k < 128; ++k) { uint8_t c = (uint8_t)((x >> (k % 56)) * 31 + k * 7 + r); inter[r * 144 + k] = c; split[r * 128 + k] = c; }
    float sc = __half2float(__float2half(0.001f + (x & 1023) * 1e-5f)), bi = __half2float(__float2half(-0.1f + ((x >> 10) & 1023) * 1e-4f));
    memcpy(&inter[r * 144 + 128], &sc, 4); memcpy(&inter[r * 144 + 132], &bi, 4);
    q32[r] = make_float2(sc, bi); q16[r] = __floats2half2_rn(sc, bi);
  }
  std::vector<int> ids((size_t)T * B * L);
  for (auto& i : ids) i = (int)(rng() % N);
  uint8_t *dI, *dS; float2* dQ; __half2* dH; int* dIds; float* dOut;
  CK(cudaMalloc(&dI, inter.size())); CK(cudaMalloc(&dS, split.size())); CK(cudaMalloc(&dQ, rows * 8));
  CK(cudaMalloc(&dH, rows * 4)); CK(cudaMalloc(&dIds, ids.size() * 4)); CK(cudaMalloc(&dOut, (size_t)B * T * D * 4));
  CK(cudaMemcpy(dI, inter.data(), inter.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dS, split.data(), split.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dQ, q32.data(), rows * 8, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dH, q16.data(), rows * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dIds, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  std::vector<float> ref, h;
  double bytes_i = (double)T * B * L * 144, bytes_s = (double)T * B * L * 136;
  float m;
#define ROW(name, MODE, U, qp, hint, bytes) m = run<MODE, U>(MODE == 0 ? dI : dS, qp, dIds, dOut, hint, h); \
  if (ref.empty()) ref = h; \
  printf("%-34s U=%d  %.4f ms  %.2f TB/s  maxdiff %.2e\n", name, U, m, bytes / m / 1e9, MODE == 3 ? 0.0 : diff(ref, h));
  ROW("interleaved 144B", 0, 2, nullptr, 0, bytes_i)
  ROW("interleaved 144B", 0, 4, nullptr, 0, bytes_i)
  ROW("interleaved 144B", 0, 8, nullptr, 0, bytes_i)
  ROW("split fp32 qp", 1, 2, dQ, 0, bytes_s)
  ROW("split fp32 qp", 1, 4, dQ, 0, bytes_s)
  ROW("split fp32 qp", 1, 8, dQ, 0, bytes_s)
  ROW("split fp32 qp, evict hints", 1, 4, dQ, 1, bytes_s)
  ROW("split fp32 qp, evict hints", 1, 8, dQ, 1, bytes_s)
  ROW("split fp16 qp", 2, 4, dH, 0, bytes_s)
  ROW("split fp16 qp, evict hints", 2, 4, dH, 1, bytes_s)
  ROW("split fp16 qp, evict hints", 2, 8, dH, 1, bytes_s)
  ROW("codes only 128B (bound)", 3, 4, nullptr, 0, bytes_s)
  ROW("codes only 128B (bound)", 3, 8, nullptr, 0, bytes_s)
  ROW("interleaved 144B", 0, 4, nullptr, 0, bytes_i)
  // The fp32 scale/bias array (rows x 8 bytes) in a persisting-L2 window, the codes streaming.
  cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
  CK(cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, prop.persistingL2CacheMaxSize));
  CK(cudaStreamCreate(&g_stream));
  cudaStreamAttrValue w = {};
  w.accessPolicyWindow.base_ptr = dQ;
  w.accessPolicyWindow.num_bytes = std::min((size_t)prop.accessPolicyMaxWindowSize, rows * 8);
  w.accessPolicyWindow.hitRatio = std::min(1.0f, (float)prop.persistingL2CacheMaxSize / (float)w.accessPolicyWindow.num_bytes);
  w.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
  w.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
  CK(cudaStreamSetAttribute(g_stream, cudaStreamAttributeAccessPolicyWindow, &w));
  printf("persisting L2 %d B of %d B L2, window %zu B, hit ratio %.2f\n", prop.persistingL2CacheMaxSize, prop.l2CacheSize,
         (size_t)w.accessPolicyWindow.num_bytes, w.accessPolicyWindow.hitRatio);
  ROW("split fp32 qp, qp window", 1, 4, dQ, 0, bytes_s)
  ROW("split fp32 qp, qp window", 1, 8, dQ, 0, bytes_s)
  ROW("split fp16 qp, (window on fp32)", 2, 4, dH, 0, bytes_s)
  w.accessPolicyWindow.base_ptr = dH;
  w.accessPolicyWindow.num_bytes = std::min((size_t)prop.accessPolicyMaxWindowSize, rows * 4);
  w.accessPolicyWindow.hitRatio = std::min(1.0f, (float)prop.persistingL2CacheMaxSize / (float)w.accessPolicyWindow.num_bytes);
  CK(cudaStreamSetAttribute(g_stream, cudaStreamAttributeAccessPolicyWindow, &w));
  ROW("split fp16 qp, qp window", 2, 4, dH, 0, bytes_s)
  return 0;
}
