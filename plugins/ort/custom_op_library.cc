// The library's one registration point: every op of the dlrm_deploy domain, for every execution
// provider this build supports. ONNX Runtime loads it with SessionOptions.register_custom_ops_library.
#include <memory>
#include <mutex>
#include <vector>

#include "embedding_bag_op.h"
#include "interaction_op.h"
#include "join_op.h"
#include "mlp_op.h"

namespace {

struct Registry {
  std::vector<std::unique_ptr<dd_ort::EmbeddingBagOp>> ops;
  std::vector<std::unique_ptr<dd_ort::JoinOp>> joins;
  std::vector<std::unique_ptr<dd_ort::InteractionOp>> interactions;
  std::vector<std::unique_ptr<dd_ort::MlpOp>> mlps;
  Ort::CustomOpDomain domain{nullptr};
};

// Built once and kept for the life of the process: ORT keeps pointers to the domain and ops in
// every session created from the options they were added to.
Registry& GetRegistry() {
  static Registry* registry = [] {
    auto* r = new Registry;
    const char* domain = nullptr;
    dd_op_identity(&domain, nullptr, nullptr);
    r->domain = Ort::CustomOpDomain(domain);
    std::vector<dd_ort::Provider> providers = {dd_ort::Provider::kCpu};
#ifdef DD_HAVE_CUDA
    providers.push_back(dd_ort::Provider::kCuda);
#endif
    const ONNXTensorElementDataType weight_types[] = {
        ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
        ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8};
    const ONNXTensorElementDataType index_types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
                                                     ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};
    for (dd_ort::Provider p : providers)
      for (ONNXTensorElementDataType w : weight_types)
        for (ONNXTensorElementDataType i : index_types) {
          r->ops.push_back(std::make_unique<dd_ort::EmbeddingBagOp>(p, w, i));
          r->domain.Add(r->ops.back().get());
        }
    for (dd_ort::Provider p : providers)
      for (ONNXTensorElementDataType t : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
                                          ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16}) {
        r->joins.push_back(std::make_unique<dd_ort::JoinOp>(p, t));
        r->domain.Add(r->joins.back().get());
      }
    for (dd_ort::Provider p : providers) {
      r->interactions.push_back(std::make_unique<dd_ort::InteractionOp>(p));
      r->domain.Add(r->interactions.back().get());
      r->mlps.push_back(std::make_unique<dd_ort::MlpOp>(p));
      r->domain.Add(r->mlps.back().get());
    }
    return r;
  }();
  return *registry;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(dd_ort::kMinOrtApiVersion);
  if (api == nullptr) {
    // An ORT older than 1.18: report through the newest API it has.
    for (uint32_t v = dd_ort::kMinOrtApiVersion - 1; v > 0 && api == nullptr; --v) api = api_base->GetApi(v);
    if (api == nullptr) return nullptr;
    return api->CreateStatus(ORT_FAIL, "libdlrm_deploy_ort needs ONNX Runtime 1.18 or newer");
  }
  Ort::InitApi(api);
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  try {
    Registry& registry = GetRegistry();
    Ort::UnownedSessionOptions(options).Add(registry.domain);
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
