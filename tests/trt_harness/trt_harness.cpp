// Drives libdlrm_deploy_trt.so the way TensorRT does, without TensorRT: dlopen, setLoggerFinder,
// getCreators -> creator -> createPlugin(fields as the ONNX parser passes them) -> clone ->
// configurePlugin -> getOutputDataTypes/getOutputShapes (with an expression builder of our own) ->
// getWorkspaceSize -> onShapeChange -> enqueue on a CUDA stream -> getFieldsToSerialize ->
// createPlugin(serialized fields, runtime phase) -> attachToContext -> enqueue again. Every output
// is checked against the core's CPU reference (dd_forward_cpu for the packed form, dd_forward_tables_cpu
// for the per-table form); bad fields, types and shapes must fail cleanly, and bad indices and offsets
// must be logged (deferred check) without a synchronising enqueue.
//
//   dd_trt_harness [path/to/libdlrm_deploy_trt.so]      exit 0: pass, 1: failures
// Without a CUDA device only the host-side paths run (and the summary line says so).
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "dlrm_deploy/embedding_bag.h"
#include "internal.h"

using namespace nvinfer1;

namespace {

int g_failures = 0;
int g_checks = 0;
bool g_gpu = false;  // without a GPU only the host-side paths run (fields, types, shapes, serialization)

#define EXPECT(cond, ...)                                          \
  do {                                                             \
    ++g_checks;                                                    \
    if (!(cond)) {                                                 \
      ++g_failures;                                                \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
      std::printf(__VA_ARGS__);                                    \
      std::printf("\n");                                           \
    }                                                              \
  } while (0)

#define CUDA_OK(call)                                                                                 \
  do {                                                                                                \
    cudaError_t e_ = (call);                                                                          \
    if (e_ != cudaSuccess) {                                                                          \
      std::printf("FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));        \
      std::exit(1);                                                                                   \
    }                                                                                                 \
  } while (0)

// ---- logging: what the plugin reports through the logger TensorRT would hand over ----
class CaptureLogger : public ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (severity <= Severity::kERROR) errors_.emplace_back(msg);
    if (severity <= Severity::kWARNING || verbose_) std::printf("    [plugin %s] %s\n", name(severity), msg);
  }
  std::vector<std::string> take_errors() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(errors_, {});
  }
  bool verbose_ = false;

 private:
  static const char* name(Severity s) {
    return s <= Severity::kERROR ? "ERROR" : s == Severity::kWARNING ? "WARNING" : "INFO";
  }
  std::mutex mutex_;
  std::vector<std::string> errors_;
};

class Finder : public ILoggerFinder {
 public:
  explicit Finder(ILogger* logger) : logger_(logger) {}
  ILogger* findLogger() override { return logger_; }

 private:
  ILogger* logger_;
};

CaptureLogger g_logger;

bool logged(const std::vector<std::string>& errors, const char* needle) {
  for (const auto& e : errors)
    if (e.find(needle) != std::string::npos) return true;
  return false;
}

// ---- a tiny IExprBuilder: every expression carries its value; inputs are not build-time constants ----
class Expr : public IDimensionExpr {
 public:
  Expr(int64_t value, bool constant) : impl_(value, constant) { mImpl = &impl_; }
  ~Expr() noexcept override = default;
  int64_t value() const { return impl_.value; }

 private:
  struct Impl : apiv::VDimensionExpr {
    Impl(int64_t v, bool c) : value(v), constant(c) {}
    bool isConstant() const override { return constant; }
    int64_t getConstantValue() const override { return constant ? value : INT64_MIN; }
    bool isSizeTensor() const override { return false; }
    int64_t value;
    bool constant;
  } impl_;
};

class ExprBuilder : public IExprBuilder {
 public:
  ExprBuilder() : impl_(this) { mImpl = &impl_; }
  ~ExprBuilder() noexcept override = default;
  const Expr* make(int64_t v, bool constant) {
    exprs_.push_back(std::make_unique<Expr>(v, constant));
    return exprs_.back().get();
  }
  static int64_t value(const IDimensionExpr* e) { return static_cast<const Expr*>(e)->value(); }

 private:
  struct Impl : apiv::VExprBuilder {
    explicit Impl(ExprBuilder* owner) : b(owner) {}
    const IDimensionExpr* constant(int64_t v) override { return b->make(v, true); }
    const IDimensionExpr* operation(DimensionOperation op, const IDimensionExpr& x, const IDimensionExpr& y) override {
      const int64_t a = value(&x), c = value(&y);
      const bool k = x.isConstant() && y.isConstant();
      switch (op) {
        case DimensionOperation::kSUM: return b->make(a + c, k);
        case DimensionOperation::kPROD: return b->make(a * c, k);
        case DimensionOperation::kMAX: return b->make(a > c ? a : c, k);
        case DimensionOperation::kMIN: return b->make(a < c ? a : c, k);
        case DimensionOperation::kSUB: return b->make(a - c, k);
        case DimensionOperation::kEQUAL: return b->make(a == c, k);
        case DimensionOperation::kLESS: return b->make(a < c, k);
        case DimensionOperation::kFLOOR_DIV: return c ? b->make(a >= 0 ? a / c : -((-a + c - 1) / c), k) : nullptr;
        case DimensionOperation::kCEIL_DIV: return c ? b->make((a + c - 1) / c, k) : nullptr;
      }
      return nullptr;
    }
    const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&, const IDimensionExpr&) override {
      return nullptr;
    }
    ExprBuilder* b;
  } impl_;
  std::vector<std::unique_ptr<Expr>> exprs_;
};

class ResourceContext : public IPluginResourceContext {
 public:
  IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

// ---- fields as TensorRT's ONNX parser passes them: INT/INTS as int32, STRING as NUL-terminated kCHAR ----
struct Fields {
  std::vector<std::vector<int32_t>> ints;
  std::vector<std::string> strings;
  std::vector<std::string> names;
  std::vector<PluginField> fields;
  void add_int(const char* name, int64_t v) { add_ints(name, {v}); }
  void add_ints(const char* name, const std::vector<int64_t>& v) {
    ints.emplace_back(v.begin(), v.end());
    names.emplace_back(name);
    pending.push_back({names.size() - 1, 0, ints.size() - 1});
  }
  void add_string(const char* name, const std::string& s) {
    strings.push_back(s);
    names.emplace_back(name);
    pending.push_back({names.size() - 1, 1, strings.size() - 1});
  }
  void add_raw(const char* name, PluginFieldType type, const void* data, int32_t length) {
    names.emplace_back(name);
    raw.push_back({names.size() - 1, type, data, length});
  }
  PluginFieldCollection collection() {
    fields.clear();
    for (const auto& p : pending) {
      if (p.kind == 0)
        fields.emplace_back(names[p.name].c_str(), ints[p.index].data(), PluginFieldType::kINT32,
                            static_cast<int32_t>(ints[p.index].size()));
      else
        fields.emplace_back(names[p.name].c_str(), strings[p.index].c_str(), PluginFieldType::kCHAR,
                            static_cast<int32_t>(strings[p.index].size() + 1));
    }
    for (const auto& r : raw) fields.emplace_back(names[r.name].c_str(), r.data, r.type, r.length);
    return PluginFieldCollection{static_cast<int32_t>(fields.size()), fields.data()};
  }

 private:
  struct Pending { size_t name; int kind; size_t index; };
  struct Raw { size_t name; PluginFieldType type; const void* data; int32_t length; };
  std::vector<Pending> pending;
  std::vector<Raw> raw;
};

// A deep copy of a serialized collection (TensorRT writes it into the plan, then reads it back).
struct SavedFields {
  explicit SavedFields(const PluginFieldCollection* fc) {
    for (int32_t i = 0; i < fc->nbFields; ++i) {
      const PluginField& f = fc->fields[i];
      size_t elem = f.type == PluginFieldType::kCHAR ? 1 : f.type == PluginFieldType::kINT64 ? 8 : 4;
      names.emplace_back(f.name);
      data.emplace_back(static_cast<const char*>(f.data), static_cast<const char*>(f.data) + elem * f.length);
      types.push_back(f.type);
      lengths.push_back(f.length);
    }
    for (size_t i = 0; i < names.size(); ++i) fields.emplace_back(names[i].c_str(), data[i].data(), types[i], lengths[i]);
  }
  PluginFieldCollection collection() const { return {static_cast<int32_t>(fields.size()), fields.data()}; }
  std::vector<std::string> names;
  std::vector<std::vector<char>> data;
  std::vector<PluginFieldType> types;
  std::vector<int32_t> lengths;
  std::vector<PluginField> fields;
};

// ---- device buffers ----
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : bytes(n) { CUDA_OK(cudaMalloc(&ptr, n ? n : 1)); }
  DeviceBuffer(const void* host, size_t n) : DeviceBuffer(n) {
    if (n) CUDA_OK(cudaMemcpy(ptr, host, n, cudaMemcpyHostToDevice));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(std::exchange(o.ptr, nullptr)), bytes(o.bytes) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    bytes = o.bytes;
    return *this;
  }
  ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
};

// ---- one test problem ----
struct Case {
  std::string dtype = "fp32";
  std::string out_dtype = "fp32";
  std::string mode = "sum";
  std::string check = "checked";
  std::string variant = "auto";
  bool int64_indices = true;
  bool include_last_offset = false;
  bool per_sample_weights = false;
  std::vector<int64_t> table_rows{50, 300, 7};
  int dim = 16;
  int batch = 5;
  int64_t pinned_rows = 0;
  int hot_first = 0;
  // Per-table form (1 + 2T or 1 + 3T inputs: each table's own ids, offsets and weights); else packed.
  // T = 1 is the same 3 or 4 inputs either way.
  bool per_table = false;
  int trailing_ids = 0;  // per-table form with include_last_offset: ids after each table's last offset
  int pooling = -1;      // ids per bag; -1: 0..6 at random (empty bags included)
  // Row-wise (int8/int4) weights as TensorRT hands them: kINT32 [rows, row_bytes / 4] (what
  // `dlrm-deploy trt-build` gives TensorRT), or with int8_view kINT8 [rows, row_bytes].
  bool int8_view = false;
  // int8 only: every row's codes first, then every row's fp32 scale and bias (split_scales=1).
  bool split_scales = false;
  int num_tables() const { return static_cast<int>(table_rows.size()); }
  bool rowwise() const { return dtype == "int8" || dtype == "int4"; }
  std::string label() const {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s T=%d dtype=%s%s out=%s mode=%s idx=%s ilo=%d%s psw=%d check=%s variant=%s D=%d B=%d",
                  per_table ? "per-table" : "packed", num_tables(), dtype.c_str(),
                  rowwise() ? (split_scales ? (int8_view ? "(split, as int8)" : "(split, as int32)")
                                            : int8_view ? "(as int8)" : "(as int32)")
                            : "",
                  out_dtype.c_str(), mode.c_str(),
                  int64_indices ? "int64" : "int32", include_last_offset, trailing_ids ? "+trailing" : "",
                  per_sample_weights, check.c_str(), variant.c_str(), dim, batch);
    return buf;
  }
};

Fields fields_for(const Case& c) {
  Fields f;
  f.add_ints("table_rows", c.table_rows);
  f.add_int("dim", c.dim);
  f.add_string("dtype", c.dtype);
  f.add_string("out_dtype", c.out_dtype);
  f.add_string("mode", c.mode);
  f.add_int("include_last_offset", c.include_last_offset);
  f.add_string("variant", c.variant);
  f.add_string("check", c.check);
  if (c.pinned_rows) f.add_int("pinned_rows", c.pinned_rows);
  if (c.hot_first) f.add_int("hot_first", c.hot_first);
  if (c.split_scales) f.add_int("split_scales", 1);
  return f;
}

DataType weights_type(const Case& c) {
  const std::string& d = c.dtype;
  if (c.rowwise()) return c.int8_view ? DataType::kINT8 : DataType::kINT32;
  return d == "fp32" ? DataType::kFLOAT : d == "fp16" ? DataType::kHALF : DataType::kBF16;
}
DataType out_type(const std::string& d) {
  return d == "fp16" ? DataType::kHALF : d == "bf16" ? DataType::kBF16 : DataType::kFLOAT;
}

struct Problem {
  dd_config cfg;
  std::vector<uint8_t> weights;  // packed, row_bytes per row
  // Packed form: concatenated ids and table-major offsets into them.
  std::vector<int64_t> indices;
  std::vector<int64_t> offsets;
  std::vector<float> psw;
  // Per-table form: table t's own ids (local, from position 0), offsets and weights.
  std::vector<std::vector<int64_t>> t_indices, t_offsets;
  std::vector<std::vector<float>> t_psw;
  int64_t rows = 0, row_bytes = 0;
};

Problem make_problem(const Case& c, std::mt19937& rng) {
  Problem p;
  dd_config_init(&p.cfg);
  char msg[DD_MSG_LEN];
  dd_config_set_ints(&p.cfg, "table_rows", c.table_rows.data(), static_cast<int64_t>(c.table_rows.size()), msg, sizeof msg);
  dd_config_set_int(&p.cfg, "dim", c.dim, msg, sizeof msg);
  dd_config_set_string(&p.cfg, "dtype", c.dtype.c_str(), msg, sizeof msg);
  dd_config_set_string(&p.cfg, "out_dtype", c.out_dtype.c_str(), msg, sizeof msg);
  dd_config_set_string(&p.cfg, "mode", c.mode.c_str(), msg, sizeof msg);
  dd_config_set_int(&p.cfg, "include_last_offset", c.include_last_offset, msg, sizeof msg);
  dd_config_set_int(&p.cfg, "pinned_rows", c.pinned_rows, msg, sizeof msg);
  dd_config_set_int(&p.cfg, "hot_first", c.hot_first, msg, sizeof msg);
  dd_config_set_int(&p.cfg, "split_scales", c.split_scales ? 1 : 0, msg, sizeof msg);
  p.cfg.index_type = c.int64_indices ? DD_INT64 : DD_INT32;
  p.rows = dd_total_rows(&p.cfg);
  p.row_bytes = dd_row_bytes(&p.cfg);
  p.weights.assign(static_cast<size_t>(p.rows * p.row_bytes), 0);
  std::uniform_real_distribution<float> val(-1.f, 1.f);
  for (int64_t r = 0; r < p.rows; ++r) {
    // split_scales: row r's codes at r * dim, its scale and bias at rows * dim + 8r
    uint8_t* row = p.weights.data() + r * (c.split_scales ? c.dim : p.row_bytes);
    uint8_t* scale_bias = c.split_scales ? p.weights.data() + p.rows * c.dim + 8 * r : nullptr;
    for (int d = 0; d < c.dim; ++d) {
      const float v = val(rng);
      if (c.dtype == "fp32") std::memcpy(row + 4 * d, &v, 4);
      else if (c.dtype == "fp16") { uint16_t h = dd::float_to_half_bits(v); std::memcpy(row + 2 * d, &h, 2); }
      else if (c.dtype == "bf16") { uint16_t h = dd::float_to_bf16_bits(v); std::memcpy(row + 2 * d, &h, 2); }
      else if (c.dtype == "int8") row[d] = static_cast<uint8_t>(rng() & 0xff);
      else if (d % 2 == 0) row[d / 2] = static_cast<uint8_t>(rng() & 0xff);  // int4: two codes per byte
    }
    if (c.rowwise()) {  // scale and bias behind the codes (dim bytes of int8 codes, dim / 2 of int4)
      const int codes = c.dtype == "int8" ? c.dim : c.dim / 2;
      const float scale = (c.dtype == "int8" ? 0.01f : 0.15f) * (1.f + val(rng)), bias = 0.5f * val(rng);
      if (!scale_bias) scale_bias = row + codes;
      std::memcpy(scale_bias, &scale, 4);
      std::memcpy(scale_bias + 4, &bias, 4);
    }
  }
  // Table-major bags with 0..6 lookups each (empty bags included), or c.pooling each.
  const int T = c.num_tables();
  if (c.per_table) {
    p.t_indices.resize(T);
    p.t_offsets.resize(T);
    p.t_psw.resize(T);
  }
  for (int t = 0; t < T; ++t) {
    std::uniform_int_distribution<int64_t> id(0, c.table_rows[t] - 1);
    std::vector<int64_t>& ids = c.per_table ? p.t_indices[t] : p.indices;
    std::vector<int64_t>& offs = c.per_table ? p.t_offsets[t] : p.offsets;
    for (int b = 0; b < c.batch; ++b) {
      offs.push_back(static_cast<int64_t>(ids.size()));
      const int len = c.pooling >= 0 ? c.pooling : static_cast<int>(rng() % 7);
      for (int k = 0; k < len; ++k) ids.push_back(id(rng));
    }
    if (c.per_table && c.include_last_offset) {
      offs.push_back(static_cast<int64_t>(ids.size()));
      for (int k = 0; k < c.trailing_ids; ++k) ids.push_back(id(rng));  // ignored, as in PyTorch
    }
    if (c.per_table && c.per_sample_weights)
      for (size_t i = 0; i < ids.size(); ++i) p.t_psw[t].push_back(val(rng));
  }
  if (!c.per_table && c.include_last_offset) p.offsets.push_back(static_cast<int64_t>(p.indices.size()));
  if (!c.per_table && c.per_sample_weights)
    for (size_t i = 0; i < p.indices.size(); ++i) p.psw.push_back(val(rng));
  return p;
}

std::vector<uint8_t> index_bytes(const std::vector<int64_t>& v, bool int64) {
  std::vector<uint8_t> out(v.size() * (int64 ? 8 : 4));
  for (size_t i = 0; i < v.size(); ++i) {
    if (int64) std::memcpy(out.data() + 8 * i, &v[i], 8);
    else { int32_t x = static_cast<int32_t>(v[i]); std::memcpy(out.data() + 4 * i, &x, 4); }
  }
  return out;
}

std::vector<uint8_t> float_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(float));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// Inputs 1.. (after the weights) as raw host bytes, in the plugin's input order.
std::vector<std::vector<uint8_t>> lookup_bytes(const Case& c, const Problem& p) {
  std::vector<std::vector<uint8_t>> in;
  if (!c.per_table) {
    in.push_back(index_bytes(p.indices, c.int64_indices));
    in.push_back(index_bytes(p.offsets, c.int64_indices));
    if (c.per_sample_weights) in.push_back(float_bytes(p.psw));
    return in;
  }
  for (const auto& ids : p.t_indices) in.push_back(index_bytes(ids, c.int64_indices));
  for (const auto& offs : p.t_offsets) in.push_back(index_bytes(offs, c.int64_indices));
  if (c.per_sample_weights)
    for (const auto& w : p.t_psw) in.push_back(float_bytes(w));
  return in;
}

// The core's CPU reference on the host copies of the inputs (lookup_bytes order). int4 tables: the
// sequential reference (the multi-threaded CPU forward refuses them for now).
int reference(const Case& c, const Problem& p, const std::vector<std::vector<uint8_t>>& in, void* out, char* msg,
              size_t len) {
  dd_config cfg = p.cfg;
  const bool int4 = c.dtype == "int4";
  if (!c.per_table)
    return (int4 ? dd_forward_cpu_reference : dd_forward_cpu)(&cfg, p.weights.data(), in[0].data(), in[1].data(),
                          c.per_sample_weights ? p.psw.data() : nullptr, static_cast<int64_t>(p.indices.size()),
                          static_cast<int64_t>(p.offsets.size()), out, msg, len);
  const size_t T = p.t_indices.size();
  std::vector<dd_table_lookups> tables(T);
  for (size_t t = 0; t < T; ++t) {
    tables[t].indices = in[t].data();
    tables[t].offsets = in[T + t].data();
    tables[t].per_sample_weights = c.per_sample_weights ? p.t_psw[t].data() : nullptr;
    tables[t].num_indices = static_cast<int64_t>(p.t_indices[t].size());
    tables[t].num_offsets = static_cast<int64_t>(p.t_offsets[t].size());
  }
  return (int4 ? dd_forward_tables_cpu_reference : dd_forward_tables_cpu)(&cfg, p.weights.data(), tables.data(), out,
                                                                          msg, len);
}

// The packed form of a valid per-table problem (trailing ids dropped): the same bags, concatenated.
Case packed_case(const Case& c, const Problem& p, Problem* packed) {
  Case pc = c;
  pc.per_table = false;
  pc.trailing_ids = 0;
  *packed = p;
  packed->indices.clear();
  packed->offsets.clear();
  packed->psw.clear();
  const int64_t ilo = c.include_last_offset ? 1 : 0;
  for (size_t t = 0; t < p.t_indices.size(); ++t) {
    const int64_t base = static_cast<int64_t>(packed->indices.size());
    const auto& offs = p.t_offsets[t];
    const int64_t end = ilo ? offs.back() : static_cast<int64_t>(p.t_indices[t].size());
    for (size_t b = 0; b + ilo < offs.size(); ++b) packed->offsets.push_back(base + offs[b]);
    packed->indices.insert(packed->indices.end(), p.t_indices[t].begin(), p.t_indices[t].begin() + end);
    if (c.per_sample_weights) packed->psw.insert(packed->psw.end(), p.t_psw[t].begin(), p.t_psw[t].begin() + end);
  }
  if (ilo) packed->offsets.push_back(static_cast<int64_t>(packed->indices.size()));
  return pc;
}

float to_float(const uint8_t* p, const std::string& out_dtype) {
  uint16_t h;
  if (out_dtype == "fp32") { float f; std::memcpy(&f, p, 4); return f; }
  std::memcpy(&h, p, 2);
  return out_dtype == "fp16" ? dd::half_bits_to_float(h) : dd::bf16_bits_to_float(h);
}

PluginTensorDesc desc(DataType t, std::vector<int64_t> dims) {
  PluginTensorDesc d{};
  d.dims.nbDims = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) d.dims.d[i] = dims[i];
  d.type = t;
  d.format = TensorFormat::kLINEAR;
  d.scale = -1.f;
  return d;
}

DynamicPluginTensorDesc dyn(const PluginTensorDesc& concrete, bool dynamic_first_dim) {
  DynamicPluginTensorDesc d{};
  d.desc = concrete;
  d.min = d.max = d.opt = concrete.dims;
  if (dynamic_first_dim) {
    d.desc.dims.d[0] = -1;
    d.min.d[0] = 0;
    d.max.d[0] = concrete.dims.d[0] * 4;
  }
  return d;
}

struct Api {
  IPluginCreatorV3One* creator = nullptr;
};

IPluginV3OneBuild* build_of(IPluginV3* p) {
  return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
IPluginV3OneRuntime* runtime_of(IPluginV3* p) {
  return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}
IPluginV3OneCore* core_of(IPluginV3* p) {
  return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}

struct Tensors {
  std::vector<PluginTensorDesc> in;
  PluginTensorDesc out;
};

Tensors tensors_for(const Case& c, const Problem& p) {
  Tensors t;
  const DataType it = c.int64_indices ? DataType::kINT64 : DataType::kINT32;
  auto len = [](const auto& v) { return static_cast<int64_t>(v.size()); };
  // Row-wise rows: their bytes as int32 [rows, row_bytes / 4] (or int8 [rows, row_bytes]).
  t.in.push_back(desc(weights_type(c), {p.rows, !c.rowwise() ? c.dim : c.int8_view ? p.row_bytes : p.row_bytes / 4}));
  if (c.per_table) {
    for (const auto& ids : p.t_indices) t.in.push_back(desc(it, {len(ids)}));
    for (const auto& offs : p.t_offsets) t.in.push_back(desc(it, {len(offs)}));
    if (c.per_sample_weights)
      for (const auto& w : p.t_psw) t.in.push_back(desc(DataType::kFLOAT, {len(w)}));
  } else {
    t.in.push_back(desc(it, {len(p.indices)}));
    t.in.push_back(desc(it, {len(p.offsets)}));
    if (c.per_sample_weights) t.in.push_back(desc(DataType::kFLOAT, {len(p.psw)}));
  }
  t.out = desc(out_type(c.out_dtype), {c.batch, static_cast<int64_t>(c.table_rows.size()) * c.dim});
  return t;
}

// Build phase as the builder runs it; returns the configured plugin (owned by the caller) or nullptr.
IPluginV3* build_phase(const Api& api, const Case& c, const Problem& p, const Tensors& t) {
  Fields f = fields_for(c);
  PluginFieldCollection fc = f.collection();
  IPluginV3* created = api.creator->createPlugin("emb", &fc, TensorRTPhase::kBUILD);
  EXPECT(created != nullptr, "createPlugin failed for %s", c.label().c_str());
  if (!created) return nullptr;
  IPluginV3* plugin = created->clone();
  delete created;
  EXPECT(plugin != nullptr, "clone failed");
  if (!plugin) return nullptr;
  IPluginV3OneCore* core = core_of(plugin);
  EXPECT(core && std::strcmp(core->getPluginName(), "EmbeddingBag") == 0 &&
             std::strcmp(core->getPluginNamespace(), "dlrm_deploy") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0,
         "plugin identity");
  IPluginV3OneBuild* build = build_of(plugin);
  EXPECT(build && runtime_of(plugin), "capabilities");
  EXPECT(build->getNbOutputs() == 1, "one output");
  const int32_t nb_in = static_cast<int32_t>(t.in.size());

  // Types, as the builder asks for them.
  std::vector<DataType> in_types;
  for (const auto& d : t.in) in_types.push_back(d.type);
  DataType out_t = DataType::kINT8;
  EXPECT(build->getOutputDataTypes(&out_t, 1, in_types.data(), nb_in) == 0, "getOutputDataTypes");
  EXPECT(out_t == out_type(c.out_dtype), "output type %d", static_cast<int>(out_t));

  // Shapes: offsets/indices lengths are runtime dimensions, not constants.
  ExprBuilder eb;
  std::vector<DimsExprs> in_exprs(t.in.size());
  for (size_t i = 0; i < t.in.size(); ++i) {
    in_exprs[i].nbDims = t.in[i].dims.nbDims;
    for (int32_t d = 0; d < t.in[i].dims.nbDims; ++d) in_exprs[i].d[d] = eb.make(t.in[i].dims.d[d], i == 0);
  }
  DimsExprs out_exprs{};
  EXPECT(build->getOutputShapes(in_exprs.data(), nb_in, nullptr, 0, &out_exprs, 1, eb) == 0, "getOutputShapes");
  EXPECT(out_exprs.nbDims == 2 && ExprBuilder::value(out_exprs.d[0]) == c.batch &&
             out_exprs.d[1]->isConstant() && out_exprs.d[1]->getConstantValue() == t.out.dims.d[1],
         "output shape [%lld, %lld], expected [%d, %lld]", static_cast<long long>(ExprBuilder::value(out_exprs.d[0])),
         static_cast<long long>(ExprBuilder::value(out_exprs.d[1])), c.batch, static_cast<long long>(t.out.dims.d[1]));

  // Formats: the expected combination is supported, a few wrong ones are not.
  std::vector<DynamicPluginTensorDesc> io;
  for (const auto& d : t.in) io.push_back(dyn(d, &d != &t.in[0]));
  io.push_back(dyn(t.out, true));
  for (int32_t pos = 0; pos <= nb_in; ++pos)
    EXPECT(build->supportsFormatCombination(pos, io.data(), nb_in, 1), "format combination at %d rejected", pos);
  {
    auto bad = io;
    bad[0].desc.type = c.dtype == "fp32" ? DataType::kHALF : DataType::kFLOAT;
    EXPECT(!build->supportsFormatCombination(0, bad.data(), nb_in, 1), "wrong weights type accepted");
    bad = io;
    bad[2].desc.type = c.int64_indices ? DataType::kINT32 : DataType::kINT64;
    EXPECT(!build->supportsFormatCombination(2, bad.data(), nb_in, 1), "offsets type != indices type accepted");
    bad = io;
    bad[nb_in].desc.type = c.out_dtype == "fp32" ? DataType::kHALF : DataType::kFLOAT;
    EXPECT(!build->supportsFormatCombination(nb_in, bad.data(), nb_in, 1), "wrong output type accepted");
    bad = io;
    bad[1].desc.format = TensorFormat::kCHW32;
    EXPECT(!build->supportsFormatCombination(1, bad.data(), nb_in, 1), "non-linear format accepted");
    if (c.per_table) {  // every table's indices and offsets share the first indices' type; weights are float
      const int32_t last_offsets = 2 * c.num_tables();
      bad = io;
      bad[last_offsets].desc.type = c.int64_indices ? DataType::kINT32 : DataType::kINT64;
      EXPECT(!build->supportsFormatCombination(last_offsets, bad.data(), nb_in, 1), "last offsets' type != indices type accepted");
      if (c.per_sample_weights) {
        bad = io;
        bad[nb_in - 1].desc.type = DataType::kHALF;
        EXPECT(!build->supportsFormatCombination(nb_in - 1, bad.data(), nb_in, 1), "fp16 per_sample_weights accepted");
      }
    }
    EXPECT(!build->supportsFormatCombination(0, io.data(), 2, 1), "2 inputs (a count of no form) accepted");
  }
  EXPECT(build->configurePlugin(io.data(), nb_in, &io[nb_in], 1) == 0, "configurePlugin failed for %s", c.label().c_str());
  EXPECT(build->getWorkspaceSize(io.data(), nb_in, &io[nb_in], 1) >= sizeof(dd::ErrorRecord), "workspace size");
  (void)p;
  return plugin;
}

// Device copies of the weights and the lookup tensors, and their pointers in the plugin's input order.
struct Inputs {
  std::vector<DeviceBuffer> buffers;
  std::vector<const void*> ptrs;
  Inputs(const Problem& p, const std::vector<std::vector<uint8_t>>& lookups) {
    buffers.reserve(lookups.size() + 1);
    buffers.emplace_back(p.weights.data(), p.weights.size());
    for (const auto& h : lookups) buffers.emplace_back(h.data(), h.size());
    for (const auto& b : buffers) ptrs.push_back(b.ptr);
  }
};

// onShapeChange + enqueue + compare with the CPU reference. Returns the max abs error.
double run_and_check(IPluginV3* plugin, const Case& c, const Problem& p, const Tensors& t, cudaStream_t stream,
                     const char* phase) {
  IPluginV3OneRuntime* rt = runtime_of(plugin);
  IPluginV3OneBuild* build = build_of(plugin);
  const int32_t nb_in = static_cast<int32_t>(t.in.size());
  EXPECT(rt->onShapeChange(t.in.data(), nb_in, &t.out, 1) == 0, "onShapeChange (%s)", phase);

  std::vector<DynamicPluginTensorDesc> io;
  for (const auto& d : t.in) io.push_back(dyn(d, false));
  io.push_back(dyn(t.out, false));
  const size_t ws_bytes = build ? build->getWorkspaceSize(io.data(), nb_in, &io[nb_in], 1) : dd_workspace_size(&p.cfg);

  const auto host = lookup_bytes(c, p);
  EXPECT(host.size() + 1 == t.in.size(), "%zu inputs for %zu tensors", host.size() + 1, t.in.size());
  Inputs dev(p, host);
  const size_t out_elem = c.out_dtype == "fp32" ? 4 : 2;
  const size_t out_bytes = static_cast<size_t>(c.batch) * c.table_rows.size() * c.dim * out_elem;
  DeviceBuffer dout(out_bytes), ws(ws_bytes);
  CUDA_OK(cudaMemset(dout.ptr, 0xff, out_bytes));  // NaN pattern: every element must be written
  CUDA_OK(cudaMemset(ws.ptr, 0xa5, ws_bytes));      // TensorRT's workspace is not zeroed either
  void* outs[1] = {dout.ptr};
  EXPECT(rt->enqueue(t.in.data(), &t.out, dev.ptrs.data(), outs, ws.ptr, stream) == 0, "enqueue (%s) %s", phase,
         c.label().c_str());
  CUDA_OK(cudaStreamSynchronize(stream));
  std::vector<uint8_t> got(out_bytes);
  CUDA_OK(cudaMemcpy(got.data(), dout.ptr, out_bytes, cudaMemcpyDeviceToHost));

  std::vector<uint8_t> ref(out_bytes);
  char msg[DD_MSG_LEN];
  const int st = reference(c, p, host, ref.data(), msg, sizeof msg);
  EXPECT(st == DD_OK, "CPU reference (%s form): %s", c.per_table ? "per-table" : "packed", msg);
  double max_err = 0;
  const size_t n = out_bytes / out_elem;
  const double tol_rel = c.out_dtype == "fp32" ? 1e-5 : c.out_dtype == "fp16" ? 2e-3 : 1.6e-2;
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const double a = to_float(got.data() + i * out_elem, c.out_dtype), b = to_float(ref.data() + i * out_elem, c.out_dtype);
    const double err = std::fabs(a - b);
    if (!(err <= tol_rel * (1.0 + std::fabs(b)))) {
      if (bad++ < 3) std::printf("    mismatch at %zu: got %g, reference %g\n", i, a, b);
    }
    if (err > max_err || std::isnan(err)) max_err = std::isnan(err) ? INFINITY : err;
  }
  EXPECT(bad == 0, "%zu of %zu outputs differ from the CPU reference (%s, %s)", bad, n, phase, c.label().c_str());
  return max_err;
}

// The per-table reference equals the packed one on the same bags (host-side: runs on any machine).
void check_forms_agree(const Case& c, const Problem& p) {
  Problem packed;
  const Case pc = packed_case(c, p, &packed);
  const size_t out_bytes = static_cast<size_t>(c.batch) * c.table_rows.size() * c.dim * (c.out_dtype == "fp32" ? 4 : 2);
  std::vector<uint8_t> a(out_bytes), b(out_bytes);
  char msg[DD_MSG_LEN] = {0};
  EXPECT(reference(c, p, lookup_bytes(c, p), a.data(), msg, sizeof msg) == DD_OK, "per-table reference: %s", msg);
  EXPECT(reference(pc, packed, lookup_bytes(pc, packed), b.data(), msg, sizeof msg) == DD_OK, "packed reference: %s", msg);
  EXPECT(a == b, "per-table and packed references differ on the same bags (%s)", c.label().c_str());
}

void run_case(const Api& api, const Case& c, cudaStream_t stream, std::mt19937& rng) {
  Problem p = make_problem(c, rng);
  if (c.per_table) check_forms_agree(c, p);
  Tensors t = tensors_for(c, p);
  IPluginV3* plugin = build_phase(api, c, p, t);
  if (!plugin) return;
  const double e1 = g_gpu ? run_and_check(plugin, c, p, t, stream, "build") : 0.0;
  // Serialize, then deserialize as the runtime does.
  SavedFields saved(runtime_of(plugin)->getFieldsToSerialize());
  delete plugin;
  PluginFieldCollection fc = saved.collection();
  IPluginV3* loaded = api.creator->createPlugin("emb", &fc, TensorRTPhase::kRUNTIME);
  EXPECT(loaded != nullptr, "createPlugin from the serialized fields");
  if (!loaded) return;
  ResourceContext rc;
  IPluginV3* attached = runtime_of(loaded)->attachToContext(&rc);
  EXPECT(attached != nullptr, "attachToContext");
  delete loaded;
  if (!attached) return;
  {
    SavedFields again(runtime_of(attached)->getFieldsToSerialize());
    bool same = again.names == saved.names && again.data == saved.data && again.lengths == saved.lengths;
    EXPECT(same, "serialized fields differ after a round trip");
  }
  const double e2 = g_gpu ? run_and_check(attached, c, p, t, stream, "runtime") : 0.0;
  delete attached;
  auto errors = g_logger.take_errors();
  EXPECT(errors.empty(), "unexpected errors logged: %s", errors.empty() ? "" : errors[0].c_str());
  if (g_gpu)
    std::printf("  ok  %-100s max|err| build %.3g runtime %.3g\n", c.label().c_str(), e1, e2);
  else
    std::printf("  ok  %-100s (host-side only)\n", c.label().c_str());
}

// ---- failures that must be clean ----
void bad_fields(const Api& api) {
  struct BadField { const char* what; std::function<void(Fields&)> edit; const char* needle; };
  Case base;
  const int32_t two[2] = {1, 2};
  const float fdim = 16.f;
  std::vector<BadField> cases = {
      {"unknown dtype", [](Fields& f) { f.add_string("dtype", "fp64"); }, "dtype"},
      {"unknown field", [](Fields& f) { f.add_int("bogus", 1); }, "bogus"},
      {"dim as float", [&](Fields& f) { f.add_raw("dim", PluginFieldType::kFLOAT32, &fdim, 1); }, "dim"},
      {"dim with two values", [&](Fields& f) { f.add_raw("dim", PluginFieldType::kINT32, two, 2); }, "dim"},
      {"negative dim", [](Fields& f) { f.add_int("dim", -4); }, "dim"},
      {"bad mode", [](Fields& f) { f.add_string("mode", "max"); }, "mode"},
      {"bad check", [](Fields& f) { f.add_string("check", "sometimes"); }, "check"},
      {"zero rows", [](Fields& f) { f.add_ints("table_rows", {5, 0}); }, "table_rows"},
      {"int4 with dim 12", [](Fields& f) { f.add_string("dtype", "int4"); f.add_int("dim", 12); }, "divisible by 8"},
      {"int8 with dim 6", [](Fields& f) { f.add_string("dtype", "int8"); f.add_int("dim", 6); }, "divisible by 4"},
      {"split_scales on fp32", [](Fields& f) { f.add_int("split_scales", 1); }, "split_scales"},
      {"split_scales with dim 12",
       [](Fields& f) { f.add_string("dtype", "int8"); f.add_int("dim", 12); f.add_int("split_scales", 1); },
       "divisible by 8"},
  };
  for (auto& b : cases) {
    Fields f = fields_for(base);
    b.edit(f);  // a later field overrides the earlier one of the same name
    PluginFieldCollection fc = f.collection();
    IPluginV3* p = api.creator->createPlugin("bad", &fc, TensorRTPhase::kBUILD);
    auto errors = g_logger.take_errors();
    EXPECT(p == nullptr, "createPlugin accepted %s", b.what);
    EXPECT(logged(errors, b.needle), "no error naming '%s' logged for %s", b.needle, b.what);
    delete p;
  }
  {  // required field missing
    Fields f;
    f.add_int("dim", 8);
    PluginFieldCollection fc = f.collection();
    IPluginV3* p = api.creator->createPlugin("bad", &fc, TensorRTPhase::kBUILD);
    auto errors = g_logger.take_errors();
    EXPECT(p == nullptr && logged(errors, "table_rows"), "missing table_rows must fail with its name");
    delete p;
  }
  std::printf("  ok  bad fields fail in createPlugin with a logged reason\n");
}

void bad_tensors(const Api& api, std::mt19937& rng) {
  struct BadTensor {
    const char* what; Case c; std::function<void(Tensors&)> edit; bool concrete; const char* needle = nullptr;
  };
  Case psw_mean;
  psw_mean.mode = "mean";
  // Per-table form, T = 3: inputs weights, indices 1..3, offsets 4..6, per_sample_weights 7..9.
  Case pt;
  pt.per_table = true;
  pt.per_sample_weights = true;
  pt.include_last_offset = true;
  pt.trailing_ids = 1;
  Case split;  // int8 D 64 with the scales apart: [rows, 72] bytes, int32 [rows, 18]
  split.dtype = "int8";
  split.dim = 64;
  split.split_scales = true;
  std::vector<BadTensor> cases = {
      {"fp16 weights for dtype=fp32", Case{}, [](Tensors& t) { t.in[0].type = DataType::kHALF; }, false},
      {"wrong column count", Case{}, [](Tensors& t) { t.in[0].dims.d[1] += 1; }, false},
      {"wrong row count", Case{}, [](Tensors& t) { t.in[0].dims.d[0] -= 1; }, false},
      {"int32 offsets with int64 indices", Case{}, [](Tensors& t) { t.in[2].type = DataType::kINT32; }, false},
      {"float indices", Case{}, [](Tensors& t) { t.in[1].type = DataType::kFLOAT; t.in[2].type = DataType::kFLOAT; }, false},
      {"rank-2 indices", Case{}, [](Tensors& t) { t.in[1].dims.nbDims = 2; t.in[1].dims.d[1] = 1; }, false},
      {"per_sample_weights with mean", psw_mean,
       [](Tensors& t) { t.in.push_back(t.in[1]); t.in.back().type = DataType::kFLOAT; }, false},
      {"fp16 output for out_dtype=fp32", Case{}, [](Tensors& t) { t.out.type = DataType::kHALF; }, false},
      {"offsets count not a multiple of T", Case{}, [](Tensors& t) { t.in[2].dims.d[0] += 1; }, true},
      {"per-table: table 1 with one bag fewer (runtime shapes)", pt, [](Tensors& t) { t.in[5].dims.d[0] -= 1; }, true,
       "offsets of table 1 holds"},
      {"per-table: table 2 with one bag more (build shapes)", pt, [](Tensors& t) { t.in[6].dims.d[0] += 1; }, false,
       "every table needs one bag per sample"},
      {"per-table: empty offsets of table 1 with include_last_offset", pt, [](Tensors& t) { t.in[5].dims.d[0] = 0; },
       true, "offsets of table 1 is empty"},
      {"per-table: int32 offsets of table 2 with int64 indices", pt,
       [](Tensors& t) { t.in[6].type = DataType::kINT32; }, false, "offsets of table 2"},
      {"per-table: int32 indices of table 1 with int64 indices of table 0", pt,
       [](Tensors& t) { t.in[2].type = DataType::kINT32; }, false, "indices of table 1"},
      {"per-table: per_sample_weights of table 2 longer than its indices", pt,
       [](Tensors& t) { t.in[9].dims.d[0] += 1; }, false, "per_sample_weights of table 2"},
      {"per-table: fp16 per_sample_weights of table 0", pt, [](Tensors& t) { t.in[7].type = DataType::kHALF; }, false,
       "per_sample_weights of table 0"},
      {"per-table: an input count of no form (9 for T=3)", pt, [](Tensors& t) { t.in.pop_back(); }, false, "got 9 inputs"},
      {"per-table: output batch != bags", pt, [](Tensors& t) { t.out.dims.d[0] += 1; }, true, "output must be"},
      {"split_scales: weights in the row form's shape (int32 [rows, 20])", split,
       [](Tensors& t) { t.in[0].dims.d[1] = 20; }, false, "split_scales=1"},
  };
  for (auto& b : cases) {
    Problem p = make_problem(b.c, rng);
    Tensors t = tensors_for(b.c, p);
    Fields f = fields_for(b.c);
    PluginFieldCollection fc = f.collection();
    IPluginV3* plugin = api.creator->createPlugin("bad", &fc, TensorRTPhase::kBUILD);
    EXPECT(plugin != nullptr, "createPlugin");
    if (!plugin) continue;
    b.edit(t);
    const int32_t nb_in = static_cast<int32_t>(t.in.size());
    int32_t st;
    if (b.concrete) {
      st = runtime_of(plugin)->onShapeChange(t.in.data(), nb_in, &t.out, 1);
    } else {
      std::vector<DynamicPluginTensorDesc> io;
      for (const auto& d : t.in) io.push_back(dyn(d, false));
      io.push_back(dyn(t.out, false));
      st = build_of(plugin)->configurePlugin(io.data(), nb_in, &io[nb_in], 1);
    }
    auto errors = g_logger.take_errors();
    EXPECT(st != 0, "%s accepted", b.what);
    EXPECT(!errors.empty(), "no error logged for %s", b.what);
    if (b.needle) EXPECT(logged(errors, b.needle), "no error naming '%s' logged for %s", b.needle, b.what);
    delete plugin;
  }
  std::printf("  ok  bad types and shapes fail in configurePlugin/onShapeChange with a logged reason\n");
}

// An enqueue whose tables disagree on the number of bags (shapes TensorRT never hands over without
// onShapeChange) is refused by the core before any launch, with a logged reason (host-side).
void mismatched_bags_at_enqueue(const Api& api, std::mt19937& rng) {
  Case c;
  c.per_table = true;
  c.check = "unchecked";  // no workspace clearing: nothing reaches the device
  Problem p = make_problem(c, rng);
  Tensors t = tensors_for(c, p);
  IPluginV3* plugin = build_phase(api, c, p, t);
  if (!plugin) return;
  IPluginV3OneRuntime* rt = runtime_of(plugin);
  const int32_t nb_in = static_cast<int32_t>(t.in.size());
  EXPECT(rt->onShapeChange(t.in.data(), nb_in, &t.out, 1) == 0, "onShapeChange (per-table)");
  t.in[1 + c.num_tables() + 2].dims.d[0] -= 1;  // offsets of table 2: one bag fewer
  std::vector<uint8_t> dummy(64);
  std::vector<const void*> ins(t.in.size(), dummy.data());  // never read: the core rejects the shapes first
  void* outs[1] = {dummy.data()};
  const int32_t st = rt->enqueue(t.in.data(), &t.out, ins.data(), outs, nullptr, nullptr);
  auto errors = g_logger.take_errors();
  EXPECT(st != 0, "enqueue accepted tables with different bag counts");
  EXPECT(logged(errors, "offsets of table 2") && logged(errors, "one bag per sample"),
         "no error naming offsets of table 2 logged (%zu errors)", errors.size());
  delete plugin;
  std::printf("  ok  per-table: tables with different bag counts are refused at enqueue too (no launch)\n");
}

// Deferred check: bad lookups must not fail or block enqueue; the first error is logged at the next
// enqueue of the same plugin or at teardown, naming what was wrong. The CPU reference must reject the
// same input with the same reason (that part runs on any machine).
void expect_deferred(const Api& api, cudaStream_t stream, const Case& c, const Problem& bad, const char* what,
                     const std::vector<const char*>& needles) {
  const auto host = lookup_bytes(c, bad);
  const size_t out_bytes = static_cast<size_t>(c.batch) * c.table_rows.size() * c.dim * (c.out_dtype == "fp32" ? 4 : 2);
  {
    std::vector<uint8_t> ref(out_bytes);
    char msg[DD_MSG_LEN] = {0};
    EXPECT(reference(c, bad, host, ref.data(), msg, sizeof msg) == DD_ERR_INPUT, "CPU reference accepted %s", what);
    for (const char* n : needles) EXPECT(std::strstr(msg, n), "CPU reference on %s: '%s' not in: %s", what, n, msg);
  }
  if (!g_gpu) return;
  Tensors t = tensors_for(c, bad);
  const int32_t nb_in = static_cast<int32_t>(t.in.size());
  for (int at_teardown = 0; at_teardown < 2; ++at_teardown) {
    IPluginV3* plugin = build_phase(api, c, bad, t);
    if (!plugin) continue;
    IPluginV3OneRuntime* rt = runtime_of(plugin);
    EXPECT(rt->onShapeChange(t.in.data(), nb_in, &t.out, 1) == 0, "onShapeChange (%s)", what);
    Inputs dev(bad, host);
    DeviceBuffer dout(out_bytes), ws(dd_workspace_size(&bad.cfg));
    void* outs[1] = {dout.ptr};
    EXPECT(rt->enqueue(t.in.data(), &t.out, dev.ptrs.data(), outs, ws.ptr, stream) == 0, "enqueue with %s must not fail",
           what);
    CUDA_OK(cudaStreamSynchronize(stream));
    auto before = g_logger.take_errors();
    EXPECT(before.empty(), "error logged inside the enqueue that launched %s (it would have needed a sync)", what);
    if (!at_teardown) {
      EXPECT(rt->enqueue(t.in.data(), &t.out, dev.ptrs.data(), outs, ws.ptr, stream) == 0, "second enqueue (%s)", what);
      auto errors = g_logger.take_errors();
      EXPECT(errors.size() == 1 && logged(errors, "next enqueue"), "%s not logged at the next enqueue (%zu errors)", what,
             errors.size());
      for (const char* n : needles) EXPECT(logged(errors, n), "%s: '%s' not in the logged error", what, n);
      CUDA_OK(cudaStreamSynchronize(stream));
    }
    delete plugin;
    auto errors = g_logger.take_errors();
    EXPECT(errors.size() == 1 && logged(errors, "teardown"), "%s not logged at teardown (%zu errors)", what,
           errors.size());
    for (const char* n : needles) EXPECT(logged(errors, n), "%s: '%s' not in the error logged at teardown", what, n);
  }
}

void bad_lookups(const Api& api, cudaStream_t stream, std::mt19937& rng) {
  {  // packed form: an index past every table
    Case c;
    Problem bad = make_problem(c, rng);
    if (bad.indices.empty()) {  // lands in the last bag
      bad.indices.push_back(0);
      if (bad.psw.size()) bad.psw.push_back(1.f);
    }
    bad.indices[bad.indices.size() / 2] = 1000000;
    expect_deferred(api, stream, c, bad, "a bad index (packed form)", {"out of range"});
  }
  // Per-table form, T = 3, two ids per bag: every error is that table's, at its own positions.
  Case c;
  c.per_table = true;
  c.pooling = 2;
  c.per_sample_weights = true;
  {
    Problem bad = make_problem(c, rng);
    bad.t_indices[2][3] = c.table_rows[2] + 3;
    expect_deferred(api, stream, c, bad, "a bad index in table 2 (per-table form)",
                    {"out of range", "position 3 of indices of table 2"});
  }
  {
    Problem bad = make_problem(c, rng);
    bad.t_offsets[1][0] = 1;  // bag 0 of table 1 would be [1, 2)
    expect_deferred(api, stream, c, bad, "first offset 1 in table 1 (per-table form)",
                    {"first offset of offsets of table 1"});
  }
  {
    Problem bad = make_problem(c, rng);
    bad.t_offsets[2][c.batch - 1] = static_cast<int64_t>(bad.t_indices[2].size()) + 5;
    expect_deferred(api, stream, c, bad, "an offset past the end of table 2's ids (per-table form)",
                    {"past the end", "offsets of table 2"});
  }
  {  // include_last_offset: the end offset of table 0 past its ids
    Case ilo = c;
    ilo.include_last_offset = true;
    ilo.int64_indices = false;
    Problem bad = make_problem(ilo, rng);
    bad.t_offsets[0].back() = static_cast<int64_t>(bad.t_indices[0].size()) + 1;
    expect_deferred(api, stream, ilo, bad, "a last offset past the end of table 0's ids (per-table form, int32)",
                    {"past the end", "offsets of table 0"});
  }
  std::printf("  ok  bad indices and offsets (check=deferred): %s\n",
              g_gpu ? "enqueue succeeds, the error is logged at the next enqueue/teardown, naming the table"
                    : "the CPU reference names the table (enqueue checks need a GPU)");
}

// Row-wise weights: the element types TensorRT can hand a plugin (int32 / int8 views of the row bytes)
// pass; uint8 (what the ONNX file holds, and what TensorRT plugins cannot take) fails when the layer is
// added (getOutputDataTypes) with the fix in the message; a view of the wrong width fails with the
// core's shape message.
void rowwise_weight_types(const Api& api, std::mt19937& rng) {
  for (const char* dtype : {"int8", "int4"}) {
    Case c;
    c.dtype = dtype;
    Problem p = make_problem(c, rng);
    Tensors t = tensors_for(c, p);
    Fields f = fields_for(c);
    PluginFieldCollection fc = f.collection();
    IPluginV3* plugin = api.creator->createPlugin("rowwise", &fc, TensorRTPhase::kBUILD);
    EXPECT(plugin != nullptr, "createPlugin %s", dtype);
    if (!plugin) continue;
    IPluginV3OneBuild* build = build_of(plugin);
    const int32_t nb_in = static_cast<int32_t>(t.in.size());
    std::vector<DataType> types;
    for (const auto& d : t.in) types.push_back(d.type);
    std::vector<DynamicPluginTensorDesc> io;
    for (const auto& d : t.in) io.push_back(dyn(d, &d != &t.in[0]));
    io.push_back(dyn(t.out, true));
    for (DataType wt : {DataType::kINT32, DataType::kINT8}) {
      types[0] = wt;
      io[0].desc.type = wt;
      DataType out_t = DataType::kINT8;
      EXPECT(build->getOutputDataTypes(&out_t, 1, types.data(), nb_in) == 0 && out_t == DataType::kFLOAT,
             "%s weights as %s refused by getOutputDataTypes", dtype, wt == DataType::kINT32 ? "int32" : "int8");
      EXPECT(build->supportsFormatCombination(0, io.data(), nb_in, 1), "%s weights as %s: format refused", dtype,
             wt == DataType::kINT32 ? "int32" : "int8");
    }
    g_logger.take_errors();
    for (DataType wt : {DataType::kUINT8, DataType::kFLOAT, DataType::kHALF}) {
      types[0] = wt;
      io[0].desc.type = wt;
      DataType out_t = DataType::kINT8;
      EXPECT(build->getOutputDataTypes(&out_t, 1, types.data(), nb_in) != 0, "%s weights as type %d accepted by "
             "getOutputDataTypes", dtype, static_cast<int>(wt));
      EXPECT(!build->supportsFormatCombination(0, io.data(), nb_in, 1), "%s weights as type %d: format accepted",
             dtype, static_cast<int>(wt));
      auto errors = g_logger.take_errors();
      EXPECT(logged(errors, "needs int32 [rows, row_bytes / 4]"), "%s: no message naming the int32 view", dtype);
      if (wt == DataType::kUINT8)
        EXPECT(logged(errors, "no uint8 inputs") && logged(errors, "trt-build"),
               "%s: uint8 weights without the hint to trt-build", dtype);
    }
    // int32 view one column short: the core's shape message, with the view named.
    io = {};
    for (const auto& d : t.in) io.push_back(dyn(d, false));
    io.push_back(dyn(t.out, false));
    io[0].desc.dims.d[1] -= 1;
    EXPECT(build->configurePlugin(io.data(), nb_in, &io[nb_in], 1) != 0, "%s: int32 view one column short accepted", dtype);
    auto errors = g_logger.take_errors();
    EXPECT(logged(errors, "weights are int32 [") && logged(errors, "[rows, row_bytes / 4]"),
           "%s: short int32 view without the view's shape", dtype);
    delete plugin;
  }
  std::printf("  ok  row-wise weights: int32/int8 views accepted, uint8 refused with the fix, wrong widths refused\n");
}

}  // namespace

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : DD_TRT_PLUGIN_PATH;
  int devices = 0;
  g_gpu = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
  cudaGetLastError();
  if (!g_gpu) std::printf("no CUDA device: enqueue checks SKIPPED, host-side checks only\n");
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::printf("FATAL: dlopen(%s): %s\n", path, dlerror());
    return 1;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto set_finder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  if (!get_creators || !set_finder) {
    std::printf("FATAL: %s lacks getCreators/setLoggerFinder\n", path);
    return 1;
  }
  g_logger.verbose_ = std::getenv("DD_HARNESS_VERBOSE") != nullptr;
  Finder finder(&g_logger);
  set_finder(&finder);
  int32_t n = 0;
  IPluginCreatorInterface* const* creators = get_creators(n);
  Api api;
  for (int32_t i = 0; i < n; ++i) {
    if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) continue;
    auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
    if (!std::strcmp(c->getPluginName(), "EmbeddingBag") && !std::strcmp(c->getPluginNamespace(), "dlrm_deploy") &&
        !std::strcmp(c->getPluginVersion(), "1"))
      api.creator = c;
  }
  if (!api.creator) {
    std::printf("FATAL: no IPluginCreatorV3One EmbeddingBag/dlrm_deploy/1 among %d creators\n", n);
    return 1;
  }
  {  // the creator advertises every contract field
    int32_t count = 0;
    const dd_field* contract = dd_fields(&count);
    const PluginFieldCollection* names = api.creator->getFieldNames();
    EXPECT(names && names->nbFields == count, "getFieldNames lists %d fields, the contract %d", names ? names->nbFields : -1, count);
    for (int32_t i = 0; names && i < count && i < names->nbFields; ++i)
      EXPECT(!std::strcmp(names->fields[i].name, contract[i].name), "field %d: %s vs %s", i, names->fields[i].name,
             contract[i].name);
  }
  cudaStream_t stream = nullptr;
  if (g_gpu) CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::mt19937 rng(1234);

  std::printf("outputs vs the CPU reference (build-phase plugin, then the deserialized runtime plugin):\n");
  for (const char* dtype : {"fp32", "fp16", "int8", "bf16", "int4"}) {
    for (const char* mode : {"sum", "mean"}) {
      Case c;
      c.dtype = dtype;
      c.mode = mode;
      c.int64_indices = std::string(mode) == "sum";
      c.include_last_offset = std::string(dtype) == "fp16";
      c.per_sample_weights = std::string(mode) == "sum" && std::string(dtype) != "bf16";
      run_case(api, c, stream, rng);
    }
  }
  {  // other outputs, kernels and checks
    Case c;
    c.out_dtype = "fp16";
    c.dtype = "fp16";
    run_case(api, c, stream, rng);
    c = Case{};
    c.out_dtype = "bf16";
    c.check = "unchecked";
    run_case(api, c, stream, rng);
    c = Case{};
    c.dim = 128;
    c.batch = 64;
    c.table_rows = {1000, 2000};
    c.variant = "baseline";
    run_case(api, c, stream, rng);
    c.variant = "combined";
    c.pinned_rows = 16;
    c.hot_first = 1;
    run_case(api, c, stream, rng);
    c = Case{};
    c.batch = 0;  // empty batch
    c.include_last_offset = true;
    run_case(api, c, stream, rng);
    c = Case{};
    c.table_rows = {40};
    c.dim = 4;
    c.dtype = "int8";
    c.check = "deferred";
    run_case(api, c, stream, rng);
    c.int8_view = true;  // the other view TensorRT may hand: int8 [rows, row_bytes]
    run_case(api, c, stream, rng);
  }
  std::printf("int4 row-wise tables (row bytes as int32 [rows, row_bytes / 4], int8 [rows, row_bytes]):\n");
  {
    Case c;
    c.dtype = "int4";
    c.dim = 128;  // 64 bytes of codes: 16-byte loads, 4 lanes per row, 8 lookups side by side per warp
    c.batch = 64;
    c.table_rows = {1000, 2000};
    c.pooling = 40;  // bags longer than one 32-index batch
    c.per_sample_weights = true;
    run_case(api, c, stream, rng);
    c.per_sample_weights = false;
    c.int8_view = true;
    c.mode = "mean";
    c.out_dtype = "fp16";
    run_case(api, c, stream, rng);
    for (const char* variant : {"baseline", "occupancy", "prefetch", "l2pin", "combined"}) {
      c = Case{};
      c.dtype = "int4";
      c.dim = 128;
      c.batch = 32;
      c.table_rows = {1000, 2000};
      c.variant = variant;
      if (std::string(variant) == "l2pin" || std::string(variant) == "combined") {
        c.pinned_rows = 16;
        c.hot_first = 1;
      }
      run_case(api, c, stream, rng);
    }
    for (int dim : {8, 24, 40, 256, 1024}) {  // 4-byte loads (8, 24, 40: 3 and 5 lanes), 16-byte, column slices
      c = Case{};
      c.dtype = "int4";
      c.dim = dim;
      c.int64_indices = dim % 16 == 0;
      c.include_last_offset = dim == 24;
      c.out_dtype = dim == 40 ? "bf16" : "fp32";
      run_case(api, c, stream, rng);
    }
    c = Case{};
    c.dtype = "int4";
    c.table_rows = {40};
    c.check = "deferred";
    c.batch = 0;  // empty batch
    run_case(api, c, stream, rng);
  }
  std::printf("int8 with the scales stored apart (split_scales=1: [rows, dim + 8], codes, then scales and biases):\n");
  {
    for (int dim : {8, 64, 128, 256}) {  // 4-byte loads (D 8), rows in shared memory (64), warp_kernel (128, 256)
      Case c;
      c.dtype = "int8";
      c.split_scales = true;
      c.dim = dim;
      c.batch = 48;
      c.table_rows = {1000, 2000, 30};
      c.pooling = dim == 64 ? 40 : -1;  // bags longer than one 32-index batch at D 64
      c.per_sample_weights = dim != 128;
      c.mode = dim == 128 ? "mean" : "sum";
      c.int64_indices = dim != 64;
      c.int8_view = dim == 256;
      run_case(api, c, stream, rng);
    }
    Case c;
    c.dtype = "int8";
    c.split_scales = true;
    c.dim = 64;
    c.per_table = true;
    c.include_last_offset = true;
    c.trailing_ids = 2;
    c.out_dtype = "fp16";
    run_case(api, c, stream, rng);
    for (const char* variant : {"baseline", "combined"}) {
      c = Case{};
      c.dtype = "int8";
      c.split_scales = true;
      c.dim = 64;
      c.batch = 32;
      c.table_rows = {1000, 2000};
      c.variant = variant;
      c.check = "deferred";
      run_case(api, c, stream, rng);
    }
  }
  std::printf("per-table form (each table's own indices, offsets and per_sample_weights):\n");
  {
    Case c;
    c.per_table = true;
    c.per_sample_weights = true;
    run_case(api, c, stream, rng);
    c = Case{};  // include_last_offset with ids after each table's last offset (ignored, as in PyTorch)
    c.per_table = true;
    c.include_last_offset = true;
    c.trailing_ids = 3;
    c.per_sample_weights = true;
    c.int64_indices = false;
    c.dtype = "fp16";
    run_case(api, c, stream, rng);
    c = Case{};
    c.per_table = true;
    c.include_last_offset = true;
    c.trailing_ids = 2;
    c.mode = "mean";
    c.dtype = "bf16";
    c.out_dtype = "bf16";
    run_case(api, c, stream, rng);
    c = Case{};
    c.per_table = true;
    c.dtype = "int8";
    c.per_sample_weights = true;
    c.check = "unchecked";
    c.int64_indices = false;
    run_case(api, c, stream, rng);
    c = Case{};
    c.per_table = true;
    c.dtype = "int4";
    c.dim = 64;
    c.per_sample_weights = true;
    c.include_last_offset = true;
    c.trailing_ids = 2;
    run_case(api, c, stream, rng);
    c.per_sample_weights = false;
    c.mode = "mean";
    c.int8_view = true;
    c.table_rows = {1000, 2000, 30, 500, 70};
    c.batch = 48;
    run_case(api, c, stream, rng);
    c = Case{};  // several tables, wide rows, one launch
    c.per_table = true;
    c.table_rows = {1000, 2000, 30, 500, 70};
    c.dim = 128;
    c.batch = 64;
    c.variant = "combined";
    c.pinned_rows = 16;
    c.hot_first = 1;
    run_case(api, c, stream, rng);
    c = Case{};  // empty batch: every table's offsets are [0]
    c.per_table = true;
    c.batch = 0;
    c.include_last_offset = true;
    c.trailing_ids = 2;
    run_case(api, c, stream, rng);
    c = Case{};  // T = 1: the per-table form is the old 3/4-input form
    c.per_table = true;
    c.table_rows = {90};
    c.per_sample_weights = true;
    c.include_last_offset = true;
    run_case(api, c, stream, rng);
  }
  std::printf("failure paths:\n");
  bad_fields(api);
  bad_tensors(api, rng);
  rowwise_weight_types(api, rng);
  mismatched_bags_at_enqueue(api, rng);
  bad_lookups(api, stream, rng);
  if (g_gpu) {
    CUDA_OK(cudaStreamDestroy(stream));
    const cudaError_t last = cudaDeviceSynchronize();
    EXPECT(last == cudaSuccess, "device error at exit: %s", cudaGetErrorString(last));
  }
  std::printf("%s: %d checks, %d failures%s\n", g_failures ? "FAILED" : "PASSED", g_checks, g_failures,
              g_gpu ? "" : " (host-side only: no CUDA device)");
  return g_failures ? 1 : 0;
}
