// DLRM's dot interaction fused (dlrm_deploy::DotInteraction): shape checks and the CPU forward.
// See dlrm_deploy/interaction.h for what it computes.
#include <vector>

#include "dlrm_deploy/interaction.h"
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

float dot(const float* x, const float* y, int64_t dim) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // eight lanes: the compiler vectorises them
  int64_t e = 0;
  for (; e + 8 <= dim; e += 8)
    for (int l = 0; l < 8; ++l) acc[l] += x[e + l] * y[e + l];
  for (; e < dim; ++e) acc[0] += x[e] * y[e];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
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
  int64_t width = 0;
  if (int rc = dd_interaction_check(a, &width, msg, len)) return rc;
  const VectorMap m = map_vectors(a);
  const int64_t n = (int64_t)m.part.size();
  std::vector<const float*> v(n);
  for (int64_t b = 0; b < a->batch; ++b) {
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
