// The EmbeddingBag IPluginV3: translates TensorRT's tensors into one dd_config and calls the core.
#include "embedding_bag_plugin.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>


using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IDimensionExpr;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;
using Severity = nvinfer1::ILogger::Severity;

namespace dlrm_deploy_trt {
namespace {

constexpr int32_t kWeights = 0;

const char* type_name(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kUINT8: return "uint8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    default: return "another type";
  }
}

bool rowwise(int32_t dtype) { return dtype == DD_INT8 || dtype == DD_INT4; }

// Element type of the weights input for a table dtype. Row-wise (int8/int4) rows are raw bytes that
// TensorRT hands over as a view: int32 [rows, row_bytes / 4] (what `dlrm-deploy trt-build` gives
// TensorRT: plugins take no kUINT8 inputs, and kINT8 means quantized values to TensorRT), or int8
// [rows, row_bytes]. The kernels read the same bytes either way.
bool weights_type_ok(int32_t dtype, DataType t) {
  switch (dtype) {
    case DD_FP32: return t == DataType::kFLOAT;
    case DD_FP16: return t == DataType::kHALF;
    case DD_BF16: return t == DataType::kBF16;
    case DD_INT8:
    case DD_INT4: return t == DataType::kINT32 || t == DataType::kINT8;
    default: return false;
  }
}

// Bytes per element of the weights input's type (row-wise views: the column count to row bytes).
int64_t weights_elem_bytes(DataType t) { return t == DataType::kINT32 ? 4 : 1; }

// What the weights input should be, for messages.
const char* weights_wanted(int32_t dtype) {
  switch (dtype) {
    case DD_FP32: return "float32 [rows, dim]";
    case DD_FP16: return "float16 [rows, dim]";
    case DD_BF16: return "bfloat16 [rows, dim]";
    default: return "int32 [rows, row_bytes / 4] (the row bytes viewed as int32; or int8 [rows, row_bytes])";
  }
}

DataType output_type(int32_t out_dtype) {
  return out_dtype == DD_FP16 ? DataType::kHALF : out_dtype == DD_BF16 ? DataType::kBF16 : DataType::kFLOAT;
}

bool index_type(DataType t) { return t == DataType::kINT32 || t == DataType::kINT64; }

// Integer field data as int64 (the ONNX parser passes INT and INTS attributes as int32).
bool read_ints(const PluginField& f, std::vector<int64_t>* out) {
  out->clear();
  if (f.length < 0 || (f.length > 0 && f.data == nullptr)) return false;
  for (int32_t i = 0; i < f.length; ++i) {
    switch (f.type) {
      case PluginFieldType::kINT8: out->push_back(static_cast<const int8_t*>(f.data)[i]); break;
      case PluginFieldType::kINT16: out->push_back(static_cast<const int16_t*>(f.data)[i]); break;
      case PluginFieldType::kINT32: out->push_back(static_cast<const int32_t*>(f.data)[i]); break;
      case PluginFieldType::kINT64: out->push_back(static_cast<const int64_t*>(f.data)[i]); break;
      default: return false;
    }
  }
  return true;
}

bool known_field(const char* name) {
  int32_t count = 0;
  const dd_field* contract = dd_fields(&count);
  for (int32_t i = 0; i < count; ++i)
    if (std::strcmp(contract[i].name, name) == 0) return true;
  return false;
}

// The fields TensorRT handed in, for the core's parser (dd_config_parse): kCHAR is a string,
// integer data of one value an int (for an int attribute), of any other length a list.
struct FieldReader {
  const PluginFieldCollection* fc;
  std::vector<int64_t> ints;
  std::string text;
};

int get_field(void* ctx, const dd_field* field, dd_attribute* a) {
  auto* r = static_cast<FieldReader*>(ctx);
  const PluginField* f = nullptr;
  for (int32_t j = 0; r->fc && j < r->fc->nbFields; ++j)  // a later field overrides an earlier one
    if (r->fc->fields[j].name && std::strcmp(r->fc->fields[j].name, field->name) == 0) f = &r->fc->fields[j];
  if (!f) return DD_OK;
  a->present = 1;
  if (f->type == PluginFieldType::kCHAR && (f->length <= 0 || f->data)) {
    const char* s = static_cast<const char*>(f->data);
    r->text = f->length > 0 ? std::string(s, strnlen(s, static_cast<size_t>(f->length))) : std::string();
    a->kind = DD_KIND_STRING;
    a->s = r->text.c_str();
  } else if (f->type != PluginFieldType::kCHAR && read_ints(*f, &r->ints)) {
    a->kind = field->kind == DD_KIND_INT && r->ints.size() == 1 ? DD_KIND_INT : DD_KIND_INTS;
    a->i = r->ints.empty() ? 0 : r->ints[0];
    a->ints = r->ints.data();
    a->n = static_cast<int64_t>(r->ints.size());
  } else {
    a->kind = -1;
    a->type_name = "a field type other than kCHAR, kINT32 or kINT64";
  }
  return DD_OK;
}

// Every contract field's value in cfg, for getFieldsToSerialize.
std::vector<FieldValue> field_values(const dd_config& cfg) {
  int32_t count = 0;
  const dd_field* contract = dd_fields(&count);
  std::vector<FieldValue> out;
  for (int32_t i = 0; i < count; ++i) {
    dd_attribute a;
    if (dd_config_get(&cfg, contract[i].name, &a, nullptr, 0) != DD_OK) continue;
    FieldValue v;
    v.name = contract[i].name;
    v.kind = a.kind;
    if (a.kind == DD_KIND_STRING) v.text = a.s;
    else if (a.kind == DD_KIND_INT) v.ints = {a.i};
    else v.ints.assign(a.ints, a.ints + a.n);
    out.push_back(std::move(v));
  }
  return out;
}

// An input's name in messages, as the core names a table's tensors ("offsets of table 2").
struct Label {
  char text[64];
};
Label input_label(const InputLayout& layout, int32_t pos) {
  Label l{};
  if (pos == kWeights) {
    std::snprintf(l.text, sizeof(l.text), "weights");
    return l;
  }
  const char* kind = "per_sample_weights";
  int32_t table = pos - layout.weights(0);
  if (pos < layout.offsets(0)) {
    kind = "indices";
    table = pos - layout.indices(0);
  } else if (pos < layout.weights(0)) {
    kind = "offsets";
    table = pos - layout.offsets(0);
  }
  if (layout.per_table) std::snprintf(l.text, sizeof(l.text), "%s of table %d", kind, table);
  else std::snprintf(l.text, sizeof(l.text), "%s", kind);
  return l;
}

}  // namespace

InputLayout InputLayout::of(int32_t num_tables, int32_t nb_inputs) noexcept {
  InputLayout l;
  const int32_t T = num_tables;
  if (T < 1) return l;
  if (nb_inputs == 1 + 2 * T || nb_inputs == 1 + 3 * T) {
    l.valid = l.per_table = true;
    l.groups = T;
    l.weighted = nb_inputs == 1 + 3 * T;
  } else if (nb_inputs == 3 || nb_inputs == 4) {  // packed (T > 1; T = 1 matched above)
    l.valid = true;
    l.groups = 1;
    l.weighted = nb_inputs == 4;
  }
  return l;
}

// ---------------------------------------------------------------------------------------------
// Deferred error reporting

DeferredErrors::~DeferredErrors() { dd_deferred_destroy(d_); }

bool DeferredErrors::allocate() noexcept {
  if (d_) return true;
  char msg[DD_MSG_LEN];
  d_ = dd_deferred_create(msg, sizeof(msg));
  return d_ != nullptr;
}

void DeferredErrors::after_launch(const void* workspace, cudaStream_t stream) noexcept {
  if (!d_) return;
  char msg[DD_MSG_LEN];
  if (dd_deferred_after_launch(d_, workspace, stream, msg, sizeof(msg)) != DD_OK)
    log(Severity::kWARNING, "EmbeddingBag: deferred error report not queued: %s", msg);
}

void DeferredErrors::report(int rc, const char* text, const std::string& layer, const char* when) noexcept {
  if (rc == DD_OK) return;
  if (rc != DD_ERR_INPUT) {
    log(Severity::kWARNING, "EmbeddingBag layer '%s': deferred error report unavailable: %s", layer.c_str(), text);
    return;
  }
  log(Severity::kERROR,
      "EmbeddingBag layer '%s': bad input in an earlier enqueue (%s; check=deferred: the bad lookups "
      "contributed zeros to their bags): %s",
      layer.c_str(), when, text);
}

void DeferredErrors::poll(const std::string& layer) noexcept {
  if (!d_) return;
  char text[DD_MSG_LEN];
  // The plugin clears the device record before every launch itself: nothing to clear here.
  const int rc = dd_deferred_poll(d_, nullptr, nullptr, 0, text, sizeof(text));
  report(rc, text, layer, "reported at the next enqueue");
}

void DeferredErrors::drain(const std::string& layer) noexcept {
  if (!d_) return;
  char text[DD_MSG_LEN];
  const int rc = dd_deferred_poll(d_, nullptr, nullptr, 1, text, sizeof(text));
  report(rc, text, layer, "reported at teardown");
}

// ---------------------------------------------------------------------------------------------
// The plugin

EmbeddingBagPlugin::EmbeddingBagPlugin(std::string layer_name, const dd_config& cfg)
    : layer_(std::move(layer_name)), values_(field_values(cfg)), cfg_(cfg),
      tables_(static_cast<size_t>(cfg.num_tables > 0 ? cfg.num_tables : 0)) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), "tables=%d dim=%d dtype=%s out_dtype=%s mode=%s variant=%s check=%s pinned_rows=%lld",
                cfg_.num_tables, cfg_.dim, dd_name("dtype", cfg_.dtype), dd_name("out_dtype", cfg_.out_dtype),
                dd_name("mode", cfg_.mode), dd_name("variant", cfg_.variant), dd_name("check", cfg_.check),
                static_cast<long long>(cfg_.pinned_rows));
  metadata_ = buf;
}

EmbeddingBagPlugin::~EmbeddingBagPlugin() { errors_.drain(layer_); }

bool EmbeddingBagPlugin::error(const char* fmt, ...) const noexcept {
  char buf[DD_MSG_LEN + 128];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  log(Severity::kERROR, "EmbeddingBag layer '%s': %s", layer_.c_str(), buf);
  return false;
}

EmbeddingBagPlugin* EmbeddingBagPlugin::create(const char* layer_name, const PluginFieldCollection* fc) noexcept {
  const std::string layer = layer_name ? layer_name : "";
  const int32_t nb = fc ? fc->nbFields : 0;
  for (int32_t j = 0; j < nb; ++j) {
    const char* name = fc->fields[j].name;
    if (name && !known_field(name)) {
      log(Severity::kERROR, "EmbeddingBag layer '%s': unknown field '%s' (the op contract's fields: see "
          "docs/op_contract.md)", layer.c_str(), name);
      return nullptr;
    }
  }
  char msg[DD_MSG_LEN];
  dd_config cfg;
  FieldReader reader{fc, {}, {}};
  if (dd_config_parse(&cfg, get_field, &reader, DD_INT64, msg, sizeof(msg)) != DD_OK) {
    log(Severity::kERROR, "EmbeddingBag layer '%s': %s", layer.c_str(), msg);
    return nullptr;
  }
  return new (std::nothrow) EmbeddingBagPlugin(layer, cfg);
}

EmbeddingBagPlugin* EmbeddingBagPlugin::copy() const noexcept {
  auto* p = new (std::nothrow) EmbeddingBagPlugin(layer_, cfg_);
  if (p) p->layout_ = layout_;
  return p;
}

nvinfer1::IPluginCapability* EmbeddingBagPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* EmbeddingBagPlugin::clone() noexcept { return copy(); }

InputLayout EmbeddingBagPlugin::layout_for(int32_t nb_inputs, int32_t nb_outputs) const noexcept {
  if (nb_outputs != 1) return error("has one output, got %d", nb_outputs), InputLayout{};
  const InputLayout l = InputLayout::of(cfg_.num_tables, nb_inputs);
  if (l.valid) return l;
  const int32_t T = cfg_.num_tables;
  if (T == 1)
    error("expects 3 or 4 inputs (weights, indices, offsets[, per_sample_weights]), got %d", nb_inputs);
  else
    error("expects weights, then the %d tables' indices, their offsets and optionally their per_sample_weights "
          "(%d or %d inputs), or the packed form's weights, indices, offsets[, per_sample_weights] (3 or 4 inputs); "
          "got %d inputs", T, 1 + 2 * T, 1 + 3 * T, nb_inputs);
  return l;
}

bool EmbeddingBagPlugin::check_tensors(const PluginTensorDesc* in, int32_t nb_inputs, const PluginTensorDesc* out,
                                       int32_t nb_outputs, bool concrete) noexcept {
  const InputLayout l = layout_for(nb_inputs, nb_outputs);
  if (!l.valid) return false;
  for (int32_t i = 0; i < nb_inputs; ++i)
    if (in[i].format != TensorFormat::kLINEAR) return error("%s must have the linear format", input_label(l, i).text);
  if (!weights_type_ok(cfg_.dtype, in[kWeights].type))
    return error("weights are %s but dtype=%s needs %s", type_name(in[kWeights].type), dd_name("dtype", cfg_.dtype),
                 weights_wanted(cfg_.dtype));
  const DataType it = in[l.indices(0)].type;
  if (!index_type(it)) return error("%s must be int32 or int64, got %s", input_label(l, l.indices(0)).text, type_name(it));
  for (int32_t i = l.indices(0) + 1; i < l.index_inputs_end(); ++i)
    if (in[i].type != it)
      return error("%s (%s) must have the element type of %s (%s)", input_label(l, i).text, type_name(in[i].type),
                   input_label(l, l.indices(0)).text, type_name(it));
  for (int32_t g = 0; l.weighted && g < l.groups; ++g)
    if (in[l.weights(g)].type != DataType::kFLOAT)
      return error("%s must be float32, got %s", input_label(l, l.weights(g)).text, type_name(in[l.weights(g)].type));
  if (l.weighted && cfg_.mode != DD_SUM) return error("per_sample_weights need mode=sum (as in PyTorch)");
  if (out[0].type != output_type(cfg_.out_dtype))
    return error("output is %s but out_dtype=%s", type_name(out[0].type), dd_name("out_dtype", cfg_.out_dtype));

  const nvinfer1::Dims& w = in[kWeights].dims;
  char text[DD_MSG_LEN];
  int64_t wdims[nvinfer1::Dims::MAX_DIMS] = {};  // -1 (unknown at build time) passes
  for (int32_t i = 0; i < w.nbDims && i < nvinfer1::Dims::MAX_DIMS; ++i) wdims[i] = w.d[i];
  // Row-wise rows viewed as wider elements: the core checks the row bytes.
  const int64_t view = rowwise(cfg_.dtype) ? weights_elem_bytes(in[kWeights].type) : 1;
  if (w.nbDims == 2 && wdims[1] >= 0) wdims[1] *= view;
  if (dd_check_weights_shape(&cfg_, w.nbDims, wdims, text, sizeof(text)) != DD_OK) {
    if (view == 4)  // the core counts bytes: say what the int32 view was
      return error("weights are int32 [%lld, %lld] (a view of the row bytes: [rows, row_bytes / 4]), as bytes: %s",
                   static_cast<long long>(w.d[0]), static_cast<long long>(w.d[1]), text);
    return error("%s", text);
  }
  for (int32_t i = l.indices(0); i < nb_inputs; ++i)
    if (in[i].dims.nbDims != 1) return error("%s must have rank 1, got rank %d", input_label(l, i).text, in[i].dims.nbDims);
  for (int32_t g = 0; l.weighted && g < l.groups; ++g) {
    const int64_t n = in[l.indices(g)].dims.d[0], m = in[l.weights(g)].dims.d[0];
    if (n >= 0 && m >= 0 && m != n)
      return error("%s has %lld entries, %s %lld", input_label(l, l.weights(g)).text, static_cast<long long>(m),
                   input_label(l, l.indices(g)).text, static_cast<long long>(n));
  }
  return check_bags(in, l, out, concrete);
}

bool EmbeddingBagPlugin::check_bags(const PluginTensorDesc* in, const InputLayout& l, const PluginTensorDesc* out,
                                    bool concrete) noexcept {
  const int64_t ilo = cfg_.include_last_offset ? 1 : 0;
  int64_t batch = -1;
  if (l.per_table) {
    // Every table has one bag per sample: B + include_last_offset offsets each.
    const int64_t first = in[l.offsets(0)].dims.d[0];
    for (int32_t g = 0; g < l.groups; ++g) {
      const int64_t n = in[l.offsets(g)].dims.d[0];
      if (n < 0) continue;  // not known yet (build time)
      if (n < ilo) return error("%s is empty; include_last_offset=1 needs batch + 1 entries", input_label(l, l.offsets(g)).text);
      if (first >= 0 && n != first)
        return error("%s holds %lld bags but %s %lld: every table needs one bag per sample",
                     input_label(l, l.offsets(g)).text, static_cast<long long>(n - ilo),
                     input_label(l, l.offsets(0)).text, static_cast<long long>(first - ilo));
    }
    batch = first >= 0 ? first - ilo : -1;
  } else if (concrete) {
    char msg[DD_MSG_LEN];
    batch = dd_batch_size(&cfg_, in[l.offsets(0)].dims.d[0], msg, sizeof(msg));
    if (batch < 0) return error("%s", msg);
  }
  if (concrete && (batch < 0 || out[0].dims.nbDims != 2 || out[0].dims.d[0] != batch ||
                   out[0].dims.d[1] != static_cast<int64_t>(cfg_.num_tables) * cfg_.dim))
    return error("output must be [%lld, %lld]", static_cast<long long>(batch),
                 static_cast<long long>(cfg_.num_tables) * cfg_.dim);
  return true;
}

int32_t EmbeddingBagPlugin::configurePlugin(const DynamicPluginTensorDesc* in, int32_t nb_inputs,
                                            const DynamicPluginTensorDesc* out, int32_t nb_outputs) noexcept {
  const InputLayout l = layout_for(nb_inputs, nb_outputs);
  if (!l.valid) return 1;
  try {
    std::vector<PluginTensorDesc> ins(static_cast<size_t>(nb_inputs));
    for (int32_t i = 0; i < nb_inputs; ++i) ins[i] = in[i].desc;
    const PluginTensorDesc outs[1] = {out[0].desc};
    if (!check_tensors(ins.data(), nb_inputs, outs, nb_outputs, false)) return 1;
  } catch (const std::bad_alloc&) {
    return error("out of host memory"), 1;
  }
  layout_ = l;
  cfg_.index_type = in[l.indices(0)].desc.type == DataType::kINT64 ? DD_INT64 : DD_INT32;
  setup_l2();
  return 0;
}

int32_t EmbeddingBagPlugin::getOutputDataTypes(DataType* output_types, int32_t nb_outputs, const DataType* input_types,
                                               int32_t nb_inputs) const noexcept {
  const InputLayout l = layout_for(nb_inputs, nb_outputs);
  if (!l.valid) return 1;
  // Called when the layer is added (the ONNX parser's import): row-wise weights of a type TensorRT
  // cannot hand a plugin (uint8, as exported) fail here with the fix, not later as "no supported
  // format" in the builder. (Float tables' types are checked in configurePlugin, as before.)
  if (rowwise(cfg_.dtype) && !weights_type_ok(cfg_.dtype, input_types[kWeights]))
    return error("weights are %s but dtype=%s needs %s%s", type_name(input_types[kWeights]), dd_name("dtype", cfg_.dtype),
                 weights_wanted(cfg_.dtype),
                 input_types[kWeights] == DataType::kUINT8
                     ? ": TensorRT plugins take no uint8 inputs; build with `dlrm-deploy trt-build` (or write the "
                       "model with its --save-onnx), which hands the row bytes to TensorRT as int32"
                     : ""), 1;
  const DataType it = input_types[l.indices(0)];
  if (!index_type(it)) return error("indices must be int32 or int64, got %s", type_name(it)), 1;
  for (int32_t i = l.indices(0) + 1; i < l.index_inputs_end(); ++i)
    if (input_types[i] != it)
      return error("%s (%s) must have the element type of %s (%s)", input_label(l, i).text, type_name(input_types[i]),
                   input_label(l, l.indices(0)).text, type_name(it)), 1;
  output_types[0] = output_type(cfg_.out_dtype);
  return 0;
}

int32_t EmbeddingBagPlugin::getOutputShapes(const DimsExprs* inputs, int32_t nb_inputs, const DimsExprs*, int32_t,
                                            DimsExprs* outputs, int32_t nb_outputs,
                                            nvinfer1::IExprBuilder& builder) noexcept {
  const InputLayout l = layout_for(nb_inputs, nb_outputs);
  if (!l.valid) return 1;
  const DimsExprs& offsets = inputs[l.offsets(0)];
  if (offsets.nbDims != 1)
    return error("%s must have rank 1, got %d", input_label(l, l.offsets(0)).text, offsets.nbDims), 1;
  // Per-table form: B = len(offsets of table 0) - include_last_offset (onShapeChange checks that the
  // other tables agree). Packed form: B = (len(offsets) - include_last_offset) / T, bag b of table t
  // being offsets entry t*B + b.
  const IDimensionExpr* bags = offsets.d[0];
  if (cfg_.include_last_offset)
    bags = builder.operation(nvinfer1::DimensionOperation::kSUB, *bags, *builder.constant(1));
  const IDimensionExpr* batch = l.per_table || cfg_.num_tables == 1 || !bags ? bags
      : builder.operation(nvinfer1::DimensionOperation::kFLOOR_DIV, *bags, *builder.constant(cfg_.num_tables));
  if (!batch) return error("could not build the output shape expression"), 1;
  outputs[0].nbDims = 2;
  outputs[0].d[0] = batch;
  outputs[0].d[1] = builder.constant(static_cast<int64_t>(cfg_.num_tables) * cfg_.dim);
  return 0;
}

bool EmbeddingBagPlugin::supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* in_out,
                                                   int32_t nb_inputs, int32_t nb_outputs) noexcept {
  const InputLayout l = InputLayout::of(cfg_.num_tables, nb_inputs);
  if (!l.valid || nb_outputs != 1 || pos < 0 || pos > nb_inputs) return false;
  const PluginTensorDesc& d = in_out[pos].desc;
  if (d.format != TensorFormat::kLINEAR) return false;
  if (pos == kWeights) return weights_type_ok(cfg_.dtype, d.type);
  // Every indices and offsets input has the first indices input's type.
  if (pos == l.indices(0)) return index_type(d.type);
  if (pos < l.index_inputs_end()) return d.type == in_out[l.indices(0)].desc.type;
  if (pos < nb_inputs) return d.type == DataType::kFLOAT;  // per_sample_weights
  return d.type == output_type(cfg_.out_dtype);
}

size_t EmbeddingBagPlugin::getWorkspaceSize(const DynamicPluginTensorDesc*, int32_t, const DynamicPluginTensorDesc*,
                                            int32_t) const noexcept {
  return dd_workspace_size(&cfg_);
}

void EmbeddingBagPlugin::setup_l2() noexcept {
  if (l2_done_ || !dd_uses_l2(&cfg_)) return;
  l2_done_ = true;
  size_t reserved = 0;
  char msg[DD_MSG_LEN];
  if (dd_setup_l2_persistence(&cfg_, &reserved, msg, sizeof(msg)) == DD_OK)
    log(Severity::kINFO, "EmbeddingBag layer '%s': persisting L2 for the hot rows: %zu bytes", layer_.c_str(), reserved);
  else
    log(Severity::kWARNING, "EmbeddingBag layer '%s': no persisting L2 for the hot rows (%s)", layer_.c_str(), msg);
}

int32_t EmbeddingBagPlugin::onShapeChange(const PluginTensorDesc* in, int32_t nb_inputs, const PluginTensorDesc* out,
                                          int32_t nb_outputs) noexcept {
  if (!check_tensors(in, nb_inputs, out, nb_outputs, true)) return 1;
  layout_ = InputLayout::of(cfg_.num_tables, nb_inputs);
  cfg_.index_type = in[layout_.indices(0)].type == DataType::kINT64 ? DD_INT64 : DD_INT32;
  if (cfg_.check != DD_UNCHECKED && !errors_.ready() && !errors_.allocate())
    log(Severity::kWARNING, "EmbeddingBag layer '%s': no pinned memory for deferred error reports; bad input will "
        "still read nothing out of bounds but will not be logged", layer_.c_str());
  return 0;
}

int32_t EmbeddingBagPlugin::enqueue(const PluginTensorDesc* input_desc, const PluginTensorDesc*,
                                    const void* const* inputs, void* const* outputs, void* workspace,
                                    cudaStream_t stream) noexcept {
  errors_.poll(layer_);
  const InputLayout& l = layout_;
  if (!l.valid) return error("enqueue before configurePlugin/onShapeChange: the inputs' layout is unknown"), 1;
  if (l.per_table && tables_.size() != static_cast<size_t>(l.groups))
    return error("table buffer holds %zu tables, expected %d", tables_.size(), l.groups), 1;
  dd_config c = cfg_;
  c.index_type = input_desc[l.indices(0)].type == DataType::kINT64 ? DD_INT64 : DD_INT32;
  // No synchronisation inside enqueue (CUDA graphs, async execution): "checked" runs as "deferred".
  const bool checked = c.check != DD_UNCHECKED;
  if (checked) {
    c.check = DD_DEFERRED;
    if (!workspace) return error("check=%s needs the workspace TensorRT was asked for", dd_name("check", cfg_.check)), 1;
    // The record holds the first error since it was cleared: clear it so that each enqueue reports its own.
    char text[DD_MSG_LEN];
    if (dd_clear_error(workspace, stream, text, sizeof(text)) != DD_OK) return error("%s", text), 1;
  }
  char msg[DD_MSG_LEN];
  int st;
  if (l.per_table) {
    // Host structs of device pointers, in a buffer sized at construction: no allocation here.
    for (int32_t g = 0; g < l.groups; ++g) {
      dd_table_lookups& t = tables_[static_cast<size_t>(g)];
      t.indices = inputs[l.indices(g)];
      t.offsets = inputs[l.offsets(g)];
      t.per_sample_weights = l.weighted ? static_cast<const float*>(inputs[l.weights(g)]) : nullptr;
      t.num_indices = input_desc[l.indices(g)].dims.d[0];
      t.num_offsets = input_desc[l.offsets(g)].dims.d[0];
      t.indices_name = t.offsets_name = nullptr;  // TensorRT gives a plugin no tensor names
    }
    // inputs[kWeights]: the packed rows as bytes, whatever element type TensorRT's view of them has.
    st = dd_forward_tables_cuda(&c, inputs[kWeights], tables_.data(), outputs[0], workspace, stream, msg, sizeof(msg));
  } else {
    const float* psw = l.weighted ? static_cast<const float*>(inputs[l.weights(0)]) : nullptr;
    st = dd_forward_cuda(&c, inputs[kWeights], inputs[l.indices(0)], inputs[l.offsets(0)], psw,
                         input_desc[l.indices(0)].dims.d[0], input_desc[l.offsets(0)].dims.d[0], outputs[0],
                         workspace, stream, msg, sizeof(msg));
  }
  if (st != DD_OK) return error("%s", msg), st;
  if (checked) errors_.after_launch(workspace, stream);
  return 0;
}

nvinfer1::IPluginV3* EmbeddingBagPlugin::attachToContext(nvinfer1::IPluginResourceContext*) noexcept {
  EmbeddingBagPlugin* p = copy();
  if (!p) return nullptr;
  // Per-context initialisation, outside enqueue: L2 persistence for the hot rows, the error record.
  p->setup_l2();
  if (p->cfg_.check != DD_UNCHECKED) p->errors_.allocate();
  return p;
}

const PluginFieldCollection* EmbeddingBagPlugin::getFieldsToSerialize() noexcept {
  // Every contract field with its value (defaults included): the engine needs nothing else at runtime
  // (the index type comes from the tensors).
  serialized_.clear();
  for (const FieldValue& v : values_) {
    if (v.kind == DD_KIND_STRING)
      serialized_.emplace_back(v.name.c_str(), v.text.c_str(), PluginFieldType::kCHAR,
                               static_cast<int32_t>(v.text.size() + 1));
    else
      serialized_.emplace_back(v.name.c_str(), v.ints.data(), PluginFieldType::kINT64,
                               static_cast<int32_t>(v.ints.size()));
  }
  serialized_fc_.nbFields = static_cast<int32_t>(serialized_.size());
  serialized_fc_.fields = serialized_.data();
  return &serialized_fc_;
}

// ---------------------------------------------------------------------------------------------
// The creator

EmbeddingBagCreator::EmbeddingBagCreator() {
  int32_t count = 0;
  const dd_field* contract = dd_fields(&count);
  for (int32_t i = 0; i < count; ++i) {
    // The types TensorRT's ONNX parser passes for INT, INTS and STRING attributes (kINT64 accepted too).
    const PluginFieldType type = contract[i].kind == DD_KIND_STRING ? PluginFieldType::kCHAR : PluginFieldType::kINT32;
    fields_.emplace_back(contract[i].name, nullptr, type, contract[i].kind == DD_KIND_INT ? 1 : 0);
  }
  field_names_.nbFields = static_cast<int32_t>(fields_.size());
  field_names_.fields = fields_.data();
}

nvinfer1::IPluginV3* EmbeddingBagCreator::createPlugin(const char* name, const PluginFieldCollection* fc,
                                                       nvinfer1::TensorRTPhase) noexcept {
  return EmbeddingBagPlugin::create(name, fc);
}

}  // namespace dlrm_deploy_trt
