// CPU reference of the op: the contract's semantics, sequential fp32 sums in index order. The CUDA
// kernels reproduce this order (bit-exact) wherever one thread group walks a whole bag.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <vector>

#include "internal.h"

namespace dd {

std::string error_message(const ErrorRecord& e) {
  char buf[DD_MSG_LEN];
  switch (e.code) {
    case kIndexOutOfRange:
      snprintf(buf, sizeof(buf), "index %" PRId64 " at position %" PRId64 " is out of range for table %d with %" PRId64 " rows",
               e.value, e.position, e.table, e.limit);
      break;
    case kOffsetDecreasing:
      snprintf(buf, sizeof(buf), "offsets must be non-decreasing: bag %" PRId64 " (table %d) ends at %" PRId64 " before it starts",
               e.position, e.table, e.value);
      break;
    case kOffsetPastEnd:
      snprintf(buf, sizeof(buf), "offset %" PRId64 " of bag %" PRId64 " (table %d) is past the end of indices (%" PRId64 " indices)",
               e.value, e.position, e.table, e.limit);
      break;
    case kOffsetNegative:
      snprintf(buf, sizeof(buf), "offset %" PRId64 " of bag %" PRId64 " (table %d) is negative", e.value, e.position, e.table);
      break;
    default:
      snprintf(buf, sizeof(buf), "no error");
  }
  return buf;
}

namespace {

template <typename IdxT>
int forward_cpu(const dd_config& c, const uint8_t* weights, const IdxT* indices, const IdxT* offsets, const float* psw,
                int64_t num_indices, int64_t num_offsets, int64_t batch, void* output, char* msg, size_t len) {
  Tables tab;
  make_tables(c, &tab);
  const int T = c.num_tables, D = c.dim;
  const int64_t row_bytes = dd_row_bytes(&c);
  std::vector<float> acc(D);
  for (int t = 0; t < T; ++t) {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t bag = (int64_t)t * batch + b;
      const int64_t start = (int64_t)offsets[bag];
      const int64_t end = bag + 1 < num_offsets ? (int64_t)offsets[bag + 1] : num_indices;
      ErrorRecord e{};
      e.table = t;
      e.position = bag;
      if (start < 0) { e.code = kOffsetNegative; e.value = start; }
      else if (end > num_indices) { e.code = kOffsetPastEnd; e.value = end; e.limit = num_indices; }
      else if (start > num_indices) { e.code = kOffsetPastEnd; e.value = start; e.limit = num_indices; }
      else if (end < start) { e.code = kOffsetDecreasing; e.value = end; }
      if (e.code) return fail(DD_ERR_INPUT, msg, len, "%s", error_message(e).c_str());
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t i = start; i < end; ++i) {
        const int64_t id = (int64_t)indices[i];
        if (id < 0 || id >= c.table_rows[t]) {
          ErrorRecord ie{kIndexOutOfRange, t, i, id, c.table_rows[t]};
          return fail(DD_ERR_INPUT, msg, len, "%s", error_message(ie).c_str());
        }
        const uint8_t* row = weights + global_row(tab, t, id) * row_bytes;
        const float w = psw ? psw[i] : 1.0f;
        for (int d = 0; d < D; ++d) {
          float v;
          switch (c.dtype) {
            case DD_FP32: std::memcpy(&v, row + 4 * d, 4); break;
            case DD_FP16: { uint16_t h; std::memcpy(&h, row + 2 * d, 2); v = half_bits_to_float(h); break; }
            case DD_BF16: { uint16_t h; std::memcpy(&h, row + 2 * d, 2); v = bf16_bits_to_float(h); break; }
            default: {
              float sb[2];
              std::memcpy(sb, row + D, 8);
              v = std::fma(sb[0], (float)row[d], sb[1]);
            }
          }
          acc[d] = psw ? std::fma(w, v, acc[d]) : acc[d] + v;
        }
      }
      const int64_t n = end - start;
      const int64_t out_base = b * (int64_t)T * D + (int64_t)t * D;
      for (int d = 0; d < D; ++d) {
        float r = acc[d];
        if (c.mode == DD_MEAN) r = n > 0 ? r / (float)n : 0.0f;
        switch (c.out_dtype) {
          case DD_FP32: static_cast<float*>(output)[out_base + d] = r; break;
          case DD_FP16: static_cast<uint16_t*>(output)[out_base + d] = float_to_half_bits(r); break;
          default: static_cast<uint16_t*>(output)[out_base + d] = float_to_bf16_bits(r); break;
        }
      }
    }
  }
  return DD_OK;
}

}  // namespace

// Checks shared by both forwards: config, shapes, weighted/mean combination.
int check_call(const dd_config* cfg, const void* weights, const void* indices, const void* offsets, const float* psw,
               int64_t num_indices, int64_t num_offsets, const void* output, int64_t* batch, char* msg, size_t len) {
  if (!cfg) return fail(DD_ERR_CONFIG, msg, len, "config is NULL");
  int rc = dd_config_validate(cfg, msg, len);
  if (rc) return rc;
  if (num_indices < 0) return fail(DD_ERR_INPUT, msg, len, "number of indices is negative (%" PRId64 ")", num_indices);
  *batch = dd_batch_size(cfg, num_offsets, msg, len);
  if (*batch < 0) return DD_ERR_INPUT;
  if (psw && cfg->mode != DD_SUM)
    return fail(DD_ERR_INPUT, msg, len, "per_sample_weights are only supported with mode=sum (as in PyTorch)");
  if (*batch > 0 && (!weights || !offsets || !output)) return fail(DD_ERR_INPUT, msg, len, "NULL weights, offsets or output");
  if (num_indices > 0 && !indices) return fail(DD_ERR_INPUT, msg, len, "NULL indices with %" PRId64 " indices", num_indices);
  return DD_OK;
}

}  // namespace dd

extern "C" int dd_forward_cpu(const dd_config* cfg, const void* weights, const void* indices, const void* offsets,
                              const float* psw, int64_t num_indices, int64_t num_offsets, void* output, char* msg,
                              size_t len) {
  int64_t batch = 0;
  int rc = dd::check_call(cfg, weights, indices, offsets, psw, num_indices, num_offsets, output, &batch, msg, len);
  if (rc) return rc;
  const auto* w = static_cast<const uint8_t*>(weights);
  if (cfg->index_type == DD_INT32)
    return dd::forward_cpu(*cfg, w, static_cast<const int32_t*>(indices), static_cast<const int32_t*>(offsets), psw,
                           num_indices, num_offsets, batch, output, msg, len);
  return dd::forward_cpu(*cfg, w, static_cast<const int64_t*>(indices), static_cast<const int64_t*>(offsets), psw,
                         num_indices, num_offsets, batch, output, msg, len);
}
