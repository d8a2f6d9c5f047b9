// dlrm_deploy::DotInteraction: see interaction_op.h.
#include "interaction_op.h"

#include "join_op.h"

namespace dd_ort {

namespace {
constexpr int64_t kCpuSamplesPerTask = 64;
}

InteractionKernel::InteractionKernel(const OrtKernelInfo* info, Provider provider, OrtStatusPtr* status)
    : KernelBase("DotInteraction", info, provider) {
  *status = nullptr;
  Ort::ConstKernelInfo kinfo(info);
  if ((*status = RequiredInt(info, "dim", &dim_)) != nullptr) return;
  prefix_ = OptionalInt(info, "prefix", -1);
  if ((*status = RequiredInts(info, "pairs", &pairs_)) != nullptr) return;
  if (dim_ < 1) *status = Error(ORT_INVALID_ARGUMENT, "dim must be >= 1");
  else if (prefix_ < -1 || prefix_ >= (int64_t)kinfo.GetInputCount())
    *status = Error(ORT_INVALID_ARGUMENT, "prefix must be -1 or an input index");
}

InteractionKernel::~InteractionKernel() {
#ifdef DD_HAVE_CUDA
  dd_interaction_plan_destroy(plan_);
#endif
}

OrtStatusPtr InteractionKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  dd_interaction_args a{};
  a.count = (int32_t)ctx.GetInputCount();
  if (a.count > DD_INTERACTION_MAX_PARTS)
    return Error(ORT_INVALID_ARGUMENT, "at most " + std::to_string(DD_INTERACTION_MAX_PARTS) + " inputs");
  a.batch = -1;
  for (int32_t k = 0; k < a.count; ++k) {
    Ort::ConstValue v = ctx.GetInput(k);
    const std::vector<int64_t> shape = v.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 2) return Error(ORT_INVALID_ARGUMENT, "inputs must be 2-D [batch, columns]");
    if (a.batch >= 0 && shape[0] != a.batch) return Error(ORT_INVALID_ARGUMENT, "inputs differ in their batch size");
    a.batch = shape[0];
    a.widths[k] = shape[1];
    a.parts[k] = v.GetTensorData<float>();
  }
  a.dim = dim_;
  a.pairs = pairs_.data();
  a.num_pairs = (int64_t)pairs_.size();
  a.prefix = (int32_t)prefix_;
  char msg[DD_MSG_LEN] = {0};
  int64_t width = 0;
  if (dd_interaction_check(&a, &width, msg, sizeof(msg)) != DD_OK) return Error(ORT_INVALID_ARGUMENT, msg);
  Ort::UnownedValue out = ctx.GetOutput(0, {a.batch, width});
  a.out = out.GetTensorMutableData<float>();
  if (provider_ == Provider::kCpu) {
    // Sample blocks over ONNX Runtime's intra-op thread pool (shapes checked above: no block fails).
    const int rc = ParallelRows(context, a.batch, kCpuSamplesPerTask, [&](int64_t begin, int64_t end) {
      char m[DD_MSG_LEN];
      return dd_interaction_cpu_rows(&a, begin, end, m, sizeof(m));
    });
    if (rc != DD_OK) return Error(ORT_FAIL, "the CPU forward failed");
    return nullptr;
  }
#ifdef DD_HAVE_CUDA
  void* stream = ctx.GetGPUComputeStream();
  for (int32_t k = 0; k < a.count; ++k) {  // an overlapped EmbeddingBag's output: join its stream first
    PendingLookups pending;
    if (TakePending(a.parts[k], &pending)) {
      if (OrtStatusPtr st = FinishPending(pending, stream, Label())) return st;
    }
  }
  {
    std::lock_guard<std::mutex> lock(plan_mutex_);
    if (plan_ == nullptr) {  // ORT runs a model once before capturing it in a CUDA graph
      int64_t n = 0;
      for (int32_t k = 0; k < a.count; ++k) n += a.widths[k] / a.dim;
      plan_ = dd_interaction_plan_create(pairs_.data(), (int64_t)pairs_.size(), n, msg, sizeof(msg));
      if (plan_ == nullptr) return Error(ORT_FAIL, msg);
    }
  }
  if (dd_interaction_cuda(plan_, &a, stream, msg, sizeof(msg)) != DD_OK)
    return Error(ORT_FAIL, msg);
  return nullptr;
#else
  return Error(ORT_FAIL, "this library was built without CUDA");
#endif
}

}  // namespace dd_ort
