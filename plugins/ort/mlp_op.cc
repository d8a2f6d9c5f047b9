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
  if (kinfo.GetInputCount() != 1 + 2 * n) {
    *status = Error(ORT_INVALID_ARGUMENT, "takes 1 + 2 x " + std::to_string(n) + " inputs (X, then W and b per layer), got " +
                                              std::to_string(kinfo.GetInputCount()));
    return;
  }
  // Initializers never change during a run: the CUDA kernel may then copy them before the kernel
  // ahead of it finishes. Any other weight (computed by the graph) is read after it.
  const OrtApi& api = Ort::GetApi();
  fixed_weights_ = true;
  for (size_t i = 1; i < 1 + 2 * n && fixed_weights_; ++i) {
    int constant = 0;
    const OrtValue* value = nullptr;
    if (OrtStatus* st = api.KernelInfoGetConstantInput_tensor(info, i, &constant, &value)) {
      api.ReleaseStatus(st);
      constant = 0;
    }
    fixed_weights_ = constant != 0;
  }
}

OrtStatusPtr MlpKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  dd_mlp_args a{};
  a.layers = (int32_t)activations_.size();  // 1 + 2 x layers inputs: checked when the kernel was made
  a.max_blocks = beside_ ? DD_MLP_BESIDE : 0;
  a.fixed_weights = fixed_weights_ ? 1 : 0;
  Ort::ConstValue xv = ctx.GetInput(0);
  const std::vector<int64_t> xs = xv.GetTensorTypeAndShapeInfo().GetShape();
  if (xs.size() != 2) return Error(ORT_INVALID_ARGUMENT, "input X must be 2-D [batch, features]");
  a.x = xv.GetTensorData<float>();
  a.batch = xs[0];
  a.in_width = xs[1];
  for (int32_t i = 0; i < a.layers; ++i) {
    Ort::ConstValue w = ctx.GetInput(1 + 2 * i), b = ctx.GetInput(2 + 2 * i);
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
  char msg[DD_MSG_LEN] = {0};
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
  PendingLookups pending;  // an overlapped EmbeddingBag's output as X: join its stream first
  if (TakePending(a.x, &pending)) {
    if (OrtStatusPtr st = FinishPending(pending, stream, Label())) return st;
  }
  // Right after lookups launched in stream order on this stream, an X they do not write is read
  // (and every layer but the last computed) while they run (op_glue.h).
  const OrderedLookups& before = PreviousLookups();
  const uintptr_t x0 = reinterpret_cast<uintptr_t>(a.x), x1 = x0 + (uintptr_t)(a.batch * a.in_width) * sizeof(float);
  a.input_ready = before.stream != nullptr && before.stream == stream && (x1 <= before.begin || x0 >= before.end);
  if (dd_mlp_cuda(&a, stream, msg, sizeof(msg)) != DD_OK) return Error(ORT_FAIL, msg);
  return nullptr;
#else
  return Error(ORT_FAIL, "this library was built without CUDA");
#endif
}

}  // namespace dd_ort
