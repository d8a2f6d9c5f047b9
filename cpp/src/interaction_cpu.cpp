// DLRM's dot interaction fused (dlrm_deploy::DotInteraction): shape checks and the CPU forward (a
// range of samples per call, spread over ONNX Runtime's threads by the op; dots by AVX2/FMA where the
// CPU has them: 4.8 -> 2.0 ms at the paper's batch 2048 x 13 x 128 on 2 threads). See
// dlrm_deploy/interaction.h for what it computes.
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "dlrm_deploy/interaction.h"
#include "cpu_simd.h"
#include "internal.h"

using dd::fail;

namespace {
// Vector v of sample b: the part holding it and the float offset inside that part's row.
struct VectorMap {
  std::vector<int32_t> part;
  std::vector<int64_t> column;
};

VectorMap map_vectors(const dd_interaction_args* a) {
  VectorMap m;
  for (int32_t k = 0; k < a->count; ++k)
    for (int64_t c = 0; c < a->widths[k]; c += a->dim) {
      m.part.push_back(k);
      m.column.push_back(c);
    }
  return m;
}

using DotFn = float (*)(const float*, const float*, int64_t);

float dot_generic(const float* x, const float* y, int64_t dim) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // eight lanes: the compiler vectorises them
  int64_t e = 0;
  for (; e + 8 <= dim; e += 8)
    for (int l = 0; l < 8; ++l) acc[l] += x[e + l] * y[e + l];
  for (; e < dim; ++e) acc[0] += x[e] * y[e];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DD_INTERACTION_X86 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
// AVX2/FMA: two independent 8-lane sums (the second FMA chain hides the first one's latency).
float dot_avx2(const float* x, const float* y, int64_t dim) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t e = 0;
  for (; e + 16 <= dim; e += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + e), _mm256_loadu_ps(y + e), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + e + 8), _mm256_loadu_ps(y + e + 8), a1);
  }
  if (e + 8 <= dim) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + e), _mm256_loadu_ps(y + e), a0);
    e += 8;
  }
  const __m256 s8 = _mm256_add_ps(a0, a1);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
  float r = _mm_cvtss_f32(s4);
  for (; e < dim; ++e) r = std::fma(x[e], y[e], r);
  return r;
}
#pragma GCC pop_options
#endif

DotFn pick_dot() {
#ifdef DD_INTERACTION_X86
  if (dd::cpu_avx2_fma()) return dot_avx2;
#endif
  return dot_generic;
}
}  // namespace

extern "C" {

int dd_interaction_check(const dd_interaction_args* a, int64_t* out_width, char* msg, size_t len) {
  if (a == nullptr) return fail(DD_ERR_CONFIG, msg, len, "no arguments");
  if (a->count < 1 || a->count > DD_INTERACTION_MAX_PARTS)
    return fail(DD_ERR_INPUT, msg, len, "takes 1 to %d inputs, got %d", DD_INTERACTION_MAX_PARTS, (int)a->count);
  if (a->dim < 1) return fail(DD_ERR_CONFIG, msg, len, "dim must be >= 1, got %lld", (long long)a->dim);
  if (a->batch < 0) return fail(DD_ERR_INPUT, msg, len, "negative batch");
  int64_t n = 0;
  for (int32_t k = 0; k < a->count; ++k) {
    if (a->widths[k] < 0 || a->widths[k] % a->dim != 0)
      return fail(DD_ERR_INPUT, msg, len, "input %d has %lld columns, not a multiple of dim %lld", (int)k,
                  (long long)a->widths[k], (long long)a->dim);
    n += a->widths[k] / a->dim;
  }
  if (a->prefix < -1 || a->prefix >= a->count)
    return fail(DD_ERR_CONFIG, msg, len, "prefix %d is not an input (0..%d) or -1", (int)a->prefix, (int)a->count - 1);
  if (a->num_pairs < 0 || (a->num_pairs > 0 && a->pairs == nullptr)) return fail(DD_ERR_CONFIG, msg, len, "no pairs");
  for (int64_t p = 0; p < a->num_pairs; ++p)
    if (a->pairs[p] < 0 || a->pairs[p] >= n * n)
      return fail(DD_ERR_INPUT, msg, len, "pair index %lld is outside the %lld x %lld dot products", (long long)a->pairs[p],
                  (long long)n, (long long)n);
  if (out_width) *out_width = (a->prefix >= 0 ? a->widths[a->prefix] : 0) + a->num_pairs;
  return DD_OK;
}

int dd_interaction_cpu(const dd_interaction_args* a, char* msg, size_t len) {
  return dd_interaction_cpu_rows(a, 0, a ? a->batch : 0, msg, len);
}

int dd_interaction_cpu_rows(const dd_interaction_args* a, int64_t row_begin, int64_t row_end, char* msg, size_t len) {
  int64_t width = 0;
  if (int rc = dd_interaction_check(a, &width, msg, len)) return rc;
  if (row_begin < 0 || row_end > a->batch || row_begin > row_end)
    return fail(DD_ERR_INPUT, msg, len, "rows [%lld, %lld) outside the batch of %lld", (long long)row_begin,
                (long long)row_end, (long long)a->batch);
  static const DotFn dot = pick_dot();
  const VectorMap m = map_vectors(a);
  const int64_t n = (int64_t)m.part.size();
  std::vector<const float*> v(n);
  for (int64_t b = row_begin; b < row_end; ++b) {
    for (int64_t i = 0; i < n; ++i) v[i] = a->parts[m.part[i]] + b * a->widths[m.part[i]] + m.column[i];
    float* o = a->out + b * width;
    if (a->prefix >= 0) {
      const float* src = a->parts[a->prefix] + b * a->widths[a->prefix];
      std::memcpy(o, src, sizeof(float) * a->widths[a->prefix]);
      o += a->widths[a->prefix];
    }
    for (int64_t p = 0; p < a->num_pairs; ++p) o[p] = dot(v[a->pairs[p] / n], v[a->pairs[p] % n], a->dim);
  }
  return DD_OK;
}

}  // extern "C"
