// What every kernel of the op shares: the kernel parameter block and the launch shape constants.
// Included only by embedding_bag_cuda.cu (everything sits in its anonymous namespace).
#pragma once

#include <cuda_runtime.h>

#include "../internal.h"

// Occupancy variant's register cap per architecture, as min resident 256-thread blocks per SM;
// cpp/CMakeLists.txt passes the tuned values (DD_OCC_MIN_BLOCKS_SM80/SM90).
#ifndef DD_OCC_MIN_BLOCKS_SM80
#define DD_OCC_MIN_BLOCKS_SM80 6
#endif
#ifndef DD_OCC_MIN_BLOCKS_SM90
#define DD_OCC_MIN_BLOCKS_SM90 8
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define DD_OCC_MIN_BLOCKS DD_OCC_MIN_BLOCKS_SM90
#else
#define DD_OCC_MIN_BLOCKS DD_OCC_MIN_BLOCKS_SM80
#endif

namespace dd {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kBlock = 256;

// Passed by value (about 14 KB: kernel parameters above 4 KB need CUDA 12.1 and sm_70+), so a
// launch captured into a CUDA graph carries every table's pointers and sizes with it.
struct Params {
  const uint8_t* weights;  // global row g's elements (codes) at weights + g * row_bytes
  const uint8_t* sb;       // row-wise dtypes: its fp32 scale and bias at sb + g * sb_stride (RowLayout)
  void* out;
  ErrorRecord* err;
  int64_t batch, row_bytes, sb_stride, pinned;
  int32_t dim, mode, out_dtype, check;
  Tables tab;
  Lookups lk;
};

}  // namespace
}  // namespace dd
