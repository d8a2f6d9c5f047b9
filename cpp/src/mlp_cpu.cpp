// A chain of fully connected layers in one op (dlrm_deploy::Mlp): checks and the CPU forward.
// See dlrm_deploy/mlp.h for what it computes.
#include <cmath>
#include <vector>

#include "dlrm_deploy/mlp.h"
#include "internal.h"

using dd::fail;

namespace {
constexpr int kRowBlock = 4;  // rows sharing each weight row's pass through the cache

// Four rows' dot products with one weight row, eight lanes each (the compiler vectorises them).
void dot4(const float* const x[kRowBlock], const float* w, int64_t k, float out[kRowBlock]) {
  float acc[kRowBlock][8] = {};
  int64_t e = 0;
  for (; e + 8 <= k; e += 8)
    for (int r = 0; r < kRowBlock; ++r)
      for (int l = 0; l < 8; ++l) acc[r][l] += x[r][e + l] * w[e + l];
  for (int r = 0; r < kRowBlock; ++r) {
    for (int64_t t = e; t < k; ++t) acc[r][0] += x[r][t] * w[t];
    out[r] = ((acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3])) + ((acc[r][4] + acc[r][5]) + (acc[r][6] + acc[r][7]));
  }
}

float activate(float v, int32_t act) {
  if (act == DD_MLP_RELU) return v > 0.f ? v : 0.f;
  if (act == DD_MLP_SIGMOID) {
    if (v >= 0.f) return 1.f / (1.f + std::exp(-v));
    const float z = std::exp(v);
    return z / (1.f + z);
  }
  return v;
}
}  // namespace

extern "C" {

int dd_mlp_check(const dd_mlp_args* a, char* msg, size_t len) {
  if (a == nullptr) return fail(DD_ERR_CONFIG, msg, len, "no arguments");
  if (a->layers < 1 || a->layers > DD_MLP_MAX_LAYERS)
    return fail(DD_ERR_CONFIG, msg, len, "takes 1 to %d layers, got %d", DD_MLP_MAX_LAYERS, (int)a->layers);
  if (a->batch < 0) return fail(DD_ERR_INPUT, msg, len, "negative batch");
  if (a->in_width < 1 || a->in_width > DD_MLP_MAX_WIDTH)
    return fail(DD_ERR_INPUT, msg, len, "the input has %lld columns; 1 to %d are supported", (long long)a->in_width,
                DD_MLP_MAX_WIDTH);
  int64_t k = a->in_width;
  for (int32_t i = 0; i < a->layers; ++i) {
    if (a->w_cols[i] != k)
      return fail(DD_ERR_INPUT, msg, len, "layer %d's weight is [%lld, %lld]; its input has %lld columns", (int)i + 1,
                  (long long)a->w_rows[i], (long long)a->w_cols[i], (long long)k);
    if (a->w_rows[i] < 1 || a->w_rows[i] > DD_MLP_MAX_WIDTH)
      return fail(DD_ERR_INPUT, msg, len, "layer %d has %lld outputs; 1 to %d are supported", (int)i + 1,
                  (long long)a->w_rows[i], DD_MLP_MAX_WIDTH);
    if (a->b_len[i] != a->w_rows[i])
      return fail(DD_ERR_INPUT, msg, len, "layer %d's bias has %lld values for %lld outputs", (int)i + 1,
                  (long long)a->b_len[i], (long long)a->w_rows[i]);
    if (a->activations[i] < DD_MLP_NONE || a->activations[i] > DD_MLP_SIGMOID)
      return fail(DD_ERR_CONFIG, msg, len, "activation %d of layer %d is not 0 (none), 1 (relu) or 2 (sigmoid)",
                  (int)a->activations[i], (int)i + 1);
    k = a->w_rows[i];
  }
  return DD_OK;
}

int dd_mlp_cpu(const dd_mlp_args* a, int64_t row_begin, int64_t row_end, char* msg, size_t len) {
  if (int rc = dd_mlp_check(a, msg, len)) return rc;
  if (row_begin < 0 || row_end > a->batch || row_begin > row_end) return fail(DD_ERR_CONFIG, msg, len, "bad row range");
  int64_t widest = a->in_width;
  for (int32_t i = 0; i < a->layers; ++i) widest = widest > a->w_rows[i] ? widest : a->w_rows[i];
  std::vector<float> buf(2 * kRowBlock * (size_t)widest);
  const int64_t n_last = a->w_rows[a->layers - 1];
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRowBlock) {
    const int rows = (int)(row_end - r0 < kRowBlock ? row_end - r0 : kRowBlock);
    const float* in[kRowBlock];
    for (int r = 0; r < kRowBlock; ++r)  // rows past the range repeat the first (their results are dropped)
      in[r] = a->x + (r0 + (r < rows ? r : 0)) * a->in_width;
    for (int32_t i = 0; i < a->layers; ++i) {
      const int64_t n = a->w_rows[i], k = a->w_cols[i];
      const bool last = i + 1 == a->layers;
      float* out = buf.data() + (size_t)(i % 2) * kRowBlock * widest;
      for (int64_t c = 0; c < n; ++c) {
        float v[kRowBlock];
        dot4(in, a->weights[i] + c * k, k, v);
        for (int r = 0; r < rows; ++r) {
          const float y = activate(v[r] + a->biases[i][c], a->activations[i]);
          if (last) a->out[(r0 + r) * n_last + c] = y;
          else out[r * widest + c] = y;
        }
      }
      for (int r = 0; r < kRowBlock; ++r) in[r] = out + (r < rows ? r : 0) * widest;
    }
  }
  return DD_OK;
}

}  // extern "C"
