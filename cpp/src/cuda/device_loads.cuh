// Device loads: global loads with L2 eviction-priority hints (sm_80+) and the decoding of stored
// elements (fp32/fp16/bf16, int8 and int4 row-wise with the row's scale and bias) into fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../int4_rows.h"
#include "params.cuh"

namespace dd {
namespace {

// ---- memory access with L2 eviction-priority hints (sm_80+) ----
__device__ __forceinline__ uint64_t policy(bool hot, bool pinning) {
  uint64_t p;
  if (hot) asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
  else if (pinning) asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  else asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
  return p;
}

template <int Bytes> struct Raw;
template <> struct Raw<16> { using T = uint4; };
template <> struct Raw<8> { using T = uint2; };
template <> struct Raw<4> { using T = uint32_t; };
template <> struct Raw<2> { using T = uint16_t; };
template <> struct Raw<1> { using T = uint8_t; };

template <int Bytes>
__device__ __forceinline__ typename Raw<Bytes>::T ld(const uint8_t* p, uint64_t pol) {
  typename Raw<Bytes>::T v;
  if constexpr (Bytes == 16) {
    asm volatile("ld.global.nc.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(pol));
  } else if constexpr (Bytes == 8) {
    asm volatile("ld.global.nc.L2::cache_hint.v2.u32 {%0,%1}, [%2], %3;" : "=r"(v.x), "=r"(v.y) : "l"(p), "l"(pol));
  } else if constexpr (Bytes == 4) {
    asm volatile("ld.global.nc.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(v) : "l"(p), "l"(pol));
  } else if constexpr (Bytes == 2) {
    asm volatile("ld.global.nc.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(v) : "l"(p), "l"(pol));
  } else {
    uint16_t h;
    asm volatile("ld.global.nc.L2::cache_hint.u8 %0, [%1], %2;" : "=h"(h) : "l"(p), "l"(pol));
    v = (uint8_t)h;
  }
  return v;
}

__device__ __forceinline__ float2 ld_scale_bias(const uint8_t* p, uint64_t pol) {
  return make_float2(__uint_as_float(ld<4>(p, pol)), __uint_as_float(ld<4>(p + 4, pol)));
}

// ---- element decoding: Raw bytes -> E floats (row-wise codes use the row's scale and bias) ----
// kPerWord: elements per 32-bit word of stored data; kRowwise: codes with an fp32 scale and bias
// per row (where they are: RowLayout, internal.h; int4_rows.h describes the int4 row).
template <int DT> struct Storage;
template <> struct Storage<DD_FP32> { static constexpr int kPerWord = 1; static constexpr bool kRowwise = false; };
template <> struct Storage<DD_FP16> { static constexpr int kPerWord = 2; static constexpr bool kRowwise = false; };
template <> struct Storage<DD_BF16> { static constexpr int kPerWord = 2; static constexpr bool kRowwise = false; };
template <> struct Storage<DD_INT8> { static constexpr int kPerWord = 4; static constexpr bool kRowwise = true; };
template <> struct Storage<DD_INT4> { static constexpr int kPerWord = 8; static constexpr bool kRowwise = true; };

template <int DT>
__device__ __forceinline__ float decode_word(uint32_t w, int k, float2 sb) {
  // k-th element stored in a 32-bit word
  if constexpr (DT == DD_FP32) return __uint_as_float(w);
  else if constexpr (DT == DD_FP16) return __half2float(__ushort_as_half((unsigned short)(w >> (16 * k))));
  else if constexpr (DT == DD_BF16) return __uint_as_float((w >> (16 * k)) << 16);
  else if constexpr (DT == DD_INT4) return fmaf(sb.x, int4_code_to_float(int4_word_code(w, k)), sb.y);
  else return fmaf(sb.x, (float)((w >> (8 * k)) & 0xffu), sb.y);
}

template <int DT, int Bytes>
__device__ __forceinline__ void decode(const typename Raw<Bytes>::T& r, float2 sb, float* v) {
  constexpr int per_word = Storage<DT>::kPerWord;
  uint32_t words[Bytes / 4];
  if constexpr (Bytes == 16) { words[0] = r.x; words[1] = r.y; words[2] = r.z; words[3] = r.w; }
  else if constexpr (Bytes == 8) { words[0] = r.x; words[1] = r.y; }
  else { words[0] = r; }
#pragma unroll
  for (int w = 0; w < Bytes / 4; ++w)
#pragma unroll
    for (int k = 0; k < per_word; ++k) v[w * per_word + k] = decode_word<DT>(words[w], k, sb);
}

// Element `feature` of a row; row-wise dtypes with the row's scale and bias at sbp.
template <int DT>
__device__ __forceinline__ float load_element(const uint8_t* row, const uint8_t* sbp, int feature, uint64_t pol) {
  if constexpr (DT == DD_FP32) return __uint_as_float(ld<4>(row + 4 * feature, pol));
  else if constexpr (DT == DD_FP16) return __half2float(__ushort_as_half(ld<2>(row + 2 * feature, pol)));
  else if constexpr (DT == DD_BF16) return __uint_as_float((uint32_t)ld<2>(row + 2 * feature, pol) << 16);
  else if constexpr (DT == DD_INT4) {
    float2 sb = ld_scale_bias(sbp, pol);
    const uint32_t byte = ld<1>(row + (feature >> 1), pol);
    return fmaf(sb.x, int4_code_to_float((byte >> ((feature & 1) * 4)) & 0xfu), sb.y);
  } else {
    float2 sb = ld_scale_bias(sbp, pol);
    return fmaf(sb.x, (float)ld<1>(row + feature, pol), sb.y);
  }
}

}  // namespace
}  // namespace dd
