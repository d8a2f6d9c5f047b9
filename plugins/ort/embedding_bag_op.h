// ONNX Runtime adapter of dlrm_deploy::EmbeddingBag: translates ORT tensors and node attributes into
// a dd_config plus pointers and calls the kernel core (dd_forward_cpu / dd_forward_cuda). No kernel
// logic and no attribute parsing of its own live here.
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "dlrm_deploy/embedding_bag.h"
#include "op_glue.h"

namespace dd_ort {

class EmbeddingBagKernel {
 public:
  // Reads the attributes through the core's parser; *status is non-null (and the kernel unusable)
  // when they are invalid or do not fit the node's input/output types.
  EmbeddingBagKernel(const OrtKernelInfo* info, Provider provider, ONNXTensorElementDataType weights_type,
                     ONNXTensorElementDataType index_type, OrtStatusPtr* status);
  ~EmbeddingBagKernel();
  EmbeddingBagKernel(const EmbeddingBagKernel&) = delete;
  EmbeddingBagKernel& operator=(const EmbeddingBagKernel&) = delete;

  OrtStatusPtr ComputeV2(OrtKernelContext* context);
  // check=checked captured into a CUDA graph: the last replay's first bad input (DD_ERR_INPUT and
  // msg) or DD_OK; each report once.
  int CapturedError(char* msg, size_t len) const;

 private:
  OrtStatusPtr Init(const OrtKernelInfo* info);
  OrtStatusPtr Compute(OrtKernelContext* context);
  OrtStatusPtr Error(OrtErrorCode code, const std::string& what) const;
  // The call's tensors in the core's per-table form (checks ranks, types and lengths).
  OrtStatusPtr GatherTables(Ort::KernelContext& ctx, std::vector<dd_table_lookups>* tables) const;
  OrtStatusPtr Launch(OrtKernelContext* context, const void* weights, const void* indices, const void* offsets,
                      const float* psw, int64_t num_indices, int64_t num_offsets,
                      const std::vector<dd_table_lookups>* tables, void* out, char* msg);
  // The core's forward for one call, on a given workspace, stream and config (check mode); errors
  // in msg (DD_MSG_LEN bytes).
  using Forward = std::function<int(void* workspace, void* stream, const dd_config* cfg, char* msg)>;
  // overlap=1 on CUDA: the lookups on the op's own stream; the Join node that reads the output
  // joins it back (see join_op.h). overlap=2: the same, launched by that node.
  OrtStatusPtr LaunchOverlapped(const Forward& forward, void* stream, const void* output,
                                const std::vector<dd_table_lookups>* tables, int64_t batch, char* msg);
  // Persistent workspace and pinned record for a later capture (outside capture only).
  OrtStatusPtr PrepareCapture(void* stream);
  int LaunchCaptured(const Forward& forward, void* stream, char* msg);
  int LaunchDeferred(const Forward& forward, void* stream, char* msg);
  void ForgetCaptured() const;
  const dd_table_lookups* Names() const { return names_.empty() ? nullptr : names_.data(); }
  // Writes an earlier run's bad input (check=deferred) to stderr.
  void ReportDeferred(const char* text) const;

  dd_config cfg_;
  Provider provider_;
  ONNXTensorElementDataType weights_type_;
  ONNXTensorElementDataType index_type_;
  std::string node_name_;
  std::vector<std::string> input_names_;  // the node's input names, for error messages
  std::vector<dd_table_lookups> names_;   // per-table form: names only (for records read later)
  // check=deferred keeps its error record between calls: one device workspace per kernel,
  // from the execution provider's allocator.
  std::mutex workspace_mutex_;
  OrtAllocator* workspace_allocator_ = nullptr;
  void* persistent_workspace_ = nullptr;
  // ... and reports an earlier run's bad input (on stderr) at a later run, without synchronising.
  dd_deferred* deferred_ = nullptr;
  // overlap=1 on CUDA: the op's stream and its fork/join events.
  dd_overlap* overlap_ = nullptr;
};

// One registration of the op for one execution provider and one combination of input element
// types (weights x indices/offsets). The types are fixed per registration so that ORT's type
// inference never guesses the output type from an input: it follows the type the model declares
// for the node's output (which must equal the out_dtype attribute; the kernel checks).
struct EmbeddingBagOp : Ort::CustomOpBase<EmbeddingBagOp, EmbeddingBagKernel, /*WithStatus=*/true> {
  EmbeddingBagOp(Provider provider, ONNXTensorElementDataType weights_type, ONNXTensorElementDataType index_type);

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;

  const char* GetName() const;
  const char* GetExecutionProviderType() const;

  // weights, table 0's indices, then the rest: a heterogeneous variadic input (per-table form:
  // every table's indices, then every table's offsets, then optionally every table's
  // per-sample weights; packed form: offsets [, per_sample_weights]). The kernel checks types.
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const;
  int GetVariadicInputMinArity() const { return 1; }
  bool GetVariadicInputHomogeneity() const { return false; }

  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  // Marked optional only so that ORT accepts a dynamically typed output without a dynamically
  // typed input; the kernel always produces it.
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t) const { return INPUT_OUTPUT_OPTIONAL; }

 private:
  Provider provider_;
  ONNXTensorElementDataType weights_type_;
  ONNXTensorElementDataType index_type_;
};

}  // namespace dd_ort
