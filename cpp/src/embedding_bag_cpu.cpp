// CPU reference of the op: the contract's semantics, sequential fp32 sums in index order. The CUDA
// kernels reproduce this order (bit-exact) wherever one thread group walks a whole bag, and the
// fast CPU forward (embedding_bag_cpu_fast.cpp, behind dd_forward_cpu) everywhere.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "int4_rows.h"
#include "internal.h"

namespace dd {

namespace {
// "indices 'name'" / "offsets of table t" for messages.
std::string tensor_label(const char* kind, const char* name, int table) {
  char buf[DD_MSG_LEN];
  if (name && *name) snprintf(buf, sizeof(buf), "%s '%s'", kind, name);
  else snprintf(buf, sizeof(buf), "%s of table %d", kind, table);
  return buf;
}
}  // namespace

std::string error_message(const ErrorRecord& e, const dd_table_lookups* tables) {
  const bool named = tables != nullptr && e.table >= 0 && e.table < DD_MAX_TABLES;
  const std::string idx = tensor_label("indices", named ? tables[e.table].indices_name : nullptr, e.table);
  const std::string off = tensor_label("offsets", named ? tables[e.table].offsets_name : nullptr, e.table);
  char buf[DD_MSG_LEN];
  switch (e.code) {
    case kIndexOutOfRange:
      snprintf(buf, sizeof(buf), "index %" PRId64 " at position %" PRId64 " of %s is out of range for table %d with %" PRId64 " rows",
               e.value, e.position, idx.c_str(), e.table, e.limit);
      break;
    case kOffsetDecreasing:
      snprintf(buf, sizeof(buf), "offsets must be non-decreasing: bag %" PRId64 " of %s ends at %" PRId64 " before it starts",
               e.position, off.c_str(), e.value);
      break;
    case kOffsetPastEnd:
      snprintf(buf, sizeof(buf), "offset %" PRId64 " of bag %" PRId64 " of %s is past the end of its indices (%" PRId64 " ids)",
               e.value, e.position, off.c_str(), e.limit);
      break;
    case kOffsetNegative:
      snprintf(buf, sizeof(buf), "offset %" PRId64 " of bag %" PRId64 " of %s is negative", e.value, e.position, off.c_str());
      break;
    case kFirstOffsetNotZero:
      snprintf(buf, sizeof(buf), "the first offset of %s is %" PRId64 "; it must be 0 (as in PyTorch)", off.c_str(), e.value);
      break;
    default:
      snprintf(buf, sizeof(buf), "no error");
  }
  return buf;
}

namespace {

template <typename IdxT>
int forward_cpu(const dd_config& c, const uint8_t* weights, const Lookups& v, void* output,
                const dd_table_lookups* names, char* msg, size_t len) {
  Tables tab;
  make_tables(c, &tab);
  const int T = c.num_tables, D = c.dim;
  const RowLayout lay = row_layout(c);
  const int64_t batch = v.batch;
  std::vector<float> acc(D);
  for (int t = 0; t < T; ++t) {
    const TableIO& io = v.io[t];
    const IdxT* indices = static_cast<const IdxT*>(io.idx);
    for (int64_t b = 0; b < batch; ++b) {
      int64_t start, end;
      ErrorRecord e{};
      e.table = t;
      e.position = v.packed ? (int64_t)t * batch + b : b;
      e.limit = io.num_idx;
      e.code = bag_bounds<IdxT>(io, b, !v.packed || t == 0, &start, &end, &e.value);
      if (e.code) return fail(DD_ERR_INPUT, msg, len, "%s", error_message(e, names).c_str());
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t i = start; i < end; ++i) {
        const int64_t id = (int64_t)indices[i];
        if (id < 0 || id >= c.table_rows[t]) {
          ErrorRecord ie{kIndexOutOfRange, t, i, id, c.table_rows[t]};
          return fail(DD_ERR_INPUT, msg, len, "%s", error_message(ie, names).c_str());
        }
        const int64_t g = global_row(tab, t, id);
        const uint8_t* row = weights + g * lay.stride;
        const uint8_t* sbp = weights + lay.sb_offset + g * lay.sb_stride;
        const float w = io.psw ? io.psw[i] : 1.0f;
        for (int d = 0; d < D; ++d) {
          float x;
          switch (c.dtype) {
            case DD_FP32: std::memcpy(&x, row + 4 * d, 4); break;
            case DD_FP16: { uint16_t h; std::memcpy(&h, row + 2 * d, 2); x = half_bits_to_float(h); break; }
            case DD_BF16: { uint16_t h; std::memcpy(&h, row + 2 * d, 2); x = bf16_bits_to_float(h); break; }
            case DD_INT4: {
              float scale, bias;
              int4_scale_bias(row, D, &scale, &bias);
              x = int4_element(row, d, scale, bias);
              break;
            }
            default: {
              float sb[2];
              std::memcpy(sb, sbp, 8);
              x = std::fma(sb[0], (float)row[d], sb[1]);
            }
          }
          acc[d] = io.psw ? std::fma(w, x, acc[d]) : acc[d] + x;
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

int forward_cpu_view(const dd_config& c, const void* weights, const Lookups& v, void* output,
                     const dd_table_lookups* names, char* msg, size_t len) {
  const auto* w = static_cast<const uint8_t*>(weights);
  if (c.index_type == DD_INT32) return forward_cpu<int32_t>(c, w, v, output, names, msg, len);
  return forward_cpu<int64_t>(c, w, v, output, names, msg, len);
}

}  // namespace

// int4 tables in a forward that does not decode them (the fast CPU forward, for now): a clear
// refusal instead of reading the rows as another dtype.
int refuse_int4(const dd_config* cfg, bool int4_ok, char* msg, size_t len) {
  if (int4_ok || cfg->dtype != DD_INT4) return DD_OK;
  return fail(DD_ERR_UNSUPPORTED, msg, len,
              "int4 tables are not supported by the multi-threaded CPU forward (dd_forward_cpu*, "
              "dd_forward_tables_cpu*) yet: use dd_forward_cpu_reference / dd_forward_tables_cpu_reference or the CUDA "
              "forward");
}

// Checks shared by every forward: config, shapes, weighted/mean combination.
int check_call(const dd_config* cfg, const void* weights, const void* indices, const void* offsets, const float* psw,
               int64_t num_indices, int64_t num_offsets, const void* output, Lookups* view, char* msg, size_t len,
               bool int4_ok) {
  if (!cfg) return fail(DD_ERR_CONFIG, msg, len, "config is NULL");
  int rc = dd_config_validate(cfg, msg, len);
  if (rc) return rc;
  rc = refuse_int4(cfg, int4_ok, msg, len);
  if (rc) return rc;
  if (num_indices < 0) return fail(DD_ERR_INPUT, msg, len, "number of indices is negative (%" PRId64 ")", num_indices);
  const int64_t batch = dd_batch_size(cfg, num_offsets, msg, len);
  if (batch < 0) return DD_ERR_INPUT;
  if (psw && cfg->mode != DD_SUM)
    return fail(DD_ERR_INPUT, msg, len, "per_sample_weights are only supported with mode=sum (as in PyTorch)");
  if (batch > 0 && (!weights || !offsets || !output)) return fail(DD_ERR_INPUT, msg, len, "NULL weights, offsets or output");
  if (num_indices > 0 && !indices) return fail(DD_ERR_INPUT, msg, len, "NULL indices with %" PRId64 " indices", num_indices);
  view->batch = batch;
  view->packed = 1;
  const size_t esize = cfg->index_type == DD_INT32 ? 4 : 8;
  for (int t = 0; t < cfg->num_tables; ++t) {
    TableIO& io = view->io[t];
    io.idx = indices;
    io.off = offsets ? static_cast<const char*>(offsets) + (size_t)t * batch * esize : nullptr;
    io.psw = psw;
    io.num_idx = num_indices;
    io.num_off = num_offsets - (int64_t)t * batch;
  }
  return DD_OK;
}

int check_tables_call(const dd_config* cfg, const void* weights, const dd_table_lookups* tables, const void* output,
                      Lookups* view, char* msg, size_t len, bool int4_ok) {
  if (!cfg) return fail(DD_ERR_CONFIG, msg, len, "config is NULL");
  int rc = dd_config_validate(cfg, msg, len);
  if (rc) return rc;
  rc = refuse_int4(cfg, int4_ok, msg, len);
  if (rc) return rc;
  if (!tables) return fail(DD_ERR_INPUT, msg, len, "NULL table lookups");
  const int64_t ilo = cfg->include_last_offset ? 1 : 0;
  view->packed = 0;
  view->batch = -1;
  for (int t = 0; t < cfg->num_tables; ++t) {
    const dd_table_lookups& in = tables[t];
    const std::string off = tensor_label("offsets", in.offsets_name, t);
    const std::string idx = tensor_label("indices", in.indices_name, t);
    if (in.num_indices < 0) return fail(DD_ERR_INPUT, msg, len, "%s: negative length", idx.c_str());
    const int64_t bags = in.num_offsets - ilo;
    if (bags < 0)
      return fail(DD_ERR_INPUT, msg, len, "%s is empty; include_last_offset=1 needs batch + 1 entries", off.c_str());
    if (view->batch >= 0 && bags != view->batch)
      return fail(DD_ERR_INPUT, msg, len, "%s holds %" PRId64 " bags but the first table %" PRId64
                  ": every table needs one bag per sample", off.c_str(), bags, view->batch);
    view->batch = bags;
    if (in.per_sample_weights && cfg->mode != DD_SUM)
      return fail(DD_ERR_INPUT, msg, len, "per_sample_weights are only supported with mode=sum (as in PyTorch)");
    if (bags > 0 && !in.offsets) return fail(DD_ERR_INPUT, msg, len, "%s: NULL pointer", off.c_str());
    if (in.num_indices > 0 && !in.indices) return fail(DD_ERR_INPUT, msg, len, "%s: NULL pointer", idx.c_str());
    view->io[t] = TableIO{in.indices, in.offsets, in.per_sample_weights, in.num_indices, in.num_offsets};
  }
  if (view->batch > 0 && (!weights || !output)) return fail(DD_ERR_INPUT, msg, len, "NULL weights or output");
  return DD_OK;
}

}  // namespace dd

extern "C" int dd_forward_cpu_reference(const dd_config* cfg, const void* weights, const void* indices, const void* offsets,
                              const float* psw, int64_t num_indices, int64_t num_offsets, void* output, char* msg,
                              size_t len) {
  auto view = std::make_unique<dd::Lookups>();
  int rc = dd::check_call(cfg, weights, indices, offsets, psw, num_indices, num_offsets, output, view.get(), msg, len,
                          /*int4_ok=*/true);
  if (rc) return rc;
  return dd::forward_cpu_view(*cfg, weights, *view, output, nullptr, msg, len);
}

extern "C" int dd_forward_tables_cpu_reference(const dd_config* cfg, const void* weights, const dd_table_lookups* tables,
                                     void* output, char* msg, size_t len) {
  auto view = std::make_unique<dd::Lookups>();
  int rc = dd::check_tables_call(cfg, weights, tables, output, view.get(), msg, len, /*int4_ok=*/true);
  if (rc) return rc;
  return dd::forward_cpu_view(*cfg, weights, *view, output, tables, msg, len);
}
