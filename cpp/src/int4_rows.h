// int4 row-wise rows (docs/op_contract.md), decoded the same way by the CPU reference, the fast CPU
// forward and the CUDA kernels. A row of a dim-wide table (dim a multiple of 8) is
//   bytes [0, dim/2)          the 4-bit codes, two per byte: column 2i in the low nibble of byte i,
//                             column 2i+1 in its high nibble (so a little-endian 32-bit word w of
//                             the codes holds columns 8w..8w+7, column 8w+k in bits 4k..4k+3);
//   bytes [dim/2, dim/2 + 4)  fp32 scale;  bytes [dim/2 + 4, dim/2 + 8)  fp32 bias;
//   then zeros up to row_bytes = ceil((dim/2 + 8) / 16) * 16.
// value = fmaf(scale, code, bias), one rounding, as the int8 rows.
// Plain C++ with host/device qualifiers under nvcc; no dependency on the rest of the core.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DD_INT4_HD __host__ __device__ __forceinline__
#else
#define DD_INT4_HD inline
#endif

namespace dd {

constexpr int kInt4DimMultiple = 8;  // codes per 32-bit word: dim/2 stays a multiple of 4 bytes

// Bytes of one row, and where the scale and bias start (the codes' bytes).
DD_INT4_HD int64_t int4_row_bytes(int64_t dim) { return (dim / 2 + 8 + 15) / 16 * 16; }
DD_INT4_HD int64_t int4_scale_offset(int64_t dim) { return dim / 2; }

// Code 0..15 as fp32, exactly: 2^23 + code carries the code in its low mantissa bits, and the
// subtraction of 2^23 is exact (a bit operation and one FADD on the GPU instead of an I2F).
DD_INT4_HD float int4_code_to_float(uint32_t code) {
  const uint32_t bits = 0x4b000000u | (code & 0xfu);
  float f;
  std::memcpy(&f, &bits, 4);
  return f - 8388608.0f;
}

// The code of column d of a row.
DD_INT4_HD uint32_t int4_code(const uint8_t* row, int64_t d) { return (uint32_t)(row[d >> 1] >> ((d & 1) * 4)) & 0xfu; }

// Code k (0..7) of a little-endian 32-bit word of codes.
DD_INT4_HD uint32_t int4_word_code(uint32_t word, int k) { return (word >> (4 * k)) & 0xfu; }

// The row's fp32 scale and bias.
DD_INT4_HD void int4_scale_bias(const uint8_t* row, int64_t dim, float* scale, float* bias) {
  std::memcpy(scale, row + dim / 2, 4);
  std::memcpy(bias, row + dim / 2 + 4, 4);
}

// One decoded element: column d of a row with its scale and bias.
DD_INT4_HD float int4_element(const uint8_t* row, int64_t d, float scale, float bias) {
  return fmaf(scale, int4_code_to_float(int4_code(row, d)), bias);
}

}  // namespace dd
