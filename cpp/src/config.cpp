// Attribute parsing, validation and shape helpers of the op contract: the only attribute parser of
// the project (the ORT op and the TensorRT plugin feed their attributes/fields through it).
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "dlrm_deploy/embedding_bag.h"
#include "internal.h"

#include "contract_fields.inc"

namespace dd {

int fail(int code, char* msg, size_t len, const char* fmt, ...) {
  if (msg && len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
  }
  return code;
}

namespace {
struct NameTable {
  const char* kind;
  const char* const* names;
  int count;
};
const char* const kDtypes[] = {"fp32", "fp16", "bf16", "int8"};
const char* const kModes[] = {"sum", "mean"};
const char* const kIndexTypes[] = {"int32", "int64"};
const char* const kVariants[] = {"auto", "baseline", "occupancy", "prefetch", "l2pin", "combined"};
const char* const kChecks[] = {"unchecked", "checked", "deferred"};
const NameTable kTables[] = {{"dtype", kDtypes, 4},        {"out_dtype", kDtypes, 3}, {"mode", kModes, 2},
                             {"index_type", kIndexTypes, 2}, {"variant", kVariants, 6}, {"check", kChecks, 3}};

const NameTable* find_table(const char* kind) {
  for (const auto& t : kTables)
    if (std::strcmp(t.kind, kind) == 0) return &t;
  return nullptr;
}

std::string choices(const NameTable* t) {
  std::string s;
  for (int i = 0; i < t->count; ++i) s += (i ? "|" : "") + std::string(t->names[i]);
  return s;
}
}  // namespace

}  // namespace dd

using dd::fail;

extern "C" {

const char* dd_version(void) { return DD_VERSION_STRING; }  // from dlrm_deploy/__init__.py via CMake

const dd_field* dd_fields(int32_t* count) {
  if (count) *count = (int32_t)(sizeof(kFields) / sizeof(kFields[0]));
  return kFields;
}

int dd_parse_name(const char* kind, const char* name) {
  const dd::NameTable* t = dd::find_table(kind);
  if (!t || !name) return -1;
  for (int i = 0; i < t->count; ++i)
    if (std::strcmp(t->names[i], name) == 0) return i;
  return -1;
}

const char* dd_name(const char* kind, int value) {
  const dd::NameTable* t = dd::find_table(kind);
  if (!t || value < 0 || value >= t->count) return "?";
  return t->names[value];
}

void dd_config_init(dd_config* cfg) {
  std::memset(cfg, 0, sizeof(*cfg));
  cfg->dtype = DD_FP32;
  cfg->out_dtype = DD_FP32;
  cfg->mode = DD_SUM;
  cfg->index_type = DD_INT64;
  cfg->variant = DD_AUTO;
  cfg->check = DD_CHECKED;
}

int dd_config_set_int(dd_config* cfg, const char* name, int64_t v, char* msg, size_t len) {
  if (!std::strcmp(name, "dim")) {
    if (v <= 0 || v > (1 << 20)) return fail(DD_ERR_CONFIG, msg, len, "dim must be in 1..1048576, got %lld", (long long)v);
    cfg->dim = (int32_t)v;
  } else if (!std::strcmp(name, "include_last_offset")) {
    if (v != 0 && v != 1) return fail(DD_ERR_CONFIG, msg, len, "include_last_offset must be 0 or 1, got %lld", (long long)v);
    cfg->include_last_offset = (int32_t)v;
  } else if (!std::strcmp(name, "prefetch_distance")) {
    if (v < 0 || v > 64) return fail(DD_ERR_CONFIG, msg, len, "prefetch_distance must be in 0..64, got %lld", (long long)v);
    cfg->prefetch_distance = (int32_t)v;
  } else if (!std::strcmp(name, "pinned_rows")) {
    if (v < 0) return fail(DD_ERR_CONFIG, msg, len, "pinned_rows must be >= 0, got %lld", (long long)v);
    cfg->pinned_rows = v;
  } else if (!std::strcmp(name, "overlap")) {
    if (v != 0 && v != 1) return fail(DD_ERR_CONFIG, msg, len, "overlap must be 0 or 1, got %lld", (long long)v);
    cfg->overlap = (int32_t)v;
  } else if (!std::strcmp(name, "hot_first")) {
    if (v != 0 && v != 1) return fail(DD_ERR_CONFIG, msg, len, "hot_first must be 0 or 1, got %lld", (long long)v);
    cfg->hot_first = (int32_t)v;
  } else {
    return fail(DD_ERR_CONFIG, msg, len, "unknown integer attribute '%s'", name);
  }
  return DD_OK;
}

int dd_config_set_string(dd_config* cfg, const char* name, const char* value, char* msg, size_t len) {
  const dd::NameTable* t = dd::find_table(name);
  int32_t* dst = nullptr;
  if (!std::strcmp(name, "dtype")) dst = &cfg->dtype;
  else if (!std::strcmp(name, "out_dtype")) dst = &cfg->out_dtype;
  else if (!std::strcmp(name, "mode")) dst = &cfg->mode;
  else if (!std::strcmp(name, "variant")) dst = &cfg->variant;
  else if (!std::strcmp(name, "check")) dst = &cfg->check;
  if (!t || !dst) return fail(DD_ERR_CONFIG, msg, len, "unknown string attribute '%s'", name);
  int v = dd_parse_name(name, value);
  if (v < 0)
    return fail(DD_ERR_CONFIG, msg, len, "attribute %s='%s' is not one of %s", name, value ? value : "(null)",
                dd::choices(t).c_str());
  *dst = v;
  return DD_OK;
}

int dd_config_set_ints(dd_config* cfg, const char* name, const int64_t* values, int64_t n, char* msg, size_t len) {
  if (std::strcmp(name, "table_rows") != 0) return fail(DD_ERR_CONFIG, msg, len, "unknown list attribute '%s'", name);
  if (n < 1 || n > DD_MAX_TABLES)
    return fail(DD_ERR_CONFIG, msg, len, "table_rows must list 1..%d tables, got %lld", DD_MAX_TABLES, (long long)n);
  for (int64_t t = 0; t < n; ++t) {
    if (values[t] <= 0) return fail(DD_ERR_CONFIG, msg, len, "table_rows[%lld] = %lld must be positive", (long long)t, (long long)values[t]);
    cfg->table_rows[t] = values[t];
  }
  cfg->num_tables = (int32_t)n;
  return DD_OK;
}

int dd_config_validate(const dd_config* c, char* msg, size_t len) {
  if (c->num_tables < 1 || c->num_tables > DD_MAX_TABLES)
    return fail(DD_ERR_CONFIG, msg, len, "num_tables must be in 1..%d (set table_rows), got %d", DD_MAX_TABLES, c->num_tables);
  if (c->dim < 1) return fail(DD_ERR_CONFIG, msg, len, "dim must be positive (got %d)", c->dim);
  if (c->dtype < 0 || c->dtype > DD_INT8) return fail(DD_ERR_CONFIG, msg, len, "bad dtype %d", c->dtype);
  if (c->out_dtype < 0 || c->out_dtype > DD_BF16) return fail(DD_ERR_CONFIG, msg, len, "bad out_dtype %d (fp32|fp16|bf16)", c->out_dtype);
  if (c->mode != DD_SUM && c->mode != DD_MEAN) return fail(DD_ERR_CONFIG, msg, len, "bad mode %d", c->mode);
  if (c->index_type != DD_INT32 && c->index_type != DD_INT64) return fail(DD_ERR_CONFIG, msg, len, "bad index_type %d", c->index_type);
  if (c->variant < 0 || c->variant >= DD_NUM_VARIANTS) return fail(DD_ERR_CONFIG, msg, len, "bad variant %d", c->variant);
  if (c->check < DD_UNCHECKED || c->check > DD_DEFERRED) return fail(DD_ERR_CONFIG, msg, len, "bad check mode %d", c->check);
  if (c->dtype == DD_INT8 && c->dim % 4 != 0)
    return fail(DD_ERR_CONFIG, msg, len, "int8 row-wise tables need dim divisible by 4 (got %d)", c->dim);
  for (int t = 0; t < c->num_tables; ++t)
    if (c->table_rows[t] <= 0) return fail(DD_ERR_CONFIG, msg, len, "table_rows[%d] must be positive", t);
  if (c->hot_first) {
    for (int t = 0; t < c->num_tables; ++t)
      if (c->pinned_rows > c->table_rows[t])
        return fail(DD_ERR_CONFIG, msg, len, "hot_first: pinned_rows %lld exceeds table %d's %lld rows",
                    (long long)c->pinned_rows, t, (long long)c->table_rows[t]);
  }
  return DD_OK;
}

int64_t dd_row_bytes(const dd_config* c) {
  switch (c->dtype) {
    case DD_FP32: return 4LL * c->dim;
    case DD_FP16:
    case DD_BF16: return 2LL * c->dim;
    default: return ((int64_t)c->dim + 8 + 15) / 16 * 16;
  }
}

int64_t dd_total_rows(const dd_config* c) {
  int64_t n = 0;
  for (int t = 0; t < c->num_tables; ++t) n += c->table_rows[t];
  return n;
}

int64_t dd_batch_size(const dd_config* c, int64_t num_offsets, char* msg, size_t len) {
  int64_t bags = num_offsets - (c->include_last_offset ? 1 : 0);
  if (bags < 0 || bags % c->num_tables != 0) {
    fail(DD_ERR_INPUT, msg, len,
         "offsets has %lld entries; expected num_tables(%d) * batch%s", (long long)num_offsets, c->num_tables,
         c->include_last_offset ? " + 1 (include_last_offset=1)" : "");
    return -1;
  }
  return bags / c->num_tables;
}

size_t dd_workspace_size(const dd_config*) { return sizeof(dd::ErrorRecord); }

int dd_format_error(const dd_error_record* rec, char* msg, size_t len) {
  if (!rec || rec->code == dd::kNoError) {
    if (msg && len) msg[0] = 0;
    return DD_OK;
  }
  return fail(DD_ERR_INPUT, msg, len, "%s", dd::error_message(*rec).c_str());
}

int dd_format_error_tables(const dd_error_record* rec, const dd_table_lookups* tables, char* msg, size_t len) {
  if (!rec || rec->code == dd::kNoError) {
    if (msg && len) msg[0] = 0;
    return DD_OK;
  }
  return fail(DD_ERR_INPUT, msg, len, "%s", dd::error_message(*rec, tables).c_str());
}

void dd_op_identity(const char** domain, const char** op_type, const char** version) {
  if (domain) *domain = DD_OP_DOMAIN;
  if (op_type) *op_type = DD_OP_TYPE;
  if (version) *version = DD_OP_VERSION;
}

}  // extern "C"
