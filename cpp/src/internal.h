// Pieces shared by the CPU reference and the CUDA kernels: row addressing, element decoding,
// the error record. Written once, used on host and device so both sides compute the same thing.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "dlrm_deploy/embedding_bag.h"

#if defined(__CUDACC__)
#define DD_HD __host__ __device__ __forceinline__
#else
#define DD_HD inline
#endif

namespace dd {

int fail(int code, char* msg, size_t len, const char* fmt, ...);

// First bad input the kernel met (device side: the workspace). code 0 = none.
enum ErrorCode : int32_t {
  kNoError = 0, kIndexOutOfRange = 1, kOffsetDecreasing = 2, kOffsetPastEnd = 3, kOffsetNegative = 4,
  kFirstOffsetNotZero = 5
};
// position: index position (lookups) or bag number (offsets); value: the offending index or
// offset; limit: rows of the table or number of indices.
using ErrorRecord = dd_error_record;

// Per-table addressing of the packed blob: local row id -> global row.
// Plain layout: base[t] + id. hot_first: ids below `split` live in the shared hot region at
// hot_base + t*split + id; the rest at cold_base[t] + id (cold_base already subtracts split).
struct Tables {
  int32_t num_tables;
  int64_t split;  // pinned_rows when hot_first, else 0
  int64_t rows[DD_MAX_TABLES];
  int64_t cold_base[DD_MAX_TABLES];
};

inline void make_tables(const dd_config& c, Tables* t) {
  t->num_tables = c.num_tables;
  t->split = c.hot_first ? c.pinned_rows : 0;
  int64_t cold = (int64_t)c.num_tables * t->split;
  for (int i = 0; i < c.num_tables; ++i) {
    t->rows[i] = c.table_rows[i];
    t->cold_base[i] = cold - t->split;
    cold += c.table_rows[i] - t->split;
  }
}

DD_HD int64_t global_row(const Tables& t, int table, int64_t id) {
  return id < t.split ? (int64_t)table * t.split + id : t.cold_base[table] + id;
}

// Where global row g's bytes are in the packed blob: its elements (codes) at g * stride; for the
// row-wise dtypes its fp32 scale and bias at sb_offset + g * sb_stride. With each row's codes,
// scale and bias together (int8/int4) sb_offset is the codes' bytes and sb_stride the row's; with
// split_scales (int8) every row's codes come first (stride dim), then the scales and biases (8 each).
struct RowLayout {
  int64_t stride, sb_offset, sb_stride;
};
RowLayout row_layout(const dd_config& c);

// Decoding one stored element to fp32, identical on host and device.
DD_HD float half_bits_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

DD_HD float bf16_bits_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// fp32 -> fp16/bf16 bits with round-to-nearest-even (the host twin of __float2half_rn).
inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to infinity
  if (absx < 0x38800000u) {                                   // result is subnormal or zero
    if (absx < 0x33000000u) return (uint16_t)sign;            // below half the smallest subnormal
    uint32_t e = absx >> 23;
    uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // 14 + (113 - e) - 1 ... places the value in units of 2^-24
    uint32_t q = m >> (shift);
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return (uint16_t)(sign | q);
  }
  uint32_t r = absx - 0x38000000u;  // rebias exponent 127 -> 15
  uint32_t q = r >> 13, rem = r & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;
  return (uint16_t)(sign | q);
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet NaN
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return (uint16_t)(x >> 16);
}

// One table's lookups as the kernels read them. The packed form is the per-table form with every
// table pointing into the concatenated tensors (offsets at t*B, ids from position 0); only its
// first table's first offset must then be 0.
struct TableIO {
  const void* idx;
  const void* off;
  const float* psw;
  int64_t num_idx;
  int64_t num_off;  // entries from off[0] to the end of the offsets tensor
};

struct Lookups {
  int64_t batch;
  int32_t packed;
  TableIO io[DD_MAX_TABLES];
};

// Bag b of one table: its ids are [*start, *end) of io.idx. Returns an ErrorCode (0 = valid) and
// the offending offset in *value. The one offset check of the CPU reference and the CUDA kernels.
template <typename IdxT>
DD_HD int32_t bag_bounds(const TableIO& io, int64_t b, bool first, int64_t* start, int64_t* end, int64_t* value) {
  const IdxT* off = static_cast<const IdxT*>(io.off);
  const int64_t s = (int64_t)off[b];
  const int64_t e = b + 1 < io.num_off ? (int64_t)off[b + 1] : io.num_idx;
  *start = s;
  *end = e;
  if (s < 0) { *value = s; return kOffsetNegative; }
  if (first && b == 0 && s != 0) { *value = s; return kFirstOffsetNotZero; }
  if (e > io.num_idx) { *value = e; return kOffsetPastEnd; }
  if (s > io.num_idx) { *value = s; return kOffsetPastEnd; }
  if (e < s) { *value = e; return kOffsetDecreasing; }
  return kNoError;
}

// The message of an error record; with the call's lookups (per-table form), named after the
// tables' inputs.
std::string error_message(const ErrorRecord& e, const dd_table_lookups* tables = nullptr);

// Checks shared by the CPU and CUDA forwards (config, shapes, argument combinations) and the
// per-table view of the call's tensors. int4_ok: the caller decodes int4 rows (the reference and the
// CUDA kernels pass true); a forward that does not refuses int4 tables with DD_ERR_UNSUPPORTED.
int check_call(const dd_config* cfg, const void* weights, const void* indices, const void* offsets, const float* psw,
               int64_t num_indices, int64_t num_offsets, const void* output, Lookups* view, char* msg, size_t len,
               bool int4_ok = false);
int check_tables_call(const dd_config* cfg, const void* weights, const dd_table_lookups* tables, const void* output,
                      Lookups* view, char* msg, size_t len, bool int4_ok = false);

}  // namespace dd
