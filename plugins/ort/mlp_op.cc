// dlrm_deploy::Mlp: see mlp_op.h.
#include "mlp_op.h"

#include "join_op.h"

namespace dd_ort {

namespace {
constexpr int64_t kCpuRowsPerTask = 64;
}

MlpKernel::MlpKernel(const OrtKernelInfo* info, Provider provider, OrtStatusPtr* status)
    : KernelBase("Mlp", info, provider) {
  Ort::ConstKernelInfo kinfo(info);
  if ((*status = RequiredInts(info, "activations", &activations_)) != nullptr) return;
  const size_t n = activations_.size();
  if (n < 1 || n > DD_MLP_MAX_LAYERS) {
    *status = Error(ORT_INVALID_ARGUMENT, "activations must name 1 to " + std::to_string(DD_MLP_MAX_LAYERS) +
                                              " layers, got " + std::to_string(n));
    return;
  }
  for (size_t i = 0; i < n && *status == nullptr; ++i)
    if (activations_[i] < DD_MLP_NONE || activations_[i] > DD_MLP_SIGMOID)
      *status = Error(ORT_INVALID_ARGUMENT, "activation " + std::to_string(activations_[i]) + " of layer " +
                                                std::to_string(i + 1) + " is not 0 (none), 1 (relu) or 2 (sigmoid)");
  if (*status != nullptr) return;
  beside_ = OptionalInt(info, "beside", 0);
  if (beside_ != 0 && beside_ != 1) {
    *status = Error(ORT_INVALID_ARGUMENT, "beside must be 0 or 1, got " + std::to_string(beside_));
    return;
  }
  front_ = OptionalInt(info, "front", 0);
  if (front_ < 0 || front_ > DD_INTERACTION_MAX_PARTS) {
    *status = Error(ORT_INVALID_ARGUMENT, "front must be 0 to " + std::to_string(DD_INTERACTION_MAX_PARTS) +
                                              " (the interaction's inputs), got " + std::to_string(front_));
    return;
  }
  if (front_ > 0) {
    if ((*status = RequiredInt(info, "front_dim", &front_dim_)) != nullptr) return;
    if ((*status = RequiredInts(info, "front_pairs", &front_pairs_)) != nullptr) return;
    front_prefix_ = OptionalInt(info, "front_prefix", -1);
    if (front_dim_ < 1) *status = Error(ORT_INVALID_ARGUMENT, "front_dim must be >= 1");
    else if (front_prefix_ < -1 || front_prefix_ >= front_)
      *status = Error(ORT_INVALID_ARGUMENT, "front_prefix must be -1 or one of the first front inputs");
    if (*status != nullptr) return;
  }
  const size_t first_w = front_ > 0 ? (size_t)front_ : 1;  // inputs before W_1
  if (kinfo.GetInputCount() != first_w + 2 * n) {
    *status = Error(ORT_INVALID_ARGUMENT, "takes " + std::string(front_ > 0 ? "front" : "1") + " + 2 x " +
                                              std::to_string(n) + " inputs (" +
                                              std::string(front_ > 0 ? "the interaction's" : "X") +
                                              ", then W and b per layer), got " + std::to_string(kinfo.GetInputCount()));
    return;
  }
  // Initializers never change during a run: the CUDA kernel may then copy them before the kernel
  // ahead of it finishes. Any other weight (computed by the graph) is read after it.
  const OrtApi& api = Ort::GetApi();
  fixed_weights_ = true;
  for (size_t i = first_w; i < first_w + 2 * n && fixed_weights_; ++i) {
    int constant = 0;
    const OrtValue* value = nullptr;
    if (OrtStatus* st = api.KernelInfoGetConstantInput_tensor(info, i, &constant, &value)) {
      api.ReleaseStatus(st);
      constant = 0;
    }
    fixed_weights_ = constant != 0;
  }
}

MlpKernel::~MlpKernel() {
#ifdef DD_HAVE_CUDA
  dd_interaction_plan_destroy(plan_);
#endif
}

OrtStatusPtr MlpKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  dd_mlp_args a{};
  a.layers = (int32_t)activations_.size();  // first_w + 2 x layers inputs: checked when the kernel was made
  a.max_blocks = beside_ ? DD_MLP_BESIDE : 0;
  a.fixed_weights = fixed_weights_ ? 1 : 0;
  dd_interaction_args front{};
  char msg[DD_MSG_LEN] = {0};
  if (front_ > 0) {  // X is the interaction of the first front_ inputs
    front.count = (int32_t)front_;
    front.batch = -1;
    for (int32_t k = 0; k < front.count; ++k) {
      Ort::ConstValue v = ctx.GetInput(k);
      const std::vector<int64_t> shape = v.GetTensorTypeAndShapeInfo().GetShape();
      if (shape.size() != 2) return Error(ORT_INVALID_ARGUMENT, "the interaction's inputs must be 2-D [batch, columns]");
      if (front.batch >= 0 && shape[0] != front.batch)
        return Error(ORT_INVALID_ARGUMENT, "the interaction's inputs differ in their batch size");
      front.batch = shape[0];
      front.widths[k] = shape[1];
      front.parts[k] = v.GetTensorData<float>();
    }
    front.dim = front_dim_;
    front.pairs = front_pairs_.data();
    front.num_pairs = (int64_t)front_pairs_.size();
    front.prefix = (int32_t)front_prefix_;
    if (dd_interaction_check(&front, &a.in_width, msg, sizeof(msg)) != DD_OK)
      return Error(ORT_INVALID_ARGUMENT, msg);
    a.batch = front.batch;
    a.front = &front;
  } else {
    Ort::ConstValue xv = ctx.GetInput(0);
    const std::vector<int64_t> xs = xv.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.size() != 2) return Error(ORT_INVALID_ARGUMENT, "input X must be 2-D [batch, features]");
    a.x = xv.GetTensorData<float>();
    a.batch = xs[0];
    a.in_width = xs[1];
  }
  const int32_t first_w = front_ > 0 ? (int32_t)front_ : 1;
  for (int32_t i = 0; i < a.layers; ++i) {
    Ort::ConstValue w = ctx.GetInput(first_w + 2 * i), b = ctx.GetInput(first_w + 1 + 2 * i);
    const std::vector<int64_t> ws = w.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> bs = b.GetTensorTypeAndShapeInfo().GetShape();
    if (ws.size() != 2) return Error(ORT_INVALID_ARGUMENT, "layer " + std::to_string(i + 1) + "'s weight must be 2-D [N, K]");
    if (bs.size() != 1) return Error(ORT_INVALID_ARGUMENT, "layer " + std::to_string(i + 1) + "'s bias must be 1-D [N]");
    a.weights[i] = w.GetTensorData<float>();
    a.biases[i] = b.GetTensorData<float>();
    a.w_rows[i] = ws[0];
    a.w_cols[i] = ws[1];
    a.b_len[i] = bs[0];
    a.activations[i] = (int32_t)activations_[i];  // 0..2: checked when the kernel was made
  }
  if (dd_mlp_check(&a, msg, sizeof(msg)) != DD_OK) return Error(ORT_INVALID_ARGUMENT, msg);
  Ort::UnownedValue out = ctx.GetOutput(0, {a.batch, a.w_rows[a.layers - 1]});
  a.out = out.GetTensorMutableData<float>();
  if (provider_ == Provider::kCpu) {
    // Row blocks over ONNX Runtime's intra-op thread pool (as the EmbeddingBag op's bags).
    const int rc = ParallelRows(context, a.batch, kCpuRowsPerTask, [&](int64_t begin, int64_t end) {
      char m[DD_MSG_LEN];
      return dd_mlp_cpu(&a, begin, end, m, sizeof(m));
    });
    if (rc != DD_OK) return Error(ORT_FAIL, "the CPU forward failed");
    return nullptr;
  }
#ifdef DD_HAVE_CUDA
  void* stream = ctx.GetGPUComputeStream();
  for (int32_t k = 0; k < (front_ > 0 ? front.count : 1); ++k) {  // an overlapped EmbeddingBag's output
    PendingLookups pending;                                          // as an input: join its stream first
    if (TakePending(front_ > 0 ? front.parts[k] : a.x, &pending)) {
      if (OrtStatusPtr st = FinishPending(pending, stream, Label())) return st;
    }
  }
  if (front_ > 0) {
    std::lock_guard<std::mutex> lock(plan_mutex_);
    if (plan_ == nullptr) {  // ORT runs a model once before capturing it in a CUDA graph
      int64_t n = 0;
      for (int32_t k = 0; k < front.count; ++k) n += front.widths[k] / front.dim;
      plan_ = dd_interaction_plan_create(front_pairs_.data(), (int64_t)front_pairs_.size(), n, msg, sizeof(msg));
      if (plan_ == nullptr) return Error(ORT_FAIL, msg);
    }
    a.front_plan = plan_;
  }
  if (dd_mlp_cuda(&a, stream, msg, sizeof(msg)) != DD_OK) return Error(ORT_FAIL, msg);
  return nullptr;
#else
  return Error(ORT_FAIL, "this library was built without CUDA");
#endif
}

}  // namespace dd_ort
