// dlrm_deploy::Join: see join_op.h.
#include "join_op.h"

#include <map>
#include <mutex>

namespace dd_ort {
namespace {
std::mutex g_pending_mutex;
std::map<const void*, PendingLookups> g_pending;

size_t ElementBytes(ONNXTensorElementDataType t) { return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? 4 : 2; }
}  // namespace

void RegisterPending(const void* output, PendingLookups pending) {
  std::lock_guard<std::mutex> lock(g_pending_mutex);
  g_pending[output] = std::move(pending);
}

bool TakePending(const void* output, PendingLookups* pending) {
  std::lock_guard<std::mutex> lock(g_pending_mutex);
  auto it = g_pending.find(output);
  if (it == g_pending.end()) return false;
  *pending = std::move(it->second);
  g_pending.erase(it);
  return true;
}

JoinKernel::JoinKernel(const OrtKernelInfo* info, Provider provider, OrtStatusPtr* status)
    : KernelBase("Join", info, provider) {
  Ort::ConstKernelInfo kinfo(info);
  *status = nullptr;
  const int64_t axis = OptionalInt(info, "axis", 1);
  position_ = OptionalInt(info, "position", position_);
  if (axis != 1 && axis != -1) *status = Error(ORT_INVALID_ARGUMENT, "only axis=1 (or -1) is supported");
  else if (position_ < 0 || position_ >= (int64_t)kinfo.GetInputCount())
    *status = Error(ORT_INVALID_ARGUMENT, "position must be in 0.." + std::to_string(kinfo.GetInputCount() - 1));
}

// Joins the EmbeddingBag's stream into ORT's; with check=checked waits for it and reports its
// first bad input; frees a per-call workspace. who names the joining node in CUDA failures.
OrtStatusPtr FinishPending(const PendingLookups& p, void* stream, const std::string& who) {
  char msg[DD_MSG_LEN] = {0};
  if (p.launch) {  // overlap=2: the lookups start now, after the nodes between were launched
    if (int rc = p.launch(msg)) {
      if (p.allocator != nullptr) p.allocator->Free(p.allocator, p.workspace);
      return Ort::GetApi().CreateStatus(rc == DD_ERR_INPUT ? ORT_INVALID_ARGUMENT : ORT_FAIL,
                                        ("dlrm_deploy::EmbeddingBag (node '" + p.node + "'): " + msg).c_str());
    }
  }
  int rc = dd_overlap_join(p.overlap, stream, msg, sizeof(msg));
  dd_error_record rec{};
  if (rc == DD_OK && p.checked) rc = dd_fetch_error(p.workspace, stream, &rec, msg, sizeof(msg));
  if (p.allocator != nullptr) p.allocator->Free(p.allocator, p.workspace);
  if (rc != DD_OK) return Ort::GetApi().CreateStatus(ORT_FAIL, (who + ": " + msg).c_str());
  if (dd_format_error_tables(&rec, p.names.empty() ? nullptr : p.names.data(), msg, sizeof(msg)) != DD_OK)
    return Ort::GetApi().CreateStatus(
        ORT_INVALID_ARGUMENT, ("dlrm_deploy::EmbeddingBag (node '" + p.node + "'): " + std::string(msg)).c_str());
  return nullptr;
}

OrtStatusPtr JoinKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const size_t n = ctx.GetInputCount();
  void* stream = provider_ == Provider::kCuda ? ctx.GetGPUComputeStream() : nullptr;
  Ort::ConstValue first = ctx.GetInput(0);
  PendingLookups pending;
  if (first && TakePending(first.GetTensorRawData(), &pending))
    if (OrtStatusPtr st = FinishPending(pending, stream, Label())) return st;
  // The concatenation order: input 0 at position_, the others in order around it.
  std::vector<Ort::ConstValue> parts;
  for (size_t i = 1; i < n; ++i) parts.push_back(ctx.GetInput(i));
  parts.insert(parts.begin() + position_, first);
  int64_t rows = -1, cols = 0;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto info = parts[i].GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> shape = info.GetShape();
    if (shape.size() != 2) return Error(ORT_INVALID_ARGUMENT, "inputs must be 2-D");
    if (rows >= 0 && shape[0] != rows) return Error(ORT_INVALID_ARGUMENT, "inputs differ in their first dimension");
    rows = shape[0];
    cols += shape[1];
    type = info.GetElementType();
  }
  Ort::UnownedValue out = ctx.GetOutput(0, {rows, cols});
  const size_t esize = ElementBytes(type), pitch = (size_t)cols * esize;
  char* dst = static_cast<char*>(out.GetTensorMutableRawData());
  char msg[DD_MSG_LEN] = {0};
  for (const Ort::ConstValue& part : parts) {
    const size_t width = (size_t)part.GetTensorTypeAndShapeInfo().GetShape()[1] * esize;
    if (dd_copy_rows(dst, pitch, part.GetTensorRawData(), width, width, (size_t)rows, provider_ == Provider::kCuda,
                     stream, msg, sizeof(msg)) != DD_OK)
      return Error(ORT_FAIL, msg);
    dst += width;
  }
  return nullptr;
}

}  // namespace dd_ort
