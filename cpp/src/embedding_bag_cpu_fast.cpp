// Fast CPU forward of the op, behind dd_forward_cpu / dd_forward_tables_cpu and their _parallel
// forms. Bit-exact with the reference (embedding_bag_cpu.cpp): each bag is summed by one thread, in
// index order, in fp32, with the reference's fma use; only bags and tables are spread over threads.
// Speed comes from a kernel instantiated per (index type, storage dtype, weighted) so the loop over
// D is a plain loop over vectors: on x86 with AVX2 + FMA + F16C (chosen at run time), dims that are
// a multiple of 8 run kernels written with intrinsics (the common dims 8 to 128 as constants, so a
// bag's sums stay in vector registers; fp16 decoded by vcvtph2ps), other dims an AVX2 build of the
// generic kernel; elsewhere the generic kernel. Rows are prefetched a few lookups ahead, and tables
// past the TLB's reach are put in transparent huge pages (cpu_hugepages.h).
#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "cpu_hugepages.h"
#include "int4_rows.h"
#include "internal.h"

#if defined(__GNUC__)
#define DD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DD_ALWAYS_INLINE inline
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define DD_X86_DISPATCH 1
#include <immintrin.h>
#endif

namespace dd {
namespace {

// Lookups whose rows are prefetched ahead of the one being summed, and cache lines prefetched per
// row (the hardware prefetchers bring the rest of a longer row). Measured on a 2-core EPYC VM, one
// 500,000 x 128 fp32 table, uniform ids, 2 threads in ONNX Runtime: all 8 lines of a row 16-18 ms,
// the first 2 to 4 lines 14-15.5 ms; 12 or 16 lookups ahead no better than 8 (the machine's noise
// is about 20%).
constexpr int64_t kPrefetchLookups = 8;
constexpr int64_t kPrefetchLines = 4;
// Tables up to this size stay in the core's caches: no prefetch (it only costs instructions there).
constexpr int64_t kPrefetchMinTableBytes = 1 << 20;
// Work per parallel task, in row elements summed: large enough that scheduling costs vanish,
// small enough that a batch splits into many tasks per thread.
constexpr int64_t kTaskElements = 1 << 18;
constexpr int kStackDim = 1024;  // accumulators on the stack up to this D
constexpr int kGroup = 4;        // lookups summed per pass over the accumulators

// fp16 bits -> fp32 without branches or loops (vectorises); equal to half_bits_to_float for every
// input, including subnormals (integer conversion, so flush-to-zero modes cannot touch them),
// infinities and NaN payloads.
DD_ALWAYS_INLINE float half_to_float_flat(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  const uint32_t exp = em >> 10;
  const uint32_t rebias = exp == 31 ? (255u - 31u) << 23 : (127u - 15u) << 23;
  const float sub = (float)(int32_t)em * 0x1p-24f;  // exact: em < 1024 when it is used
  uint32_t sub_bits;
  std::memcpy(&sub_bits, &sub, 4);
  const uint32_t bits = sign | (exp == 0 ? sub_bits : (em << 13) + rebias);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Row-wise dtypes: a row's codes come with an fp32 scale and bias (RowLayout says where).
template <int DT>
constexpr bool kRowwise = DT == DD_INT8 || DT == DD_INT4;

// One stored element of a row, decoded to fp32 exactly as the reference decodes it.
template <int DT>
DD_ALWAYS_INLINE float element(const uint8_t* row, int d, float scale, float bias) {
  if constexpr (DT == DD_FP32) {
    float x;
    std::memcpy(&x, row + 4 * d, 4);
    return x;
  } else if constexpr (DT == DD_FP16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * d, 2);
    return half_to_float_flat(h);
  } else if constexpr (DT == DD_BF16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * d, 2);
    return bf16_bits_to_float(h);
  } else if constexpr (DT == DD_INT4) {
    return int4_element(row, d, scale, bias);
  } else {
    return std::fma(scale, (float)row[d], bias);
  }
}

// acc += row (or acc = fma(w, row, acc) with per-sample weights) for kRows consecutive lookups of a
// bag, element by element in lookup order exactly as the reference adds them; each acc element is
// loaded and stored once per kRows rows. No cross-element dependency: the compiler vectorises it.
template <int DT, bool kWeighted, int kRows>
DD_ALWAYS_INLINE void accumulate(float* __restrict acc, const uint8_t* const* rows, const uint8_t* const* sbs,
                                 const float* w, int D) {
  float scale[kRows], bias[kRows];
  for (int r = 0; r < kRows; ++r) {
    scale[r] = bias[r] = 0.0f;
    if constexpr (kRowwise<DT>) {
      std::memcpy(&scale[r], sbs[r], 4);
      std::memcpy(&bias[r], sbs[r] + 4, 4);
    }
  }
  for (int d = 0; d < D; ++d) {
    float a = acc[d];
    for (int r = 0; r < kRows; ++r) {
      const float x = element<DT>(rows[r], d, scale[r], bias[r]);
      if constexpr (kWeighted) a = std::fma(w[r], x, a);
      else a = a + x;
    }
    acc[d] = a;
  }
}

// One cache line into L1. A volatile asm statement: GCC deletes __builtin_prefetch calls it
// deduces to be without effect (helpers holding only prefetches, loops of them).
DD_ALWAYS_INLINE void prefetch_line(const void* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm volatile("prefetcht0 (%0)" : : "r"(p));
#else
  __builtin_prefetch(p, 0, 3);
#endif
}

// The first kPrefetchLines cache lines of one row (a row need not start on a line).
DD_ALWAYS_INLINE void prefetch_row(const uint8_t* row, int64_t bytes) {
  const uintptr_t start = (uintptr_t)row & ~(uintptr_t)63;
  const uintptr_t end = std::min((uintptr_t)row + (uintptr_t)bytes, start + 64 * kPrefetchLines);
  for (uintptr_t p = start; p < end; p += 64) prefetch_line(reinterpret_cast<const void*>(p));
}

// The shared state of one call.
struct Job {
  const dd_config* cfg;
  Tables tab;
  const uint8_t* weights;
  const Lookups* view;
  void* output;
  RowLayout lay;
  int64_t chunk_bags;       // bags per task
  int64_t chunks_per_table;
  // Lowest failing (table, bag) as table * batch + bag; INT64_MAX while none. Tasks past it stop.
  std::atomic<int64_t> first_bad{INT64_MAX};
  std::mutex error_mutex;
  ErrorRecord error{};
};

void record_error(Job& job, int64_t key, const ErrorRecord& e) {
  std::lock_guard<std::mutex> lock(job.error_mutex);
  if (key < job.first_bad.load(std::memory_order_relaxed)) {
    job.error = e;
    job.first_bad.store(key, std::memory_order_relaxed);
  }
}

// Writes one pooled bag with the reference's mean and output rounding.
DD_ALWAYS_INLINE void store_bag(const dd_config& c, const float* acc, int64_t n, void* output, int64_t base) {
  const int D = c.dim;
  if (c.mode == DD_MEAN) {
    float* o = c.out_dtype == DD_FP32 ? static_cast<float*>(output) + base : nullptr;
    for (int d = 0; d < D; ++d) {
      const float r = n > 0 ? acc[d] / (float)n : 0.0f;
      if (o) o[d] = r;
      else if (c.out_dtype == DD_FP16) static_cast<uint16_t*>(output)[base + d] = float_to_half_bits(r);
      else static_cast<uint16_t*>(output)[base + d] = float_to_bf16_bits(r);
    }
    return;
  }
  switch (c.out_dtype) {
    case DD_FP32: std::memcpy(static_cast<float*>(output) + base, acc, sizeof(float) * D); break;
    case DD_FP16:
      for (int d = 0; d < D; ++d) static_cast<uint16_t*>(output)[base + d] = float_to_half_bits(acc[d]);
      break;
    default:
      for (int d = 0; d < D; ++d) static_cast<uint16_t*>(output)[base + d] = float_to_bf16_bits(acc[d]);
  }
}

// Bags [b0, b1) of table t, in order; stops at the first bad input (recorded in job).
// kD: the dim as a compile-time constant (0: c.dim at run time); with it the accumulators are a
// local array the compiler keeps in vector registers across a bag.
template <typename IdxT, int DT, bool kWeighted, int kD>
DD_ALWAYS_INLINE void bags_kernel(Job& job, int t, int64_t b0, int64_t b1, float* acc_buffer) {
  const dd_config& c = *job.cfg;
  const Lookups& v = *job.view;
  const TableIO& io = v.io[t];
  const IdxT* ids = static_cast<const IdxT*>(io.idx);
  const int D = kD ? kD : c.dim, T = c.num_tables;
  float acc_local[kD ? kD : 1];
  float* const acc = kD ? acc_local : acc_buffer;
  const int64_t rows = c.table_rows[t], row_bytes = job.lay.stride, batch = v.batch;
  const uint8_t* const sb_base = job.weights + job.lay.sb_offset;
  const int64_t sb_stride = job.lay.sb_stride;
  const uint8_t* const weights = job.weights;
  const Tables& tab = job.tab;
  const bool prefetching = rows * row_bytes > kPrefetchMinTableBytes;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t key = (int64_t)t * batch + b;
    if (job.first_bad.load(std::memory_order_relaxed) < key) return;  // an earlier bag already failed
    int64_t start, end;
    ErrorRecord e{};
    e.table = t;
    e.position = v.packed ? key : b;
    e.limit = io.num_idx;
    e.code = bag_bounds<IdxT>(io, b, !v.packed || t == 0, &start, &end, &e.value);
    if (e.code) return record_error(job, key, e);
    std::fill(acc, acc + D, 0.0f);
    auto prefetch = [&](int64_t i) {
      if (prefetching && i < io.num_idx) {
        const int64_t ahead = (int64_t)ids[i];
        if (ahead >= 0 && ahead < rows) {
          const int64_t g = global_row(tab, t, ahead);
          prefetch_row(weights + g * row_bytes, row_bytes);
          if (c.split_scales) prefetch_line(sb_base + g * sb_stride);  // not in the row's lines
        }
      }
    };
    // Lookups in groups of kGroup (one pass over acc per group), then one at a time.
    int64_t i = start;
    for (; kD == 0 && i + kGroup <= end; i += kGroup) {
      const uint8_t* row[kGroup];
      const uint8_t* sb[kGroup];
      float w[kGroup];
      for (int r = 0; r < kGroup; ++r) {
        prefetch(i + r + kPrefetchLookups);
        const int64_t id = (int64_t)ids[i + r];
        if (id < 0 || id >= rows) return record_error(job, key, ErrorRecord{kIndexOutOfRange, t, i + r, id, rows});
        const int64_t g = global_row(tab, t, id);
        row[r] = weights + g * row_bytes;
        sb[r] = sb_base + g * sb_stride;
        w[r] = kWeighted ? io.psw[i + r] : 1.0f;
      }
      accumulate<DT, kWeighted, kGroup>(acc, row, sb, w, D);
    }
    for (; i < end; ++i) {
      prefetch(i + kPrefetchLookups);
      const int64_t id = (int64_t)ids[i];
      if (id < 0 || id >= rows) return record_error(job, key, ErrorRecord{kIndexOutOfRange, t, i, id, rows});
      const int64_t g = global_row(tab, t, id);
      const uint8_t* row = weights + g * row_bytes;
      const uint8_t* sb = sb_base + g * sb_stride;
      const float w = kWeighted ? io.psw[i] : 1.0f;
      accumulate<DT, kWeighted, 1>(acc, &row, &sb, &w, D);
    }
    store_bag(c, acc, end - start, job.output, b * (int64_t)T * D + (int64_t)t * D);
  }
}

using TaskFn = void (*)(Job&, int, int64_t, int64_t, float*);

template <typename IdxT, int DT, bool kWeighted>
void task_generic(Job& job, int t, int64_t b0, int64_t b1, float* acc) {
  bags_kernel<IdxT, DT, kWeighted, 0>(job, t, b0, b1, acc);
}

#ifdef DD_X86_DISPATCH
// The same kernel compiled for AVX2 + FMA: wider vectors, and std::fma as one instruction (the
// generic build calls libm's fmaf per element). FMA rounds once either way: same bits. Used for
// dims that are not a multiple of 8.
template <typename IdxT, int DT, bool kWeighted, int kD>
__attribute__((target("avx2,fma"))) void task_avx2(Job& job, int t, int64_t b0, int64_t b1, float* acc) {
  bags_kernel<IdxT, DT, kWeighted, kD>(job, t, b0, b1, acc);
}

bool has_avx2_fma_f16c() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return yes;
}

// Dims that are a multiple of 8: the sums written with AVX2/FMA/F16C intrinsics, 8 elements at a
// time, each element still added in lookup order exactly as the reference adds it (vaddps and
// vfmadd231ps are the scalar operations lane by lane; vcvtph2ps, the bf16 shift and the int8
// vcvtdq2ps + vfmadd are the reference's exact decodes). Per lookup: one unsigned bounds compare,
// a branch-free row address, and, for tables past the caches, one row prefetch a fixed distance
// ahead in the id stream (of an id not yet checked: a prefetch never faults).
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace x86 {

// Widest dim whose sums always stay in vector registers for a whole bag (8 ymm). Dim 128 (16 ymm,
// all of them) keeps its sums in registers for tables past the caches, where the row loads are
// what counts; for tables in cache, and for other dims, kGroup lookups are summed per pass over
// accumulators in L1. Measured on a 2-core EPYC VM (one thread, CPU time): 500,000 x 128 fp32
// uniform ids, registers 22-26 ms, L1 passes 27-30 ms; 4,000 x 128 (in cache) the other way round,
// 3.5 vs 3.1 ms (fp16 4.0 vs 3.2 ms).
constexpr int kRegisterDim = 64;
constexpr int kWideRegisterDim = 128;

// 8 stored elements from element d on, decoded to fp32 as element<DT> decodes them.
template <int DT>
DD_ALWAYS_INLINE __m256 load8(const uint8_t* row, int d, __m256 scale, __m256 bias) {
  if constexpr (DT == DD_FP32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + d);
  } else if constexpr (DT == DD_FP16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * d)));
  } else if constexpr (DT == DD_BF16) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * d)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  } else if constexpr (DT == DD_INT4) {  // 8 codes in one little-endian word, column d + k in bits 4k..4k+3
    uint32_t word;
    std::memcpy(&word, row + d / 2, 4);
    const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word),
                                                         _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                       _mm256_set1_epi32(0xF));
    return _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(q), bias);
  } else {
    const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d)));
    return _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(q), bias);
  }
}

// Row addresses of one table: ids below split in the shared hot region, the rest in the table's
// own rows (split is 0 without the hot-first layout), chosen without a branch.
struct RowAt {
  uintptr_t hot, cold;
  int64_t split;
  uintptr_t bytes;
  DD_ALWAYS_INLINE const uint8_t* operator()(int64_t id) const {
    return reinterpret_cast<const uint8_t*>((id < split ? hot : cold) + (uintptr_t)id * bytes);
  }
};

// One lookup's row and, for int8/int4, its scale and bias; for weighted sums its weight.
template <int DT, bool kWeighted>
struct Lookup {
  const uint8_t* row;
  __m256 scale, bias, w;
  DD_ALWAYS_INLINE void load(const uint8_t* r, const uint8_t* sbp, const float* psw, int64_t i) {
    row = r;
    if constexpr (kRowwise<DT>) {
      float sb[2];
      std::memcpy(sb, sbp, 8);
      scale = _mm256_set1_ps(sb[0]);
      bias = _mm256_set1_ps(sb[1]);
    } else {
      scale = bias = _mm256_setzero_ps();
    }
    w = kWeighted ? _mm256_set1_ps(psw[i]) : _mm256_setzero_ps();
  }
  DD_ALWAYS_INLINE __m256 add_to(__m256 acc, int d) const {
    const __m256 x = load8<DT>(row, d, scale, bias);
    if constexpr (kWeighted) return _mm256_fmadd_ps(w, x, acc);  // std::fma(w, x, acc)
    else return _mm256_add_ps(acc, x);                           // acc + x
  }
};

struct BagArgs {
  int64_t start, end, rows, prefetch_end;  // ids[i + kPrefetchLookups] exists for i < prefetch_end
  RowAt at, sb;  // a row's elements (codes); row-wise dtypes: its scale and bias
  bool prefetching;
  bool prefetch_sb;  // the scale and bias lie apart from the row (split_scales): prefetched too
  template <int DT>
  DD_ALWAYS_INLINE const uint8_t* scale_bias(int64_t id) const {
    if constexpr (kRowwise<DT>) return sb(id);
    else return nullptr;
  }
};

template <typename IdxT>
DD_ALWAYS_INLINE void prefetch_ahead(const IdxT* ids, int64_t i, const BagArgs& a) {
  if (a.prefetching && i < a.prefetch_end) {
    const int64_t id = (int64_t)ids[i + kPrefetchLookups];
    prefetch_row(a.at(id), (int64_t)a.at.bytes);
    if (a.prefetch_sb) prefetch_line(a.sb(id));
  }
}

// Sums bag [start, end) into acc (kD floats). Returns -1, or the position of the first bad id.
template <typename IdxT, int DT, bool kWeighted, int kD>
DD_ALWAYS_INLINE int64_t bag_in_registers(const IdxT* ids, const float* psw, const BagArgs& a, float* acc) {
  constexpr int R = kD / 8;
  __m256 s[R];
#pragma GCC unroll 16
  for (int k = 0; k < R; ++k) s[k] = _mm256_setzero_ps();
  for (int64_t i = a.start; i < a.end; ++i) {
    prefetch_ahead(ids, i, a);
    const int64_t id = (int64_t)ids[i];
    if ((uint64_t)id >= (uint64_t)a.rows) return i;
    Lookup<DT, kWeighted> l;
    l.load(a.at(id), a.template scale_bias<DT>(id), psw, i);
#pragma GCC unroll 16
    for (int k = 0; k < R; ++k) s[k] = l.add_to(s[k], 8 * k);
  }
#pragma GCC unroll 16
  for (int k = 0; k < R; ++k) _mm256_storeu_ps(acc + 8 * k, s[k]);
  return -1;
}

// The same for any multiple of 8 (kD, or D at run time when kD is 0): kGroup lookups per pass
// over acc, each element loaded and stored once per pass.
template <typename IdxT, int DT, bool kWeighted, int kD>
DD_ALWAYS_INLINE int64_t bag_in_memory(const IdxT* ids, const float* psw, const BagArgs& a, int dim, float* acc) {
  const int D = kD ? kD : dim;
  std::fill(acc, acc + D, 0.0f);
  int64_t i = a.start;
  for (; i + kGroup <= a.end; i += kGroup) {
    Lookup<DT, kWeighted> l[kGroup];
    for (int g = 0; g < kGroup; ++g) {
      prefetch_ahead(ids, i + g, a);
      const int64_t id = (int64_t)ids[i + g];
      if ((uint64_t)id >= (uint64_t)a.rows) return i + g;
      l[g].load(a.at(id), a.template scale_bias<DT>(id), psw, i + g);
    }
    for (int d = 0; d < D; d += 8) {
      __m256 x = _mm256_loadu_ps(acc + d);
      for (int g = 0; g < kGroup; ++g) x = l[g].add_to(x, d);
      _mm256_storeu_ps(acc + d, x);
    }
  }
  for (; i < a.end; ++i) {
    prefetch_ahead(ids, i, a);
    const int64_t id = (int64_t)ids[i];
    if ((uint64_t)id >= (uint64_t)a.rows) return i;
    Lookup<DT, kWeighted> l;
    l.load(a.at(id), a.template scale_bias<DT>(id), psw, i);
    for (int d = 0; d < D; d += 8) _mm256_storeu_ps(acc + d, l.add_to(_mm256_loadu_ps(acc + d), d));
  }
  return -1;
}

// Bags [b0, b1) of table t (see bags_kernel).
template <typename IdxT, int DT, bool kWeighted, int kD>
void task(Job& job, int t, int64_t b0, int64_t b1, float* acc_buffer) {
  const dd_config& c = *job.cfg;
  const Lookups& v = *job.view;
  const TableIO& io = v.io[t];
  const IdxT* ids = static_cast<const IdxT*>(io.idx);
  const int D = kD ? kD : c.dim, T = c.num_tables;
  const Tables& tab = job.tab;
  BagArgs a;
  a.rows = c.table_rows[t];
  a.prefetch_end = io.num_idx - kPrefetchLookups;
  const RowLayout& lay = job.lay;
  a.prefetching = a.rows * lay.stride > kPrefetchMinTableBytes;
  a.at.hot = (uintptr_t)job.weights + (uintptr_t)((int64_t)t * tab.split * lay.stride);
  a.at.cold = (uintptr_t)job.weights + (uintptr_t)(tab.cold_base[t] * lay.stride);
  a.at.split = tab.split;
  a.at.bytes = (uintptr_t)lay.stride;
  a.sb.hot = (uintptr_t)job.weights + (uintptr_t)(lay.sb_offset + (int64_t)t * tab.split * lay.sb_stride);
  a.sb.cold = (uintptr_t)job.weights + (uintptr_t)(lay.sb_offset + tab.cold_base[t] * lay.sb_stride);
  a.sb.split = tab.split;
  a.sb.bytes = (uintptr_t)lay.sb_stride;
  a.prefetch_sb = c.split_scales != 0;
  alignas(32) float acc_local[kD ? kD : 8];
  float* const acc = kD ? acc_local : acc_buffer;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t key = (int64_t)t * v.batch + b;
    if (job.first_bad.load(std::memory_order_relaxed) < key) return;  // an earlier bag already failed
    ErrorRecord e{};
    e.table = t;
    e.position = v.packed ? key : b;
    e.limit = io.num_idx;
    e.code = bag_bounds<IdxT>(io, b, !v.packed || t == 0, &a.start, &a.end, &e.value);
    if (e.code) return record_error(job, key, e);
    int64_t bad;
    if constexpr (kD != 0 && kD <= kRegisterDim) {
      bad = bag_in_registers<IdxT, DT, kWeighted, kD>(ids, io.psw, a, acc);
    } else if constexpr (kD == kWideRegisterDim) {
      bad = a.prefetching ? bag_in_registers<IdxT, DT, kWeighted, kD>(ids, io.psw, a, acc)
                          : bag_in_memory<IdxT, DT, kWeighted, kD>(ids, io.psw, a, D, acc);
    } else {
      bad = bag_in_memory<IdxT, DT, kWeighted, kD>(ids, io.psw, a, D, acc);
    }
    if (bad >= 0) return record_error(job, key, ErrorRecord{kIndexOutOfRange, t, bad, (int64_t)ids[bad], a.rows});
    store_bag(c, acc, a.end - a.start, job.output, b * (int64_t)T * D + (int64_t)t * D);
  }
}

}  // namespace x86
#pragma GCC pop_options
#endif

template <typename IdxT, int DT, bool kWeighted>
TaskFn pick_isa(int dim) {
#ifdef DD_X86_DISPATCH
  if (has_avx2_fma_f16c()) {
    switch (dim) {  // the common widths as constants
      case 8: return &x86::task<IdxT, DT, kWeighted, 8>;
      case 16: return &x86::task<IdxT, DT, kWeighted, 16>;
      case 32: return &x86::task<IdxT, DT, kWeighted, 32>;
      case 64: return &x86::task<IdxT, DT, kWeighted, 64>;
      case 128: return &x86::task<IdxT, DT, kWeighted, 128>;
      default: return dim % 8 == 0 ? &x86::task<IdxT, DT, kWeighted, 0> : &task_avx2<IdxT, DT, kWeighted, 0>;
    }
  }
#endif
  (void)dim;
  return &task_generic<IdxT, DT, kWeighted>;
}

template <typename IdxT, bool kWeighted>
TaskFn pick_dtype(int dtype, int dim) {
  switch (dtype) {
    case DD_FP32: return pick_isa<IdxT, DD_FP32, kWeighted>(dim);
    case DD_FP16: return pick_isa<IdxT, DD_FP16, kWeighted>(dim);
    case DD_BF16: return pick_isa<IdxT, DD_BF16, kWeighted>(dim);
    case DD_INT4: return pick_isa<IdxT, DD_INT4, kWeighted>(dim);
    default: return pick_isa<IdxT, DD_INT8, kWeighted>(dim);
  }
}

TaskFn pick_kernel(const dd_config& c, bool weighted) {
  if (c.index_type == DD_INT32) return weighted ? pick_dtype<int32_t, true>(c.dtype, c.dim) : pick_dtype<int32_t, false>(c.dtype, c.dim);
  return weighted ? pick_dtype<int64_t, true>(c.dtype, c.dim) : pick_dtype<int64_t, false>(c.dtype, c.dim);
}

struct Call {
  Job* job;
  TaskFn fn;
};

// dd_range_fn over task numbers: task k is bags [j * chunk, (j + 1) * chunk) of table k / chunks.
void run_tasks(void* arg, int64_t begin, int64_t end) {
  const Call& call = *static_cast<const Call*>(arg);
  Job& job = *call.job;
  const int D = job.cfg->dim;
  float stack_acc[kStackDim];
  std::vector<float> heap_acc(D > kStackDim ? D : 0);
  float* acc = D > kStackDim ? heap_acc.data() : stack_acc;
  for (int64_t k = begin; k < end; ++k) {
    const int t = (int)(k / job.chunks_per_table);
    const int64_t b0 = (k % job.chunks_per_table) * job.chunk_bags;
    const int64_t b1 = std::min(b0 + job.chunk_bags, job.view->batch);
    call.fn(job, t, b0, b1, acc);
  }
}

int forward_fast(const dd_config& c, const void* weights, const Lookups& v, void* output,
                 const dd_table_lookups* names, dd_parallel_for_fn parallel_for, void* parallel_ctx, char* msg,
                 size_t len) {
  const int T = c.num_tables;
  if (v.batch <= 0 || T <= 0) return DD_OK;
  auto job = std::make_unique<Job>();
  job->cfg = &c;
  make_tables(c, &job->tab);
  job->weights = static_cast<const uint8_t*>(weights);
  job->view = &v;
  job->output = output;
  job->lay = row_layout(c);
  // Tasks of about kTaskElements summed elements, from the call's mean bag length.
  int64_t ids = 0;
  for (int t = 0; t < (v.packed ? 1 : T); ++t) ids += std::max<int64_t>(v.io[t].num_idx, 0);
  const int64_t per_bag = (ids / ((int64_t)T * v.batch) + 1) * std::max(c.dim, 1);
  job->chunk_bags = std::clamp<int64_t>(kTaskElements / per_bag, 1, v.batch);
  job->chunks_per_table = (v.batch + job->chunk_bags - 1) / job->chunk_bags;
  // Tables past the TLB's reach in huge pages (once per weights buffer; best effort).
  advise_huge_pages(weights, (size_t)(dd_total_rows(&c) * dd_row_bytes(&c)), parallel_for, parallel_ctx);
  Call call{job.get(), pick_kernel(c, v.io[0].psw != nullptr)};
  const int64_t tasks = (int64_t)T * job->chunks_per_table;
  if (parallel_for != nullptr && tasks > 1) parallel_for(parallel_ctx, tasks, &run_tasks, &call);
  else run_tasks(&call, 0, tasks);
  if (job->first_bad.load() != INT64_MAX) return fail(DD_ERR_INPUT, msg, len, "%s", error_message(job->error, names).c_str());
  return DD_OK;
}

}  // namespace
}  // namespace dd

extern "C" int dd_forward_cpu_parallel(const dd_config* cfg, const void* weights, const void* indices,
                                       const void* offsets, const float* psw, int64_t num_indices,
                                       int64_t num_offsets, void* output, dd_parallel_for_fn parallel_for,
                                       void* parallel_ctx, char* msg, size_t len) {
  auto view = std::make_unique<dd::Lookups>();
  int rc = dd::check_call(cfg, weights, indices, offsets, psw, num_indices, num_offsets, output, view.get(), msg, len,
                          /*int4_ok=*/true);
  if (rc) return rc;
  return dd::forward_fast(*cfg, weights, *view, output, nullptr, parallel_for, parallel_ctx, msg, len);
}

extern "C" int dd_forward_tables_cpu_parallel(const dd_config* cfg, const void* weights,
                                              const dd_table_lookups* tables, void* output,
                                              dd_parallel_for_fn parallel_for, void* parallel_ctx, char* msg,
                                              size_t len) {
  auto view = std::make_unique<dd::Lookups>();
  int rc = dd::check_tables_call(cfg, weights, tables, output, view.get(), msg, len, /*int4_ok=*/true);
  if (rc) return rc;
  return dd::forward_fast(*cfg, weights, *view, output, tables, parallel_for, parallel_ctx, msg, len);
}

extern "C" int dd_forward_cpu(const dd_config* cfg, const void* weights, const void* indices, const void* offsets,
                              const float* psw, int64_t num_indices, int64_t num_offsets, void* output, char* msg,
                              size_t len) {
  return dd_forward_cpu_parallel(cfg, weights, indices, offsets, psw, num_indices, num_offsets, output, nullptr,
                                 nullptr, msg, len);
}

extern "C" int dd_forward_tables_cpu(const dd_config* cfg, const void* weights, const dd_table_lookups* tables,
                                     void* output, char* msg, size_t len) {
  return dd_forward_tables_cpu_parallel(cfg, weights, tables, output, nullptr, nullptr, msg, len);
}
