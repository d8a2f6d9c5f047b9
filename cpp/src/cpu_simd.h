// Whether the CPU forwards take their AVX2/FMA paths: the CPU has AVX2 and FMA and DD_CPU_SIMD is
// not 0 (DD_CPU_SIMD=0 picks the generic loops on any CPU: how the tests reach them on AVX2
// machines). Read by each forward once per process.
#pragma once

#include <cstdlib>

namespace dd {

inline bool cpu_avx2_fma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const char* simd = std::getenv("DD_CPU_SIMD");
  __builtin_cpu_init();
  return !(simd && simd[0] == '0') && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace dd
