// What every op of the library shares with the ORT C++ wrappers: the API version, the provider
// an op is registered for, error statuses named after the op and node, a kernel base (node name,
// provider, guarded ComputeV2) and op bases (kernel creation, provider name, float variadic I/O).
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "ort_min_api.h"  // kMinOrtApiVersion: OrtCustomOp::version and the OrtApi handed to the C++ wrappers

namespace dd_ort {

enum class Provider { kCpu, kCuda };

inline const char* ProviderName(Provider provider) {
  return provider == Provider::kCuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
}

// Runs fn(begin, end) (returning a DD_* code) over blocks of `per_task` of [0, rows) on ONNX
// Runtime's intra-op thread pool, or on this thread where the pool is not available; DD_OK when
// every block returned it (the CPU forwards' row blocks).
template <typename Fn>
int ParallelRows(OrtKernelContext* context, int64_t rows, int64_t per_task, const Fn& fn) {
  struct Task {
    const Fn* fn;
    int64_t rows, per_task;
    std::atomic<int> rc;
  } task{&fn, rows, per_task, 0};
  auto one = [](void* p, size_t t) {
    Task& tk = *static_cast<Task*>(p);
    const int64_t begin = (int64_t)t * tk.per_task;
    const int64_t end = begin + tk.per_task < tk.rows ? begin + tk.per_task : tk.rows;
    if (const int rc = (*tk.fn)(begin, end)) tk.rc.store(rc);
  };
  const int64_t tasks = (rows + per_task - 1) / per_task;
  if (tasks <= 0) return 0;
  const OrtApi& api = Ort::GetApi();
  if (OrtStatus* st = api.KernelContext_ParallelFor(context, one, (size_t)tasks, 0, &task)) {
    api.ReleaseStatus(st);
    for (int64_t t = 0; t < tasks; ++t) one(&task, (size_t)t);
  }
  return task.rc.load();
}

// "dlrm_deploy::<op>", with " (node '<name>')" when the node has a name.
inline std::string OpLabel(const char* op, const std::string& node_name) {
  std::string text = std::string("dlrm_deploy::") + op;
  if (!node_name.empty()) text += " (node '" + node_name + "')";
  return text;
}

// The status "<OpLabel>: <what>".
inline OrtStatusPtr OpError(const char* op, const std::string& node_name, OrtErrorCode code, const std::string& what) {
  return Ort::GetApi().CreateStatus(code, (OpLabel(op, node_name) + ": " + what).c_str());
}

// Runs fn; a C++ exception becomes the status error(code, text) makes (kernels' ComputeV2).
template <typename Fn, typename ErrorFn>
OrtStatusPtr Guarded(Fn&& fn, ErrorFn&& error) {
  try {
    return fn();
  } catch (const Ort::Exception& e) {
    return error(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return error(ORT_FAIL, e.what());
  }
}

// Lookups launched in stream order: an EmbeddingBag node launched kernels on `stream`, the first of
// them waiting for everything queued before it (no programmatic launch), that write nothing but
// [begin, end) (its output) and the op's own workspace. The CUDA provider runs a session's nodes
// one after another on one thread: each op's ComputeV2 moves the record the op before it left into
// PreviousLookups() and clears it, so an Mlp finds it only where it comes right after the
// EmbeddingBag among this library's ops. Its X may then be read while those lookups still run
// (dd_mlp_args.input_ready) when X lies outside [begin, end). A kernel of another library in
// between, launched in plain stream order, waits for the lookups and the Mlp for it; not covered
// is one that itself starts early (programmatic launch) and writes X. In our exports the Mlp right
// after the lookups is the bottom MLP, whose X is a graph input that no node writes.
struct OrderedLookups {
  const void* stream = nullptr;
  uintptr_t begin = 0, end = 0;
};
inline OrderedLookups& ThreadLookups() {  // set by EmbeddingBag's Compute
  thread_local OrderedLookups record;
  return record;
}
inline OrderedLookups& PreviousLookups() {  // what the op before this one on this thread left
  thread_local OrderedLookups record;
  return record;
}

// A kernel of op `op` (a string literal): reads the node's name; ComputeV2 runs Compute, turning
// exceptions into the op's error status.
class KernelBase {
 public:
  virtual ~KernelBase() = default;
  KernelBase(const KernelBase&) = delete;
  KernelBase& operator=(const KernelBase&) = delete;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    PreviousLookups() = ThreadLookups();
    ThreadLookups() = OrderedLookups{};
    return Guarded([&] { return Compute(context); },
                   [&](OrtErrorCode code, const char* what) { return Error(code, what); });
  }

 protected:
  KernelBase(const char* op, const OrtKernelInfo* info, Provider provider)
      : op_(op), provider_(provider), node_name_(Ort::ConstKernelInfo(info).GetNodeName()) {}

  virtual OrtStatusPtr Compute(OrtKernelContext* context) = 0;
  OrtStatusPtr Error(OrtErrorCode code, const std::string& what) const { return OpError(op_, node_name_, code, what); }
  std::string Label() const { return OpLabel(op_, node_name_); }
  // Reads the required int64 attribute name into *value (an error status if absent).
  OrtStatusPtr RequiredInt(const OrtKernelInfo* info, const char* name, int64_t* value) const {
    const OrtApi& api = Ort::GetApi();
    if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, value)) {
      api.ReleaseStatus(st);
      return Error(ORT_INVALID_ARGUMENT, std::string("attribute '") + name + "' is required");
    }
    return nullptr;
  }
  // The optional int64 attribute name, or fallback where the node has none.
  static int64_t OptionalInt(const OrtKernelInfo* info, const char* name, int64_t fallback) {
    const OrtApi& api = Ort::GetApi();
    int64_t value = fallback;
    if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &value)) {
      api.ReleaseStatus(st);
      return fallback;
    }
    return value;
  }
  // Reads the required int64 array attribute name into *values (an error status if absent).
  OrtStatusPtr RequiredInts(const OrtKernelInfo* info, const char* name, std::vector<int64_t>* values) const {
    const OrtApi& api = Ort::GetApi();
    size_t n = 0;
    if (OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &n)) {
      api.ReleaseStatus(st);
      return Error(ORT_INVALID_ARGUMENT, std::string("attribute '") + name + "' is required");
    }
    values->resize(n);
    if (n > 0) {
      if (OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, values->data(), &n)) {
        api.ReleaseStatus(st);
        return Error(ORT_INVALID_ARGUMENT, std::string("cannot read attribute '") + name + "'");
      }
    }
    return nullptr;
  }

  const char* op_;
  Provider provider_;
  std::string node_name_;
};

// An op registered for one provider whose kernel is made as Kernel(info, provider, &status).
template <typename Op, typename Kernel>
struct OpBase : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  explicit OpBase(Provider provider) : provider_(provider) {
    // See kMinOrtApiVersion: ORT reads only the members that existed at this API version.
    this->version = kMinOrtApiVersion;
  }

  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    OrtStatusPtr status = nullptr;
    auto k = std::make_unique<Kernel>(info, provider_, &status);
    if (status != nullptr) {
      *kernel = nullptr;
      return status;
    }
    *kernel = k.release();
    return nullptr;
  }

  const char* GetExecutionProviderType() const { return ProviderName(provider_); }

 protected:
  Provider provider_;
};

// Inputs: one homogeneous variadic float input of at least MinArity tensors; output: one float.
template <typename Op, typename Kernel, int MinArity>
struct VariadicFloatOp : OpBase<Op, Kernel> {
  using OpBase<Op, Kernel>::OpBase;
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t) const { return INPUT_OUTPUT_VARIADIC; }
  int GetVariadicInputMinArity() const { return MinArity; }
  bool GetVariadicInputHomogeneity() const { return true; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace dd_ort
