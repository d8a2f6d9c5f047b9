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

constexpr int kWeights = 0, kIndices = 1, kOffsets = 2, kPerSampleWeights = 3;
const char* const kInputNames[] = {"weights", "indices", "offsets", "per_sample_weights"};

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

// Element type of the weights input for a table dtype. int8 row-wise rows are raw bytes: uint8 as
// exported, int8 accepted too (same bytes; some TensorRT versions import uint8 constants as int8).
bool weights_type_ok(int32_t dtype, DataType t) {
  switch (dtype) {
    case DD_FP32: return t == DataType::kFLOAT;
    case DD_FP16: return t == DataType::kHALF;
    case DD_BF16: return t == DataType::kBF16;
    case DD_INT8: return t == DataType::kUINT8 || t == DataType::kINT8;
    default: return false;
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

}  // namespace

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

EmbeddingBagPlugin::EmbeddingBagPlugin(std::string layer_name, std::vector<FieldValue> values, const dd_config& cfg)
    : layer_(std::move(layer_name)), values_(std::move(values)), cfg_(cfg) {
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
  char msg[DD_MSG_LEN];
  int32_t count = 0;
  const dd_field* contract = dd_fields(&count);
  std::vector<FieldValue> values(static_cast<size_t>(count));
  std::vector<bool> given(static_cast<size_t>(count), false);
  for (int32_t i = 0; i < count; ++i) {
    values[i].name = contract[i].name;
    values[i].kind = contract[i].kind;
  }
  const int32_t nb = fc ? fc->nbFields : 0;
  for (int32_t j = 0; j < nb; ++j) {
    const PluginField& f = fc->fields[j];
    if (!f.name) continue;
    int32_t i = 0;
    while (i < count && std::strcmp(contract[i].name, f.name) != 0) ++i;
    if (i == count) {
      log(Severity::kERROR, "EmbeddingBag layer '%s': unknown field '%s' (the op contract's fields: see "
          "docs/op_contract.md)", layer.c_str(), f.name);
      return nullptr;
    }
    FieldValue& v = values[i];
    if (v.kind == 1) {
      if (f.type != PluginFieldType::kCHAR || (f.length > 0 && !f.data)) {
        log(Severity::kERROR, "EmbeddingBag layer '%s': field '%s' must be a string (kCHAR)", layer.c_str(), f.name);
        return nullptr;
      }
      const char* s = static_cast<const char*>(f.data);
      v.text = f.length > 0 ? std::string(s, strnlen(s, static_cast<size_t>(f.length))) : std::string();
    } else {
      if (!read_ints(f, &v.ints) || (v.kind == 0 && v.ints.size() != 1)) {
        log(Severity::kERROR, "EmbeddingBag layer '%s': field '%s' must be %s (kINT32 or kINT64)", layer.c_str(),
            f.name, v.kind == 0 ? "one integer" : "a list of integers");
        return nullptr;
      }
    }
    given[i] = true;
  }

  dd_config cfg;
  dd_config_init(&cfg);
  for (int32_t i = 0; i < count; ++i) {
    FieldValue& v = values[i];
    if (!given[i]) {
      const char* def = contract[i].default_value;
      if (!def || !*def) {
        log(Severity::kERROR, "EmbeddingBag layer '%s': required field '%s' is missing (%s)", layer.c_str(),
            contract[i].name, contract[i].doc);
        return nullptr;
      }
      if (v.kind == 1) v.text = def;
      else v.ints = {std::strtoll(def, nullptr, 10)};  // contract defaults of lists are "" (required)
    }
    int st = DD_OK;
    if (v.kind == 0) st = dd_config_set_int(&cfg, v.name.c_str(), v.ints[0], msg, sizeof(msg));
    else if (v.kind == 1) st = dd_config_set_string(&cfg, v.name.c_str(), v.text.c_str(), msg, sizeof(msg));
    else st = dd_config_set_ints(&cfg, v.name.c_str(), v.ints.data(), static_cast<int64_t>(v.ints.size()), msg, sizeof(msg));
    if (st != DD_OK) {
      log(Severity::kERROR, "EmbeddingBag layer '%s': %s", layer.c_str(), msg);
      return nullptr;
    }
  }
  if (dd_config_validate(&cfg, msg, sizeof(msg)) != DD_OK) {
    log(Severity::kERROR, "EmbeddingBag layer '%s': %s", layer.c_str(), msg);
    return nullptr;
  }
  return new (std::nothrow) EmbeddingBagPlugin(layer, std::move(values), cfg);
}

EmbeddingBagPlugin* EmbeddingBagPlugin::copy() const noexcept {
  auto* p = new (std::nothrow) EmbeddingBagPlugin(layer_, values_, cfg_);
  if (p) p->nb_inputs_ = nb_inputs_;
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

bool EmbeddingBagPlugin::check_tensors(const PluginTensorDesc* in, int32_t nb_inputs, const PluginTensorDesc* out,
                                       int32_t nb_outputs, bool concrete) noexcept {
  if (nb_inputs != 3 && nb_inputs != 4)
    return error("expects 3 or 4 inputs (weights, indices, offsets[, per_sample_weights]), got %d", nb_inputs);
  if (nb_outputs != 1) return error("has one output, got %d", nb_outputs);
  for (int32_t i = 0; i < nb_inputs; ++i)
    if (in[i].format != TensorFormat::kLINEAR) return error("input '%s' must have the linear format", kInputNames[i]);
  if (!weights_type_ok(cfg_.dtype, in[kWeights].type))
    return error("weights are %s but dtype=%s needs %s", type_name(in[kWeights].type), dd_name("dtype", cfg_.dtype),
                 cfg_.dtype == DD_INT8 ? "uint8 [rows, row_bytes]" : type_name(output_type(cfg_.dtype)));
  if (!index_type(in[kIndices].type)) return error("indices must be int32 or int64, got %s", type_name(in[kIndices].type));
  if (in[kOffsets].type != in[kIndices].type)
    return error("offsets (%s) must have the element type of indices (%s)", type_name(in[kOffsets].type),
                 type_name(in[kIndices].type));
  if (nb_inputs == 4 && in[kPerSampleWeights].type != DataType::kFLOAT)
    return error("per_sample_weights must be float32, got %s", type_name(in[kPerSampleWeights].type));
  if (nb_inputs == 4 && cfg_.mode != DD_SUM) return error("per_sample_weights need mode=sum (as in PyTorch)");
  if (out[0].type != output_type(cfg_.out_dtype))
    return error("output is %s but out_dtype=%s", type_name(out[0].type), dd_name("out_dtype", cfg_.out_dtype));

  const nvinfer1::Dims& w = in[kWeights].dims;
  if (w.nbDims != 2) return error("weights must have rank 2 [total_rows, %s], got rank %d",
                                  cfg_.dtype == DD_INT8 ? "row_bytes" : "dim", w.nbDims);
  const int64_t cols = cfg_.dtype == DD_INT8 ? dd_row_bytes(&cfg_) : cfg_.dim;
  if (w.d[1] >= 0 && w.d[1] != cols)
    return error("weights have %lld columns; dtype=%s, dim=%d needs %lld", static_cast<long long>(w.d[1]),
                 dd_name("dtype", cfg_.dtype), cfg_.dim, static_cast<long long>(cols));
  if (w.d[0] >= 0 && w.d[0] != dd_total_rows(&cfg_))
    return error("weights have %lld rows; table_rows add up to %lld", static_cast<long long>(w.d[0]),
                 static_cast<long long>(dd_total_rows(&cfg_)));
  for (int32_t i = kIndices; i < nb_inputs; ++i)
    if (in[i].dims.nbDims != 1) return error("%s must have rank 1, got rank %d", kInputNames[i], in[i].dims.nbDims);
  const int64_t n = in[kIndices].dims.d[0];
  if (nb_inputs == 4 && n >= 0 && in[kPerSampleWeights].dims.d[0] >= 0 && in[kPerSampleWeights].dims.d[0] != n)
    return error("per_sample_weights has %lld entries, indices %lld",
                 static_cast<long long>(in[kPerSampleWeights].dims.d[0]), static_cast<long long>(n));
  if (concrete) {
    char msg[DD_MSG_LEN];
    const int64_t batch = dd_batch_size(&cfg_, in[kOffsets].dims.d[0], msg, sizeof(msg));
    if (batch < 0) return error("%s", msg);
    if (out[0].dims.nbDims != 2 || out[0].dims.d[0] != batch ||
        out[0].dims.d[1] != static_cast<int64_t>(cfg_.num_tables) * cfg_.dim)
      return error("output must be [%lld, %lld]", static_cast<long long>(batch),
                   static_cast<long long>(cfg_.num_tables) * cfg_.dim);
  }
  return true;
}

int32_t EmbeddingBagPlugin::configurePlugin(const DynamicPluginTensorDesc* in, int32_t nb_inputs,
                                            const DynamicPluginTensorDesc* out, int32_t nb_outputs) noexcept {
  if (nb_inputs < 3 || nb_inputs > 4 || nb_outputs != 1)
    return error("expects 3 or 4 inputs and 1 output, got %d and %d", nb_inputs, nb_outputs), 1;
  PluginTensorDesc ins[4], outs[1];
  for (int32_t i = 0; i < nb_inputs; ++i) ins[i] = in[i].desc;
  outs[0] = out[0].desc;
  if (!check_tensors(ins, nb_inputs, outs, nb_outputs, false)) return 1;
  nb_inputs_ = nb_inputs;
  cfg_.index_type = in[kIndices].desc.type == DataType::kINT64 ? DD_INT64 : DD_INT32;
  setup_l2();
  return 0;
}

int32_t EmbeddingBagPlugin::getOutputDataTypes(DataType* output_types, int32_t nb_outputs, const DataType* input_types,
                                               int32_t nb_inputs) const noexcept {
  if (nb_outputs != 1 || nb_inputs < 3 || nb_inputs > 4)
    return error("expects 3 or 4 inputs and 1 output, got %d and %d", nb_inputs, nb_outputs), 1;
  if (!index_type(input_types[kIndices]) || input_types[kOffsets] != input_types[kIndices])
    return error("indices and offsets must both be int32 or both int64 (got %s and %s)",
                 type_name(input_types[kIndices]), type_name(input_types[kOffsets])), 1;
  output_types[0] = output_type(cfg_.out_dtype);
  return 0;
}

int32_t EmbeddingBagPlugin::getOutputShapes(const DimsExprs* inputs, int32_t nb_inputs, const DimsExprs*, int32_t,
                                            DimsExprs* outputs, int32_t nb_outputs,
                                            nvinfer1::IExprBuilder& builder) noexcept {
  if (nb_outputs != 1 || nb_inputs < 3 || nb_inputs > 4)
    return error("expects 3 or 4 inputs and 1 output, got %d and %d", nb_inputs, nb_outputs), 1;
  if (inputs[kOffsets].nbDims != 1) return error("offsets must have rank 1, got %d", inputs[kOffsets].nbDims), 1;
  // B = (len(offsets) - include_last_offset) / T: bag b of table t is offsets entry t*B + b.
  const IDimensionExpr* bags = inputs[kOffsets].d[0];
  if (cfg_.include_last_offset)
    bags = builder.operation(nvinfer1::DimensionOperation::kSUB, *bags, *builder.constant(1));
  const IDimensionExpr* batch = cfg_.num_tables == 1 ? bags
      : builder.operation(nvinfer1::DimensionOperation::kFLOOR_DIV, *bags, *builder.constant(cfg_.num_tables));
  if (!batch) return error("could not build the output shape expression"), 1;
  outputs[0].nbDims = 2;
  outputs[0].d[0] = batch;
  outputs[0].d[1] = builder.constant(static_cast<int64_t>(cfg_.num_tables) * cfg_.dim);
  return 0;
}

bool EmbeddingBagPlugin::supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* in_out,
                                                   int32_t nb_inputs, int32_t) noexcept {
  const PluginTensorDesc& d = in_out[pos].desc;
  if (d.format != TensorFormat::kLINEAR) return false;
  if (pos == kWeights) return weights_type_ok(cfg_.dtype, d.type);
  if (pos == kIndices) return index_type(d.type);
  if (pos == kOffsets) return d.type == in_out[kIndices].desc.type;
  if (pos == kPerSampleWeights && pos < nb_inputs) return d.type == DataType::kFLOAT;
  return pos == nb_inputs && d.type == output_type(cfg_.out_dtype);
}

size_t EmbeddingBagPlugin::getWorkspaceSize(const DynamicPluginTensorDesc*, int32_t, const DynamicPluginTensorDesc*,
                                            int32_t) const noexcept {
  return dd_workspace_size(&cfg_);
}

void EmbeddingBagPlugin::setup_l2() noexcept {
  if (l2_done_ || cfg_.pinned_rows <= 0) return;
  if (cfg_.variant != DD_AUTO && cfg_.variant != DD_L2PIN && cfg_.variant != DD_COMBINED) return;
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
  if (nb_inputs < 3 || nb_inputs > 4 || nb_outputs != 1)
    return error("expects 3 or 4 inputs and 1 output, got %d and %d", nb_inputs, nb_outputs), 1;
  if (!check_tensors(in, nb_inputs, out, nb_outputs, true)) return 1;
  nb_inputs_ = nb_inputs;
  cfg_.index_type = in[kIndices].type == DataType::kINT64 ? DD_INT64 : DD_INT32;
  if (cfg_.check != DD_UNCHECKED && !errors_.ready() && !errors_.allocate())
    log(Severity::kWARNING, "EmbeddingBag layer '%s': no pinned memory for deferred error reports; bad input will "
        "still read nothing out of bounds but will not be logged", layer_.c_str());
  return 0;
}

int32_t EmbeddingBagPlugin::enqueue(const PluginTensorDesc* input_desc, const PluginTensorDesc*,
                                    const void* const* inputs, void* const* outputs, void* workspace,
                                    cudaStream_t stream) noexcept {
  errors_.poll(layer_);
  dd_config c = cfg_;
  c.index_type = input_desc[kIndices].type == DataType::kINT64 ? DD_INT64 : DD_INT32;
  // No synchronisation inside enqueue (CUDA graphs, async execution): "checked" runs as "deferred".
  const bool checked = c.check != DD_UNCHECKED;
  if (checked) {
    c.check = DD_DEFERRED;
    if (!workspace) return error("check=%s needs the workspace TensorRT was asked for", dd_name("check", cfg_.check)), 1;
    // The record holds the first error since it was cleared: clear it so that each enqueue reports its own.
    if (cudaMemsetAsync(workspace, 0, dd_workspace_size(&c), stream) != cudaSuccess)
      return error("cudaMemsetAsync of the workspace failed: %s", cudaGetErrorString(cudaGetLastError())), 1;
  }
  const float* psw = nb_inputs_ == 4 ? static_cast<const float*>(inputs[kPerSampleWeights]) : nullptr;
  char msg[DD_MSG_LEN];
  const int st = dd_forward_cuda(&c, inputs[kWeights], inputs[kIndices], inputs[kOffsets], psw,
                                 input_desc[kIndices].dims.d[0], input_desc[kOffsets].dims.d[0], outputs[0], workspace,
                                 stream, msg, sizeof(msg));
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
    if (v.kind == 1)
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
    const PluginFieldType type = contract[i].kind == 1 ? PluginFieldType::kCHAR : PluginFieldType::kINT32;
    fields_.emplace_back(contract[i].name, nullptr, type, contract[i].kind == 0 ? 1 : 0);
  }
  field_names_.nbFields = static_cast<int32_t>(fields_.size());
  field_names_.fields = fields_.data();
}

nvinfer1::IPluginV3* EmbeddingBagCreator::createPlugin(const char* name, const PluginFieldCollection* fc,
                                                       nvinfer1::TensorRTPhase) noexcept {
  return EmbeddingBagPlugin::create(name, fc);
}

}  // namespace dlrm_deploy_trt
