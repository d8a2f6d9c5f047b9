// Attribute parsing, validation and shape helpers of the op contract: the only attribute parser of
// the project (the ORT op and the TensorRT plugin feed their attributes/fields through it).
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "dlrm_deploy/embedding_bag.h"
#include "internal.h"

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
// A name table: the accepted names of a string attribute (or of index_type), in enum value order.
struct NameTable {
  const char* kind;
  const char* const* names;
  int count;
};
// One attribute as the parser sees it: where it lives in dd_config and what it accepts.
struct FieldSpec {
  const char* name;
  int32_t kind;     // dd_field_kind
  size_t offset;    // of the member in dd_config
  int32_t bytes;    // 4 or 8 (int32_t or int64_t members)
  int64_t min, max; // inclusive range (DD_KIND_INTS: of each entry)
  const int64_t* values;  // when not every value in range is accepted
  int32_t num_values;
};

#include "contract_fields.inc"

const NameTable* find_table(const char* kind) {
  for (const auto& t : kNameTables)
    if (std::strcmp(t.kind, kind) == 0) return &t;
  return nullptr;
}

const FieldSpec* find_spec(const char* name, int32_t kind) {
  for (const auto& f : kSpecs)
    if (f.kind == kind && std::strcmp(f.name, name) == 0) return &f;
  return nullptr;
}

std::string choices(const NameTable* t) {
  std::string s;
  for (int i = 0; i < t->count; ++i) s += (i ? "|" : "") + std::string(t->names[i]);
  return s;
}

// The range check of one integer attribute, shared by the setters and dd_config_validate.
int check_int(const FieldSpec& f, int64_t v, char* msg, size_t len) {
  if (f.values) {
    std::string allowed;
    for (int i = 0; i < f.num_values; ++i) {
      if (f.values[i] == v) return DD_OK;
      allowed += (i ? "|" : "") + std::to_string(f.values[i]);
    }
    return fail(DD_ERR_CONFIG, msg, len, "%s must be one of %s, got %lld", f.name, allowed.c_str(), (long long)v);
  }
  if (v >= f.min && v <= f.max) return DD_OK;
  if (f.min == 0 && f.max == 1) return fail(DD_ERR_CONFIG, msg, len, "%s must be 0 or 1, got %lld", f.name, (long long)v);
  if (f.max == INT64_MAX)
    return fail(DD_ERR_CONFIG, msg, len, "%s must be >= %lld, got %lld", f.name, (long long)f.min, (long long)v);
  return fail(DD_ERR_CONFIG, msg, len, "%s must be in %lld..%lld, got %lld", f.name, (long long)f.min,
              (long long)f.max, (long long)v);
}

int64_t get_member(const dd_config* c, const FieldSpec& f) {
  const char* p = reinterpret_cast<const char*>(c) + f.offset;
  if (f.bytes == 8) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return v;
  }
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void set_member(dd_config* c, const FieldSpec& f, int64_t v) {
  char* p = reinterpret_cast<char*>(c) + f.offset;
  if (f.bytes == 8) {
    std::memcpy(p, &v, 8);
  } else {
    const int32_t v32 = (int32_t)v;
    std::memcpy(p, &v32, 4);
  }
}
}  // namespace

RowLayout row_layout(const dd_config& c) {
  const int64_t row_bytes = dd_row_bytes(&c);
  if (c.split_scales) return {c.dim, dd_total_rows(&c) * c.dim, 8};
  if (c.dtype == DD_INT4) return {row_bytes, c.dim / 2, row_bytes};
  return {row_bytes, c.dtype == DD_INT8 ? c.dim : 0, row_bytes};
}

}  // namespace dd

using dd::fail;

extern "C" {

const char* dd_version(void) { return DD_VERSION_STRING; }  // from dlrm_deploy/__init__.py via CMake

const dd_field* dd_fields(int32_t* count) {
  if (count) *count = (int32_t)(sizeof(dd::kFields) / sizeof(dd::kFields[0]));
  return dd::kFields;
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
  for (const auto& f : dd::kFields) {  // the contract's defaults (required fields stay 0)
    if (!f.default_value[0]) continue;
    if (f.kind == DD_KIND_INT) dd_config_set_int(cfg, f.name, std::strtoll(f.default_value, nullptr, 10), nullptr, 0);
    else if (f.kind == DD_KIND_STRING) dd_config_set_string(cfg, f.name, f.default_value, nullptr, 0);
  }
  cfg->index_type = DD_INT64;  // not an attribute: the adapters set it from the indices' type
}

int dd_config_set_int(dd_config* cfg, const char* name, int64_t v, char* msg, size_t len) {
  const dd::FieldSpec* f = dd::find_spec(name, DD_KIND_INT);
  if (!f) return fail(DD_ERR_CONFIG, msg, len, "unknown integer attribute '%s'", name);
  int rc = dd::check_int(*f, v, msg, len);
  if (rc) return rc;
  dd::set_member(cfg, *f, v);
  return DD_OK;
}

int dd_config_set_string(dd_config* cfg, const char* name, const char* value, char* msg, size_t len) {
  const dd::FieldSpec* f = dd::find_spec(name, DD_KIND_STRING);
  const dd::NameTable* t = dd::find_table(name);
  if (!t || !f) return fail(DD_ERR_CONFIG, msg, len, "unknown string attribute '%s'", name);
  int v = dd_parse_name(name, value);
  if (v < 0)
    return fail(DD_ERR_CONFIG, msg, len, "attribute %s='%s' is not one of %s", name, value ? value : "(null)",
                dd::choices(t).c_str());
  dd::set_member(cfg, *f, v);
  return DD_OK;
}

int dd_config_set_ints(dd_config* cfg, const char* name, const int64_t* values, int64_t n, char* msg, size_t len) {
  const dd::FieldSpec* f = dd::find_spec(name, DD_KIND_INTS);
  if (!f) return fail(DD_ERR_CONFIG, msg, len, "unknown list attribute '%s'", name);
  // table_rows is the one list attribute: its length is num_tables.
  if (n < 1 || n > DD_MAX_TABLES)
    return fail(DD_ERR_CONFIG, msg, len, "table_rows must list 1..%d tables, got %lld", DD_MAX_TABLES, (long long)n);
  for (int64_t t = 0; t < n; ++t) {
    if (values[t] < f->min || values[t] > f->max)
      return fail(DD_ERR_CONFIG, msg, len, "table_rows[%lld] = %lld must be positive", (long long)t,
                  (long long)values[t]);
    cfg->table_rows[t] = values[t];
  }
  cfg->num_tables = (int32_t)n;
  return DD_OK;
}

int dd_config_validate(const dd_config* c, char* msg, size_t len) {
  if (c->num_tables < 1 || c->num_tables > DD_MAX_TABLES)
    return fail(DD_ERR_CONFIG, msg, len, "num_tables must be in 1..%d (set table_rows), got %d", DD_MAX_TABLES, c->num_tables);
  for (const auto& f : dd::kSpecs) {  // every member in its contract range, however it was set
    const int64_t v = dd::get_member(c, f);
    if (f.kind == DD_KIND_INT) {
      int rc = dd::check_int(f, v, msg, len);
      if (rc) return rc;
    } else if (f.kind == DD_KIND_STRING) {
      const dd::NameTable* t = dd::find_table(f.name);
      if (v < 0 || v >= t->count)
        return fail(DD_ERR_CONFIG, msg, len, "bad %s %lld (%s)", f.name, (long long)v, dd::choices(t).c_str());
    }
  }
  if (c->index_type != DD_INT32 && c->index_type != DD_INT64) return fail(DD_ERR_CONFIG, msg, len, "bad index_type %d", c->index_type);
  if (c->dtype == DD_INT8 && c->dim % 4 != 0)
    return fail(DD_ERR_CONFIG, msg, len, "int8 row-wise tables need dim divisible by 4 (got %d)", c->dim);
  if (c->dtype == DD_INT4 && c->dim % 8 != 0)
    return fail(DD_ERR_CONFIG, msg, len, "int4 row-wise tables need dim divisible by 8 (got %d)", c->dim);
  if (c->split_scales && c->dtype != DD_INT8)
    return fail(DD_ERR_CONFIG, msg, len, "split_scales=1 needs int8 tables (dtype is %s)", dd_name("dtype", c->dtype));
  if (c->split_scales && c->dim % 8 != 0)
    return fail(DD_ERR_CONFIG, msg, len, "split_scales=1 needs dim divisible by 8 (got %d)", c->dim);
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

int dd_config_parse(dd_config* cfg, dd_attribute_getter get, void* ctx, int32_t index_type, char* msg, size_t len) {
  static const char* const kKinds[] = {"int", "string", "ints"};
  dd_config_init(cfg);
  for (const auto& f : dd::kFields) {
    dd_attribute a;
    std::memset(&a, 0, sizeof(a));
    int rc = get(ctx, &f, &a);
    if (rc != DD_OK) return fail(rc, msg, len, "attribute '%s' could not be read", f.name);
    if (!a.present) {
      if (!f.default_value[0])
        return fail(DD_ERR_CONFIG, msg, len, "attribute '%s' (%s) is required: %s", f.name, kKinds[f.kind], f.doc);
      continue;  // dd_config_init holds the contract's default
    }
    if (a.kind != f.kind) {
      const char* got = a.kind >= 0 && a.kind <= DD_KIND_INTS ? kKinds[a.kind] : (a.type_name ? a.type_name : "?");
      return fail(DD_ERR_CONFIG, msg, len, "attribute '%s' must be of type %s, got %s", f.name, kKinds[f.kind], got);
    }
    if (f.kind == DD_KIND_INT) rc = dd_config_set_int(cfg, f.name, a.i, msg, len);
    else if (f.kind == DD_KIND_STRING) rc = dd_config_set_string(cfg, f.name, a.s ? a.s : "", msg, len);
    else rc = dd_config_set_ints(cfg, f.name, a.ints, a.n, msg, len);
    if (rc != DD_OK) return rc;
  }
  cfg->index_type = index_type;
  return dd_config_validate(cfg, msg, len);
}

int dd_config_get(const dd_config* cfg, const char* name, dd_attribute* out, char* msg, size_t len) {
  std::memset(out, 0, sizeof(*out));
  for (const auto& f : dd::kSpecs) {
    if (std::strcmp(f.name, name) != 0) continue;
    out->present = 1;
    out->kind = f.kind;
    if (f.kind == DD_KIND_INTS) {  // table_rows: num_tables entries
      out->ints = cfg->table_rows;
      out->n = cfg->num_tables;
    } else if (f.kind == DD_KIND_STRING) {
      out->s = dd_name(f.name, (int)dd::get_member(cfg, f));
    } else {
      out->i = dd::get_member(cfg, f);
    }
    return DD_OK;
  }
  return fail(DD_ERR_CONFIG, msg, len, "unknown attribute '%s'", name);
}

int dd_check_weights_shape(const dd_config* c, int32_t rank, const int64_t* dims, char* msg, size_t len) {
  const int64_t rows = dd_total_rows(c);
  const bool rowwise = c->dtype == DD_INT8 || c->dtype == DD_INT4;
  const int64_t cols = rowwise ? dd_row_bytes(c) : c->dim;
  const bool ok = rank == 2 && (dims[0] < 0 || dims[0] == rows) && (dims[1] < 0 || dims[1] == cols);
  if (ok) return DD_OK;
  std::string shape = "[";
  for (int32_t i = 0; i < rank; ++i) shape += (i ? ", " : "") + std::to_string(dims[i]);
  return fail(DD_ERR_INPUT, msg, len, "weights have shape %s]; expected [%lld, %lld] (sum of table_rows, %s)",
              shape.c_str(), (long long)rows, (long long)cols,
              rowwise ? (c->split_scales ? "dim + 8: int8 codes, then scales and biases (split_scales=1)"
                         : c->dtype == DD_INT8 ? "row bytes of int8 row-wise rows" : "row bytes of int4 row-wise rows")
                      : "dim");
}

int dd_uses_l2(const dd_config* c) {
  return c->pinned_rows > 0 && (c->variant == DD_AUTO || c->variant == DD_L2PIN || c->variant == DD_COMBINED);
}

int64_t dd_row_bytes(const dd_config* c) {
  switch (c->dtype) {
    case DD_FP32: return 4LL * c->dim;
    case DD_FP16:
    case DD_BF16: return 2LL * c->dim;
    case DD_INT4: return ((int64_t)c->dim / 2 + 8 + 15) / 16 * 16;
    default: return c->split_scales ? (int64_t)c->dim + 8 : ((int64_t)c->dim + 8 + 15) / 16 * 16;
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
