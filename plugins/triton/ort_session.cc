#include "ort_session.h"

#include "../ort/ort_min_api.h"

#include <dlfcn.h>

#include <algorithm>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>

namespace dd_triton {

const OrtApi* load_onnxruntime(const std::string& path) {
  static std::mutex mu;
  static std::map<std::string, const OrtApi*> loaded;
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded.find(path);
  if (it != loaded.end()) return it->second;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    throw std::runtime_error("cannot open the ONNX Runtime library '" + path + "': " + (why ? why : "unknown error") +
                             " (set the model's onnxruntime_library parameter)");
  }
  using GetApiBase = const OrtApiBase* (*)();
  auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  const OrtApi* api = get_base ? get_base()->GetApi(dd_ort::kMinOrtApiVersion) : nullptr;
  if (api == nullptr)
    throw std::runtime_error("'" + path + "' is not an ONNX Runtime with C API " +
                             std::to_string(dd_ort::kMinOrtApiVersion) + " or newer (ONNX Runtime 1." +
                             std::to_string(dd_ort::kMinOrtApiVersion) + "+ is needed)");
  loaded[path] = api;  // the handle stays open for the process: sessions and op libraries use it
  return api;
}

void Session::check(OrtStatus* status) {
  if (status == nullptr) return;
  std::string msg = api_->GetErrorMessage(status);
  api_->ReleaseStatus(status);
  throw std::runtime_error(msg);
}

namespace {
// Appends the CUDA provider on `device` (throws through check when the build has none).
void append_cuda(const OrtApi* api, OrtSessionOptions* so, int device, const std::function<void(OrtStatus*)>& check) {
  OrtCUDAProviderOptionsV2* cuda = nullptr;
  check(api->CreateCUDAProviderOptions(&cuda));
  std::string id = std::to_string(device);
  const char* keys[] = {"device_id"};
  const char* values[] = {id.c_str()};
  OrtStatus* st = api->UpdateCUDAProviderOptions(cuda, keys, values, 1);
  if (st == nullptr) st = api->SessionOptionsAppendExecutionProvider_CUDA_V2(so, cuda);
  api->ReleaseCUDAProviderOptions(cuda);
  check(st);
}
}  // namespace

Session::Session(const OrtApi* api, const SessionOptions& o) : api_(api) {
  auto check_fn = [this](OrtStatus* s) { check(s); };
  check(api_->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "dlrm_deploy_triton", &env_));
  OrtSessionOptions* so = nullptr;
  check(api_->CreateSessionOptions(&so));
  try {
    if (o.threads > 0) check(api_->SetIntraOpNumThreads(so, o.threads));
    check(api_->RegisterCustomOpsLibrary_V2(so, o.op_library.c_str()));
    if (o.gpu) append_cuda(api_, so, o.device_id, check_fn);
    check(api_->CreateSession(env_, o.model.c_str(), so, &session_));
  } catch (...) {
    api_->ReleaseSessionOptions(so);
    if (env_) api_->ReleaseEnv(env_);
    throw;
  }
  api_->ReleaseSessionOptions(so);
  check(api_->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &cpu_));
}

Session::~Session() {
  release_outputs();
  if (cpu_) api_->ReleaseMemoryInfo(cpu_);
  if (session_) api_->ReleaseSession(session_);
  if (env_) api_->ReleaseEnv(env_);
}

void Session::release_outputs() {
  for (OrtValue* v : outputs_)
    if (v) api_->ReleaseValue(v);
  outputs_.clear();
}

std::vector<Output> Session::run(const std::vector<Feed>& feeds, const std::vector<std::string>& names) {
  release_outputs();
  std::vector<OrtValue*> inputs;
  std::vector<const char*> input_names, output_names;
  struct Release {
    const OrtApi* api;
    std::vector<OrtValue*>* values;
    ~Release() {
      for (OrtValue* v : *values) api->ReleaseValue(v);
    }
  } release{api_, &inputs};
  for (const Feed& f : feeds) {
    OrtValue* v = nullptr;
    check(api_->CreateTensorWithDataAsOrtValue(cpu_, f.data, f.bytes, f.shape.data(), f.shape.size(), f.type, &v));
    inputs.push_back(v);
    input_names.push_back(f.name.c_str());
  }
  for (const std::string& n : names) output_names.push_back(n.c_str());
  outputs_.assign(names.size(), nullptr);
  check(api_->Run(session_, nullptr, input_names.data(), inputs.data(), inputs.size(), output_names.data(),
                  output_names.size(), outputs_.data()));
  std::vector<Output> out;
  for (OrtValue* v : outputs_) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    check(api_->GetTensorTypeAndShape(v, &info));
    Output o{};
    size_t dims = 0, count = 0;
    OrtStatus* st = api_->GetTensorElementType(info, &o.type);
    if (!st) st = api_->GetDimensionsCount(info, &dims);
    o.shape.resize(dims);
    if (!st) st = api_->GetDimensions(info, o.shape.data(), dims);
    if (!st) st = api_->GetTensorShapeElementCount(info, &count);
    api_->ReleaseTensorTypeAndShapeInfo(info);
    check(st);
    void* data = nullptr;
    check(api_->GetTensorMutableData(v, &data));
    o.data = static_cast<const char*>(data);
    o.bytes = count * elem_size(o.type);
    out.push_back(std::move(o));
  }
  return out;
}

HostRegister HostRegister::find() {
  HostRegister h;
  for (const char* lib : {"libcudart.so.13", "libcudart.so.12", "libcudart.so"}) {
    void* handle = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);  // only one already in the process
    if (handle == nullptr) continue;
    h.reg = reinterpret_cast<int (*)(void*, size_t, unsigned)>(dlsym(handle, "cudaHostRegister"));
    h.unreg = reinterpret_cast<int (*)(void*)>(dlsym(handle, "cudaHostUnregister"));
    if (h.reg && h.unreg) return h;
    h = HostRegister{};
  }
  return h;
}

Staging::~Staging() {
  for (auto& [name, buf] : buffers_)
    if (buf.registered) host_.unreg(buf.data.get());
}

void* Staging::take(const std::string& name, size_t bytes) {
  Buffer* buf = nullptr;
  for (auto& [n, b] : buffers_)
    if (n == name) buf = &b;
  if (buf == nullptr) {
    buffers_.emplace_back(name, Buffer{});
    buf = &buffers_.back().second;
  }
  if (buf->bytes < bytes || buf->data == nullptr) {
    if (buf->registered) host_.unreg(buf->data.get());
    buf->bytes = std::max<size_t>(bytes + bytes / 2, size_t(1) << 20);  // room for larger merges
    buf->data.reset(new char[buf->bytes]);
    buf->registered = host_.reg != nullptr && host_.reg(buf->data.get(), buf->bytes, 0) == 0;
  }
  return buf->data.get();
}

}  // namespace dd_triton
