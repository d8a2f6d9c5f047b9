// A chain of fully connected layers in one op (dlrm_deploy::Mlp): checks and the CPU forward.
// See dlrm_deploy/mlp.h for what it computes.
#include <cmath>
#include <vector>

#include "dlrm_deploy/mlp.h"
#include "cpu_simd.h"
#include "internal.h"
#include "mlp_internal.h"

using dd::fail;
using dd::mlp_activate;

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define DD_MLP_X86 1
#include <immintrin.h>
#endif

namespace {
// One layer for `rows` rows: out[r][c] = act(dot(in[r], W[c]) + b[c]).
using LayerFn = void (*)(const float* in, int64_t ld_in, int rows, const float* w, const float* b, int64_t n,
                         int64_t k, int32_t act, float* out, int64_t ld_out);

float dot(const float* x, const float* y, int64_t k) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t e = 0;
  for (; e + 8 <= k; e += 8)
    for (int l = 0; l < 8; ++l) acc[l] += x[e + l] * y[e + l];
  for (; e < k; ++e) acc[0] += x[e] * y[e];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void layer_generic(const float* in, int64_t ld_in, int rows, const float* w, const float* b, int64_t n, int64_t k,
                   int32_t act, float* out, int64_t ld_out) {
  for (int r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) out[r * ld_out + c] = mlp_activate(dot(in + r * ld_in, w + c * k, k) + b[c], act);
}

#ifdef DD_MLP_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace x86 {
// Tile shape measured on a 2-core EPYC VM, one thread, 2048 x 208 -> 128: 4 x 3 22 GFMA/s,
// 3 x 4 18, 2 x 4 14, 4 x 2 12 (12 accumulators + 3 weights + 1 input: the 16 ymm registers).
constexpr int kTileRows = 4, kTileCols = 3;
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// RB rows x CB outputs: every weight load serves RB rows and every input load CB outputs.
template <int RB, int CB>
inline void tile(const float* in, int64_t ld_in, const float* w, int64_t k, float out[RB][CB]) {
  __m256 acc[RB][CB];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t e = 0;
  for (; e + 8 <= k; e += 8) {
    __m256 wv[CB];
    for (int c = 0; c < CB; ++c) wv[c] = _mm256_loadu_ps(w + c * k + e);
    for (int r = 0; r < RB; ++r) {
      const __m256 x = _mm256_loadu_ps(in + r * ld_in + e);
      for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_fmadd_ps(x, wv[c], acc[r][c]);
    }
  }
  if (e < k) {  // the last k % 8 columns through a lane mask (masked-off lanes read nothing)
    static const int32_t lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 8 - (k - e)));
    __m256 wv[CB];
    for (int c = 0; c < CB; ++c) wv[c] = _mm256_maskload_ps(w + c * k + e, mask);
    for (int r = 0; r < RB; ++r) {
      const __m256 x = _mm256_maskload_ps(in + r * ld_in + e, mask);
      for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_fmadd_ps(x, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < CB; ++c) out[r][c] = hsum(acc[r][c]);
}

template <int RB, int CB>
inline void rows_of(const float* in, int64_t ld_in, const float* w, const float* b, int64_t n, int64_t k, int32_t act,
                    float* out, int64_t ld_out) {
  int64_t c = 0;
  for (; c + CB <= n; c += CB) {
    float v[RB][CB];
    tile<RB, CB>(in, ld_in, w + c * k, k, v);
    for (int r = 0; r < RB; ++r)
      for (int j = 0; j < CB; ++j) out[r * ld_out + c + j] = mlp_activate(v[r][j] + b[c + j], act);
  }
  for (; c < n; ++c) {
    float v[RB][1];
    tile<RB, 1>(in, ld_in, w + c * k, k, v);
    for (int r = 0; r < RB; ++r) out[r * ld_out + c] = mlp_activate(v[r][0] + b[c], act);
  }
}

void layer(const float* in, int64_t ld_in, int rows, const float* w, const float* b, int64_t n, int64_t k, int32_t act,
           float* out, int64_t ld_out) {
  int r = 0;
  for (; r + kTileRows <= rows; r += kTileRows)
    rows_of<kTileRows, kTileCols>(in + r * ld_in, ld_in, w, b, n, k, act, out + r * ld_out, ld_out);
  for (; r < rows; ++r) rows_of<1, kTileCols>(in + r * ld_in, ld_in, w, b, n, k, act, out + r * ld_out, ld_out);
}
}  // namespace x86
#pragma GCC pop_options
#endif

LayerFn pick_layer() {
#ifdef DD_MLP_X86
  if (dd::cpu_avx2_fma()) return x86::layer;
#endif
  return layer_generic;
}
}  // namespace

extern "C" {

int dd_mlp_check(const dd_mlp_args* a, char* msg, size_t len) {
  if (a == nullptr) return fail(DD_ERR_CONFIG, msg, len, "no arguments");
  if (a->layers < 1 || a->layers > DD_MLP_MAX_LAYERS)
    return fail(DD_ERR_CONFIG, msg, len, "takes 1 to %d layers, got %d", DD_MLP_MAX_LAYERS, (int)a->layers);
  if (a->batch < 0) return fail(DD_ERR_INPUT, msg, len, "negative batch");
  if (a->max_blocks < 0 && a->max_blocks != DD_MLP_BESIDE)
    return fail(DD_ERR_CONFIG, msg, len, "max_blocks %d is neither >= 0 nor DD_MLP_BESIDE", (int)a->max_blocks);
  if (a->fixed_weights != 0 && a->fixed_weights != 1)
    return fail(DD_ERR_CONFIG, msg, len, "fixed_weights %d is neither 0 nor 1", (int)a->fixed_weights);
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
  static const LayerFn layer = pick_layer();  // AVX2 + FMA where the CPU has them
  constexpr int64_t kBlock = 16;              // rows taken through every layer together
  int64_t widest = 1;
  for (int32_t i = 0; i + 1 < a->layers; ++i) widest = widest > a->w_rows[i] ? widest : a->w_rows[i];
  std::vector<float> buf(2 * kBlock * (size_t)widest);
  const int64_t n_last = a->w_rows[a->layers - 1];
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kBlock) {
    const int rows = (int)(row_end - r0 < kBlock ? row_end - r0 : kBlock);
    const float* in = a->x + r0 * a->in_width;
    int64_t ld_in = a->in_width;
    for (int32_t i = 0; i < a->layers; ++i) {
      const bool last = i + 1 == a->layers;
      float* out = last ? a->out + r0 * n_last : buf.data() + (size_t)(i % 2) * kBlock * widest;
      const int64_t ld_out = last ? n_last : widest;
      layer(in, ld_in, rows, a->weights[i], a->biases[i], a->w_rows[i], a->w_cols[i], a->activations[i], out, ld_out);
      in = out;
      ld_in = ld_out;
    }
  }
  return DD_OK;
}

}  // extern "C"
