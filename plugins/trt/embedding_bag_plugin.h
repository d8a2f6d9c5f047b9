// TensorRT adapter of the kernel core: the `EmbeddingBag` IPluginV3 plugin and its creator.
//
// Name, namespace and version equal the ONNX node's op type, domain and `plugin_version` default, so
// TensorRT's ONNX parser picks this plugin for the exported nodes with no change to the ONNX file.
// Fields are the op contract's attributes (dd_fields()); their values go through the core's single
// attribute parser (dd_config_set_*). Kernel logic stays in the core (dd_forward_cuda).
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dlrm_deploy/embedding_bag.h"

namespace dlrm_deploy_trt {

// The op contract's identity, from the core (plugin name = op type, namespace = ONNX domain).
inline const char* plugin_name() noexcept { const char* v; dd_op_identity(nullptr, &v, nullptr); return v; }
inline const char* plugin_namespace() noexcept { const char* v; dd_op_identity(&v, nullptr, nullptr); return v; }
inline const char* plugin_version() noexcept { const char* v; dd_op_identity(nullptr, nullptr, &v); return v; }

// Logs through the logger TensorRT hands over with setLoggerFinder (stderr for warnings and errors
// when there is none).
void log(nvinfer1::ILogger::Severity severity, const char* fmt, ...) noexcept __attribute__((format(printf, 2, 3)));

// Where a call's tensors sit among the plugin's inputs. The input count decides the form (op
// contract): per-table (1 + 2T or 1 + 3T inputs: weights, every table's indices, every table's
// offsets, optionally every table's per_sample_weights) or packed (3 or 4 inputs for T > 1:
// weights, concatenated indices, table-major offsets[, per_sample_weights]). With T = 1 both are
// the same 3 or 4 inputs; the per-table form is used.
struct InputLayout {
  bool valid = false;
  bool per_table = false;
  bool weighted = false;  // per_sample_weights present
  int32_t groups = 0;     // tensors of each kind: T (per-table) or 1 (packed)
  int32_t indices(int32_t g) const { return 1 + g; }
  int32_t offsets(int32_t g) const { return 1 + groups + g; }
  int32_t weights(int32_t g) const { return 1 + 2 * groups + g; }
  int32_t index_inputs_end() const { return 1 + 2 * groups; }  // inputs 1 .. end-1 hold int ids/offsets
  // The layout for nb_inputs inputs of a node with num_tables tables (valid = false: no form fits).
  static InputLayout of(int32_t num_tables, int32_t nb_inputs) noexcept;
};

// One attribute value as serialized: the parsed config's value (defaults included, dd_config_get).
struct FieldValue {
  std::string name;
  int32_t kind = 0;             // dd_field_kind
  std::vector<int64_t> ints;    // DD_KIND_INT (one value) and DD_KIND_INTS
  std::string text;             // DD_KIND_STRING
};

// The first bad input of an enqueue in deferred check mode, copied from the device workspace into
// pinned host memory behind the kernel and read without synchronising once that copy has finished.
class DeferredErrors {
 public:
  DeferredErrors() = default;
  DeferredErrors(const DeferredErrors&) = delete;
  DeferredErrors& operator=(const DeferredErrors&) = delete;
  ~DeferredErrors();

  bool ready() const { return d_ != nullptr; }
  // Sets up the core's deferred reporting (not allowed inside enqueue); false on failure.
  bool allocate() noexcept;
  // Queues the copy of the record behind the launch on stream (and an event to poll when not capturing).
  void after_launch(const void* workspace, cudaStream_t stream) noexcept;
  // Logs an error recorded by an earlier enqueue whose copy has completed. Never blocks.
  void poll(const std::string& layer) noexcept;
  // Waits for the last copy and logs what it holds (teardown only).
  void drain(const std::string& layer) noexcept;

 private:
  void report(int rc, const char* text, const std::string& layer, const char* when) noexcept;
  dd_deferred* d_ = nullptr;  // the core's pinned record copy + event
};

class EmbeddingBagPlugin final : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime {
 public:
  // Parses fields through the core; returns nullptr (and logs why) on bad fields.
  static EmbeddingBagPlugin* create(const char* layer_name, const nvinfer1::PluginFieldCollection* fc) noexcept;
  ~EmbeddingBagPlugin() override;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  const char* getPluginName() const noexcept override { return plugin_name(); }
  const char* getPluginVersion() const noexcept override { return plugin_version(); }
  const char* getPluginNamespace() const noexcept override { return plugin_namespace(); }

  // IPluginV3OneBuild
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nb_inputs,
                          const nvinfer1::DynamicPluginTensorDesc* out, int32_t nb_outputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* output_types, int32_t nb_outputs,
                             const nvinfer1::DataType* input_types, int32_t nb_inputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nb_inputs, const nvinfer1::DimsExprs* shape_inputs,
                          int32_t nb_shape_inputs, nvinfer1::DimsExprs* outputs, int32_t nb_outputs,
                          nvinfer1::IExprBuilder& builder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out, int32_t nb_inputs,
                                 int32_t nb_outputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return 1; }
  size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nb_inputs,
                          const nvinfer1::DynamicPluginTensorDesc* outputs, int32_t nb_outputs) const noexcept override;
  const char* getMetadataString() noexcept override { return metadata_.c_str(); }

  // IPluginV3OneRuntime
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nb_inputs, const nvinfer1::PluginTensorDesc* out,
                        int32_t nb_outputs) noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* input_desc, const nvinfer1::PluginTensorDesc* output_desc,
                  const void* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

 private:
  EmbeddingBagPlugin(std::string layer_name, const dd_config& cfg);
  EmbeddingBagPlugin* copy() const noexcept;
  // The layout for nb_inputs inputs; logs why and returns an invalid layout when no form fits.
  InputLayout layout_for(int32_t nb_inputs, int32_t nb_outputs) const noexcept;
  // Checks ranks, types and (where known, >= 0) sizes of the tensors against the attributes: every
  // table's offsets give the same number of bags, per_sample_weights match their table's indices.
  bool check_tensors(const nvinfer1::PluginTensorDesc* in, int32_t nb_inputs, const nvinfer1::PluginTensorDesc* out,
                     int32_t nb_outputs, bool concrete) noexcept;
  // Bags per table (all equal in the per-table form) and, when concrete, the output's [B, T*D].
  bool check_bags(const nvinfer1::PluginTensorDesc* in, const InputLayout& layout, const nvinfer1::PluginTensorDesc* out,
                  bool concrete) noexcept;
  void setup_l2() noexcept;
  bool error(const char* fmt, ...) const noexcept __attribute__((format(printf, 2, 3)));

  std::string layer_;
  std::vector<FieldValue> values_;  // every contract field, in contract order
  dd_config cfg_;
  InputLayout layout_;              // from configurePlugin / onShapeChange
  std::vector<dd_table_lookups> tables_;  // per-table form: one entry per table, filled by enqueue
  bool l2_done_ = false;
  std::string metadata_;
  std::vector<nvinfer1::PluginField> serialized_;
  nvinfer1::PluginFieldCollection serialized_fc_{};
  DeferredErrors errors_;
};

class EmbeddingBagCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  EmbeddingBagCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &field_names_; }
  const char* getPluginName() const noexcept override { return plugin_name(); }
  const char* getPluginVersion() const noexcept override { return plugin_version(); }
  const char* getPluginNamespace() const noexcept override { return plugin_namespace(); }

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection field_names_{};
};

}  // namespace dlrm_deploy_trt
