// DLRM's dot interaction fused (dlrm_deploy::DotInteraction) on the GPU. Replaces ORT's Concat,
// batched MatMul (the Transpose folded in), Gather and Concat (four kernels, 37 us at batch 2048 x
// 13 x 128 fp32 on an H100). Two kernels:
// - a warp per sample where dim is 32, 64 or 128 and there are at most 16 vectors (DLRM's usual
//   shapes): 5.6 us at the paper's shape on the H100;
// - otherwise a block per sample: the sample's vectors staged in shared memory, one thread per
//   kept dot (10.9 us at the paper's shape).
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cuda/pdl.cuh"
#include "cuda/status.cuh"
#include "dlrm_deploy/interaction.h"
#include "internal.h"

using dd::fail;

struct dd_interaction_plan {
  int2* pairs = nullptr;  // (i, j) per output dot, on the device
  int* tri = nullptr;     // per output dot, max(i,j) * (max(i,j) + 1) / 2 + min(i,j), on the device
  int64_t num_pairs = 0, n = 0;
  int smem_limit = 0;         // opt-in shared memory per block of the plan's device
  int major = 0;              // its compute capability (programmatic dependent launch from 9)
  std::vector<int64_t> flat;  // as given (checked against the call's)
};

namespace {
constexpr int kThreads = 128;

struct KernelParts {
  const float* data[DD_INTERACTION_MAX_PARTS];
  int64_t width[DD_INTERACTION_MAX_PARTS];
  int64_t offset[DD_INTERACTION_MAX_PARTS];  // floats before part k in a sample's staged vectors
  int count;
};

// Stages one part's row (n floats) into shared memory at vector stride `stride` (dim + 1, or dim + 4
// for float4 reads: the dot loop's rows then start in different banks), four loads of V in flight
// per thread before the stores. first: the part's first float within the sample. V = float4 needs
// dim, n and first multiples of 4 and rows on 16 bytes: a float4 then never straddles two vectors,
// so each is one load, one 16-byte store and one division (dividing every float by dim took more
// instructions than the dots: 10.9 -> 9.5 us at the paper's shape on the H100).
template <typename V>
__device__ __forceinline__ void stage(float* staged, const float* __restrict__ src, int n, int first, int dim,
                                      int stride) {
  constexpr int k = sizeof(V) / sizeof(float);
  const int nv = n / k, dimv = dim / k, firstv = first / k;
  const V* sv = reinterpret_cast<const V*>(src);
  for (int base = threadIdx.x; base < nv; base += 4 * kThreads) {
    V v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (base + u * kThreads < nv) v[u] = __ldg(sv + base + u * kThreads);
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (base + u * kThreads < nv) {
        const int g = firstv + base + u * kThreads;
        *reinterpret_cast<V*>(staged + (g / dimv) * stride + k * (g % dimv)) = v[u];
      }
  }
}

// One block per sample: its vectors staged, then one thread per kept dot product (four
// independent accumulators over the dim), the prefix part copied in front.
__global__ void __launch_bounds__(kThreads) interaction_kernel(KernelParts parts, int dim, const int2* pairs,
                                                               int num_pairs, int prefix, float* out, int out_width,
                                                               bool vec) {
  extern __shared__ float4 staged4[];  // 16-byte aligned for the float4 reads
  float* staged = reinterpret_cast<float*>(staged4);
  const int64_t b = blockIdx.x;
  const int stride = dim % 4 == 0 ? dim + 4 : dim + 1;  // as dd_interaction_cuda's smem
  dd::pdl_trigger();
  dd::pdl_wait();  // the vectors come from the kernels before this one
  for (int k = 0; k < parts.count; ++k) {
    const float* src = parts.data[k] + b * parts.width[k];
    if (vec)
      stage<float4>(staged, src, (int)parts.width[k], (int)parts.offset[k], dim, stride);
    else
      stage<float>(staged, src, (int)parts.width[k], (int)parts.offset[k], dim, stride);
  }
  __syncthreads();
  float* o = out + b * out_width;
  if (prefix >= 0) {
    const int first = (int)parts.offset[prefix];
    for (int e = threadIdx.x; e < (int)parts.width[prefix]; e += kThreads) {
      const int g = first + e;
      o[e] = staged[(g / dim) * stride + g % dim];
    }
    o += parts.width[prefix];
  }
  for (int p = threadIdx.x; p < num_pairs; p += kThreads) {
    const int2 ij = pairs[p];
    const float* x = staged + ij.x * stride;
    const float* y = staged + ij.y * stride;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    int e = 0;
    if (dim % 4 == 0) {  // rows on 16 bytes: a quarter of the shared-memory loads (the same sums)
#pragma unroll 8
      for (; e < dim; e += 4) {
        const float4 u = *reinterpret_cast<const float4*>(x + e), v = *reinterpret_cast<const float4*>(y + e);
        a0 = fmaf(u.x, v.x, a0);
        a1 = fmaf(u.y, v.y, a1);
        a2 = fmaf(u.z, v.z, a2);
        a3 = fmaf(u.w, v.w, a3);
      }
    }
    for (; e + 4 <= dim; e += 4) {
      a0 = fmaf(x[e], y[e], a0);
      a1 = fmaf(x[e + 1], y[e + 1], a1);
      a2 = fmaf(x[e + 2], y[e + 2], a2);
      a3 = fmaf(x[e + 3], y[e + 3], a3);
    }
    for (; e < dim; ++e) a0 = fmaf(x[e], y[e], a0);
    o[p] = (a0 + a1) + (a2 + a3);
  }
}

// ---- a warp per sample (dim 32, 64 or 128; at most kWarpMaxN vectors) ----
// Lane l holds its V = dim / 32 floats of every vector in registers (coalesced loads straight from
// the parts, nothing staged), computes its share of every dot of the lower triangle (diagonal
// included) and writes it to shared memory; then lane l sums the 32 shares of dots l, l + 32, ...
// The block-per-sample kernel above read both vectors of every dot from shared memory, two
// 16-byte loads per 4 FMAs, and shared memory's wavefronts bounded it (9.5 us at the paper's
// batch 2048 x 13 x 128 on the H100).
constexpr int kWarpMaxN = 16;
constexpr int kWarpsPerBlock = 4;

struct Vectors {
  const float* base[kWarpMaxN];  // vector v of sample b: base[v] + b * stride[v]
  int64_t stride[kWarpMaxN];
};

template <int V>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) interaction_warp_kernel(Vectors vs, int n, int64_t batch,
                                                                              const int* tri, int num_pairs,
                                                                              const float* prefix_row,
                                                                              int64_t prefix_stride, int prefix_width,
                                                                              float* out, int out_width) {
  using Vec = typename std::conditional<V == 4, float4, typename std::conditional<V == 2, float2, float>::type>::type;
  extern __shared__ float shares_all[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t b = (int64_t)blockIdx.x * kWarpsPerBlock + warp;
  dd::pdl_trigger();
  dd::pdl_wait();  // the vectors come from the kernels before this one
  if (b >= batch) return;  // no block-wide barrier below
  const int tri_n = n * (n + 1) / 2;
  float* shares = shares_all + (size_t)warp * tri_n * 33;  // [dot][33]: lane q's share at q (rows in different banks)
  Vec v[kWarpMaxN];
#pragma unroll
  for (int i = 0; i < kWarpMaxN; ++i)
    if (i < n) v[i] = __ldg(reinterpret_cast<const Vec*>(vs.base[i] + b * vs.stride[i]) + lane);
#pragma unroll
  for (int i = 0; i < kWarpMaxN; ++i) {
    if (i >= n) break;
#pragma unroll
    for (int j = 0; j <= i; ++j) {
      const float* x = reinterpret_cast<const float*>(&v[i]);
      const float* y = reinterpret_cast<const float*>(&v[j]);
      float acc = 0.f;
#pragma unroll
      for (int u = 0; u < V; ++u) acc = fmaf(x[u], y[u], acc);
      shares[(i * (i + 1) / 2 + j) * 33 + lane] = acc;
    }
  }
  float* o = out + b * out_width;
  if (prefix_row != nullptr)
    for (int e = lane; e < prefix_width; e += 32) o[e] = __ldg(prefix_row + b * prefix_stride + e);
  o += prefix_row != nullptr ? prefix_width : 0;
  __syncwarp();
  for (int p = lane; p < num_pairs; p += 32) {
    const float* sh = shares + __ldg(tri + p) * 33;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll
    for (int q = 0; q < 32; q += 4) {
      a0 += sh[q];
      a1 += sh[q + 1];
      a2 += sh[q + 2];
      a3 += sh[q + 3];
    }
    o[p] = (a0 + a1) + (a2 + a3);
  }
}
}  // namespace

extern "C" {

dd_interaction_plan* dd_interaction_plan_create(const int64_t* pairs, int64_t num_pairs, int64_t n, char* msg,
                                                size_t len) {
  if (num_pairs < 0 || n < 1 || (num_pairs > 0 && pairs == nullptr) || num_pairs > (1 << 30)) {
    fail(DD_ERR_CONFIG, msg, len, "bad pairs");
    return nullptr;
  }
  std::vector<int2> ij(num_pairs);
  for (int64_t p = 0; p < num_pairs; ++p) {
    if (pairs[p] < 0 || pairs[p] >= n * n) {
      fail(DD_ERR_CONFIG, msg, len, "pair index %lld is outside the %lld x %lld dot products", (long long)pairs[p],
           (long long)n, (long long)n);
      return nullptr;
    }
    ij[p] = make_int2((int)(pairs[p] / n), (int)(pairs[p] % n));
  }
  auto* plan = new dd_interaction_plan;
  plan->num_pairs = num_pairs;
  plan->n = n;
  plan->flat.assign(pairs, pairs + num_pairs);
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&plan->smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&plan->major, cudaDevAttrComputeCapabilityMajor, device);
  if (e != cudaSuccess) {
    dd::cuda_fail(e, "querying shared memory", msg, len);
    dd_interaction_plan_destroy(plan);
    return nullptr;
  }
  if (num_pairs > 0) {
    std::vector<int> tri(num_pairs);
    for (int64_t p = 0; p < num_pairs; ++p) {
      const int hi = std::max(ij[p].x, ij[p].y), lo = std::min(ij[p].x, ij[p].y);
      tri[p] = n <= kWarpMaxN ? hi * (hi + 1) / 2 + lo : 0;  // used only where n <= kWarpMaxN
    }
    e = cudaMalloc(&plan->pairs, sizeof(int2) * num_pairs);
    if (e == cudaSuccess) e = cudaMemcpy(plan->pairs, ij.data(), sizeof(int2) * num_pairs, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMalloc(&plan->tri, sizeof(int) * num_pairs);
    if (e == cudaSuccess) e = cudaMemcpy(plan->tri, tri.data(), sizeof(int) * num_pairs, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
      dd::cuda_fail(e, "copying the interaction's pairs to the device", msg, len);
      dd_interaction_plan_destroy(plan);
      return nullptr;
    }
  }
  return plan;
}

void dd_interaction_plan_destroy(dd_interaction_plan* plan) {
  if (!plan) return;
  if (plan->pairs) cudaFree(plan->pairs);
  if (plan->tri) cudaFree(plan->tri);
  delete plan;
}

int dd_interaction_cuda(const dd_interaction_plan* plan, const dd_interaction_args* a, void* stream, char* msg,
                        size_t len) {
  if (plan == nullptr) return fail(DD_ERR_CONFIG, msg, len, "no interaction plan");
  dd_interaction_args checked = *a;
  checked.pairs = plan->flat.data();
  checked.num_pairs = plan->num_pairs;
  int64_t width = 0;
  if (int rc = dd_interaction_check(&checked, &width, msg, len)) return rc;
  KernelParts parts{};
  int64_t total = 0;
  for (int k = 0; k < a->count; ++k) {
    parts.data[k] = a->parts[k];
    parts.width[k] = a->widths[k];
    parts.offset[k] = total;
    total += a->widths[k];
  }
  parts.count = a->count;
  auto launch = [&](auto kernel, unsigned blocks, int threads, size_t smem, auto&&... args) {
    return dd::launch_pdl(kernel, dim3(blocks), dim3(threads), smem, static_cast<cudaStream_t>(stream), plan->major,
                          args...);
  };
  bool vec = a->dim % 4 == 0;  // every part's rows start on 16 bytes and hold whole float4s of one vector
  for (int k = 0; k < a->count; ++k)
    vec = vec && a->widths[k] % 4 == 0 && reinterpret_cast<uintptr_t>(a->parts[k]) % 16 == 0;
  if (total > (1 << 26) || width > (1 << 30) || a->dim > (1 << 26))
    return fail(DD_ERR_UNSUPPORTED, msg, len, "rows too wide for the interaction kernel");
  if (total / a->dim != plan->n)
    return fail(DD_ERR_INPUT, msg, len, "the inputs hold %lld vectors of dim %lld; the node's pairs are for %lld",
                (long long)(total / a->dim), (long long)a->dim, (long long)plan->n);
  if (a->batch == 0) return DD_OK;
  if (a->batch > 0x7fffffff) return fail(DD_ERR_INPUT, msg, len, "batch over 2^31 - 1 samples");
  cudaError_t e = cudaSuccess;
  // A warp per sample where dim is 32, 64 or 128, at most kWarpMaxN vectors, every part aligned for
  // the lanes' loads and the shares fit.
  const int V = (int)(a->dim / 32);
  bool warp = (a->dim == 32 || a->dim == 64 || a->dim == 128) && plan->n <= kWarpMaxN;
  for (int k = 0; k < a->count; ++k) warp = warp && reinterpret_cast<uintptr_t>(a->parts[k]) % (4 * V) == 0;
  const size_t warp_smem = sizeof(float) * kWarpsPerBlock * (size_t)(plan->n * (plan->n + 1) / 2) * 33;
  if (warp && warp_smem <= (size_t)plan->smem_limit) {
    Vectors vs{};
    int v = 0;
    for (int k = 0; k < a->count; ++k)
      for (int64_t u = 0; u < a->widths[k] / a->dim; ++u, ++v) {
        vs.base[v] = a->parts[k] + u * a->dim;
        vs.stride[v] = a->widths[k];
      }
    const float* prefix_row = a->prefix >= 0 ? a->parts[a->prefix] : nullptr;
    const int64_t prefix_width = a->prefix >= 0 ? a->widths[a->prefix] : 0;
    const unsigned blocks = (unsigned)((a->batch + kWarpsPerBlock - 1) / kWarpsPerBlock);
    auto go = [&](auto kernel) {
      if (warp_smem > 48 * 1024) {
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)warp_smem);
        if (e != cudaSuccess) return dd::cuda_fail(e, "raising the interaction kernel's shared memory", msg, len);
      }
      e = launch(kernel, blocks, kWarpsPerBlock * 32, warp_smem, vs, (int)plan->n, a->batch, (const int*)plan->tri,
                 (int)plan->num_pairs, prefix_row, prefix_width, (int)prefix_width, a->out, (int)width);
      if (e == cudaSuccess) e = cudaGetLastError();
      return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "launching the interaction kernel", msg, len);
    };
    return V == 4 ? go(interaction_warp_kernel<4>) : V == 2 ? go(interaction_warp_kernel<2>) : go(interaction_warp_kernel<1>);
  }
  // Padding per vector: 4 floats where dim % 4 == 0 (vectors stay on 16 bytes), else 1 (rows in
  // different banks).
  const size_t smem = sizeof(float) * (size_t)(total + (a->dim % 4 == 0 ? 4 : 1) * plan->n);
  if (smem > (size_t)plan->smem_limit)
    return fail(DD_ERR_UNSUPPORTED, msg, len, "a sample's %lld floats do not fit in shared memory (%d bytes)",
                (long long)total, plan->smem_limit);
  if (smem > 48 * 1024) {
    e = cudaFuncSetAttribute(interaction_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return dd::cuda_fail(e, "raising the interaction kernel's shared memory", msg, len);
  }
  e = launch(interaction_kernel, (unsigned)a->batch, kThreads, smem, parts, (int)a->dim, (const int2*)plan->pairs,
             (int)plan->num_pairs, (int)a->prefix, a->out, (int)width, vec);
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "launching the interaction kernel", msg, len);
}

}  // extern "C"
