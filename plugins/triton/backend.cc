// The dlrm_deploy Triton backend (libtriton_dlrm_deploy.so, `backend: "dlrm_deploy"`): an exported
// DLRM in ONNX Runtime with our op library, Triton's dynamically batched requests merged in C++.
// It serves the repositories `dlrm-deploy triton-repo --backend native` writes (the python backend's
// packed request form, without its stub process: no copy of each request into shared memory, no
// Python per request).
//
// Per execution: every request is read (a request that breaks the form gets its own error); the
// good ones are merged into one run; if that run fails (e.g. an id outside its table), each request
// runs alone so that only the bad ones get the error, and the model stays ready.
#include <chrono>
#include <deque>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ort_session.h"
#include "packed_requests.h"
#include "triton_c_api.h"

#define DD_BACKEND_EXPORT extern "C" __attribute__((visibility("default")))

namespace dd_triton {
namespace {

uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

void log(TRITONSERVER_LogLevel level, const std::string& msg) {
  if (TRITONSERVER_Error* e = TRITONSERVER_LogMessage(level, __FILE__, __LINE__, msg.c_str())) TRITONSERVER_ErrorDelete(e);
}

// Turns a Triton error into std::runtime_error.
void check(TRITONSERVER_Error* e) {
  if (e == nullptr) return;
  std::string msg = TRITONSERVER_ErrorMessage(e);
  TRITONSERVER_ErrorDelete(e);
  throw std::runtime_error(msg);
}

// An ONNX Runtime error as one line: the node's message without ORT's prefix.
std::string one_line(std::string text) {
  const std::string marker = "Status Message: ";
  size_t at = text.find(marker);
  if (at != std::string::npos) text = text.substr(at + marker.size());
  std::istringstream words(text);
  std::string w, out;
  while (words >> w) out += (out.empty() ? "" : " ") + w;
  return out;
}

constexpr std::pair<TRITONSERVER_DataType, Elem> kTypes[] = {
    {TRITONSERVER_TYPE_BOOL, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL},     {TRITONSERVER_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},
    {TRITONSERVER_TYPE_UINT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16}, {TRITONSERVER_TYPE_UINT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32},
    {TRITONSERVER_TYPE_UINT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64}, {TRITONSERVER_TYPE_INT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8},
    {TRITONSERVER_TYPE_INT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16},   {TRITONSERVER_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32},
    {TRITONSERVER_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64},   {TRITONSERVER_TYPE_FP16, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16},
    {TRITONSERVER_TYPE_FP32, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT},    {TRITONSERVER_TYPE_FP64, ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE},
    {TRITONSERVER_TYPE_BF16, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16}};

Elem elem_of(TRITONSERVER_DataType t) {
  for (const auto& [tt, e] : kTypes)
    if (tt == t) return e;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

TRITONSERVER_DataType triton_of(Elem e) {
  for (const auto& [tt, ee] : kTypes)
    if (ee == e) return tt;
  return TRITONSERVER_TYPE_INVALID;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A string parameter of the model configuration ("" when absent).
std::string parameter(const Json& config, const std::string& key) {
  const Json& params = config["parameters"];
  if (params.is_null() || !params.has(key)) return "";
  return params[key].str_or("string_value", "");
}

struct ModelState {
  std::string name, dir;  // dir: the version folder
  Spec spec;
  const OrtApi* api = nullptr;
  int threads = 0;  // intra_op_num_threads; 0: 1 on GPU instances, ONNX Runtime's default on CPU ones
};

ModelState* load_model(TRITONBACKEND_Model* model) {
  auto st = std::make_unique<ModelState>();
  const char* name = nullptr;
  const char* location = nullptr;
  uint64_t version = 0;
  TRITONBACKEND_ArtifactType artifact;
  check(TRITONBACKEND_ModelName(model, &name));
  check(TRITONBACKEND_ModelVersion(model, &version));
  check(TRITONBACKEND_ModelRepository(model, &artifact, &location));
  st->name = name;
  st->dir = std::string(location) + "/" + std::to_string(version);
  TRITONSERVER_Message* message = nullptr;
  check(TRITONBACKEND_ModelConfig(model, 1, &message));
  const char* text = nullptr;
  size_t size = 0;
  TRITONSERVER_Error* err = TRITONSERVER_MessageSerializeToJson(message, &text, &size);
  std::string json = err ? "" : std::string(text, size);
  TRITONSERVER_MessageDelete(message);
  check(err);
  Json config = Json::parse(json);
  const std::string io_file = st->dir + "/dlrm_deploy_io.json";
  try {
    st->spec = Spec::from_json(Json::parse(read_file(io_file)));
  } catch (const std::exception& e) {
    throw std::runtime_error(io_file + ": " + e.what());
  }
  std::string threads = parameter(config, "intra_op_num_threads");
  try {
    st->threads = threads.empty() ? 0 : std::stoi(threads);
  } catch (const std::exception&) {
    throw std::runtime_error("parameter intra_op_num_threads '" + threads + "' is not an integer");
  }
  std::string ort = parameter(config, "onnxruntime_library");
  if (ort.empty()) ort = "libonnxruntime.so";  // the loader's search path
  else if (ort[0] != '/') ort = std::string(location) + "/" + ort;  // relative to the model folder
  st->api = load_onnxruntime(ort);
  return st.release();
}

class Instance {
 public:
  Instance(ModelState* model, TRITONBACKEND_ModelInstance* instance) : model_(model), instance_(instance) {
    TRITONSERVER_InstanceGroupKind kind;
    int32_t device = 0;
    check(TRITONBACKEND_ModelInstanceKind(instance, &kind));
    check(TRITONBACKEND_ModelInstanceDeviceId(instance, &device));
    SessionOptions o;
    o.model = model->dir + "/" + model->spec.onnx;
    o.op_library = model->dir + "/" + model->spec.library;
    o.gpu = kind == TRITONSERVER_INSTANCEGROUPKIND_GPU;
    o.device_id = device;
    o.threads = model->threads > 0 ? model->threads : (o.gpu ? 1 : 0);
    try {
      session_ = std::make_unique<Session>(model->api, o);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string(o.gpu ? "KIND_GPU instance (device " + std::to_string(device) + "): " : "") +
                               one_line(e.what()));
    }
    staging_ = std::make_unique<Staging>(o.gpu ? HostRegister::find() : HostRegister{});
    log(TRITONSERVER_LOG_INFO, "dlrm_deploy: " + model->name + " instance on " +
                                   (o.gpu ? "GPU " + std::to_string(device) : std::string("the CPU")));
  }

  void execute(TRITONBACKEND_Request** requests, uint32_t n);

 private:
  std::string read_input(TRITONBACKEND_Request* request, const std::string& name, View* v);
  void run_group(TRITONBACKEND_Request** requests, const std::vector<uint32_t>& group);
  void respond(uint32_t i, TRITONBACKEND_Request* request, const std::vector<Output>& outs, int64_t row, int64_t b);

  ModelState* model_;
  TRITONBACKEND_ModelInstance* instance_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<Staging> staging_;
  std::vector<Request> parsed_;
  std::deque<std::vector<char>> gathered_;  // inputs that came in several buffers, made contiguous
  // Each request's response, built during the execution and sent after the statistics are reported,
  // so that the server's counts never lag what a client has received.
  struct Pending {
    TRITONBACKEND_Response* response = nullptr;
    TRITONSERVER_Error* error = nullptr;  // sent with the response: that request's error
  };
  std::vector<Pending> pending_;
  uint64_t compute_start_ = 0, compute_end_ = 0;
};

std::string Instance::read_input(TRITONBACKEND_Request* request, const std::string& name, View* v) {
  TRITONBACKEND_Input* input = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_RequestInput(request, name.c_str(), &input)) {
    TRITONSERVER_ErrorDelete(e);
    return "input '" + name + "' is missing";
  }
  const char* got_name = nullptr;
  TRITONSERVER_DataType dtype;
  const int64_t* shape = nullptr;
  uint32_t dims = 0, buffers = 0;
  uint64_t bytes = 0;
  check(TRITONBACKEND_InputProperties(input, &got_name, &dtype, &shape, &dims, &bytes, &buffers));
  v->type = elem_of(dtype);
  v->shape.assign(shape, shape + dims);
  v->bytes = bytes;
  int64_t count = 1;
  for (int64_t d : v->shape) count *= d;
  if (v->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED || static_cast<uint64_t>(count) * elem_size(v->type) != bytes)
    return "input '" + name + "': its type or byte size does not match its shape";
  char* gathered = nullptr;
  if (buffers != 1) gathered = gathered_.emplace_back(bytes).data();
  for (uint64_t i = 0, at = 0; i < buffers; ++i) {
    const void* data = nullptr;
    uint64_t size = 0;
    TRITONSERVER_MemoryType mem = TRITONSERVER_MEMORY_CPU;  // in: the memory we prefer; out: where it is
    int64_t mem_id = 0;
    check(TRITONBACKEND_InputBuffer(input, static_cast<uint32_t>(i), &data, &size, &mem, &mem_id));
    if (mem == TRITONSERVER_MEMORY_GPU) return "input '" + name + "' is in GPU memory; this backend takes host memory";
    if (gathered == nullptr) {
      v->data = data;
    } else {
      if (at + size > bytes) return "input '" + name + "': its buffers hold more than its byte size";
      std::copy(static_cast<const char*>(data), static_cast<const char*>(data) + size, gathered + at);
      at += size;
    }
  }
  if (gathered != nullptr) v->data = gathered;
  return "";
}

// A new response to `request` (nullptr, logged, when the server cannot make one).
TRITONBACKEND_Response* new_response(TRITONBACKEND_Request* request) {
  TRITONBACKEND_Response* response = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseNew(&response, request)) {
    log(TRITONSERVER_LOG_ERROR, std::string("dlrm_deploy: cannot create a response: ") + TRITONSERVER_ErrorMessage(e));
    TRITONSERVER_ErrorDelete(e);
    return nullptr;
  }
  return response;
}

// Request i's response with rows [row, row + b) of the outputs it asked for; never throws (a failure
// becomes that request's error).
void Instance::respond(uint32_t i, TRITONBACKEND_Request* request, const std::vector<Output>& outs, int64_t row,
                       int64_t b) {
  TRITONBACKEND_Response* response = new_response(request);
  if (response == nullptr) return;
  TRITONSERVER_Error* err = nullptr;
  uint32_t count = 0;
  err = TRITONBACKEND_RequestOutputCount(request, &count);
  for (uint32_t i = 0; err == nullptr && i < count; ++i) {
    const char* name = nullptr;
    if ((err = TRITONBACKEND_RequestOutputName(request, i, &name))) break;
    size_t k = 0;
    while (k < model_->spec.outputs.size() && model_->spec.outputs[k] != name) ++k;
    if (k == model_->spec.outputs.size()) {
      err = TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INVALID_ARG, (std::string("no output '") + name + "'").c_str());
      break;
    }
    const Output& o = outs[k];
    std::vector<int64_t> shape{1, b};
    shape.insert(shape.end(), o.shape.begin() + 1, o.shape.end());
    const size_t row_bytes = o.shape[0] ? o.bytes / static_cast<size_t>(o.shape[0]) : 0;
    TRITONBACKEND_Output* output = nullptr;
    void* buffer = nullptr;
    TRITONSERVER_MemoryType mem = TRITONSERVER_MEMORY_CPU;
    int64_t mem_id = 0;
    if ((err = TRITONBACKEND_ResponseOutput(response, &output, name, triton_of(o.type), shape.data(),
                                            static_cast<uint32_t>(shape.size()))))
      break;
    if ((err = TRITONBACKEND_OutputBuffer(output, &buffer, b * row_bytes, &mem, &mem_id))) break;
    if (mem == TRITONSERVER_MEMORY_GPU && b * row_bytes > 0) {
      err = TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, "the server gave an output buffer in GPU memory");
      break;
    }
    std::copy(o.data + row * row_bytes, o.data + (row + b) * row_bytes, static_cast<char*>(buffer));
  }
  pending_[i] = Pending{response, err};
}

// Merges the group's requests, runs them once and responds to each; throws (before any response)
// when the merge or the run fails.
void Instance::run_group(TRITONBACKEND_Request** requests, const std::vector<uint32_t>& group) {
  std::vector<const Request*> reqs;
  int64_t samples = 0;
  for (uint32_t i : group) {
    reqs.push_back(&parsed_[i]);
    samples += parsed_[i].b;
  }
  Staging* staging = staging_.get();
  std::vector<Feed> feeds = merge(reqs, model_->spec, [staging](const std::string& name, size_t bytes) {
    return staging->take(name, bytes);
  });
  compute_start_ = now_ns();
  std::vector<Output> outs = session_->run(feeds, model_->spec.outputs);
  compute_end_ = now_ns();
  for (size_t k = 0; k < outs.size(); ++k)
    if (outs[k].shape.empty() || outs[k].shape[0] != samples)
      throw std::runtime_error("output '" + model_->spec.outputs[k] + "' does not have one row per sample");
  int64_t row = 0;
  for (uint32_t i : group) {
    respond(i, requests[i], outs, row, parsed_[i].b);
    row += parsed_[i].b;
  }
}

void Instance::execute(TRITONBACKEND_Request** requests, uint32_t n) {
  const uint64_t exec_start = now_ns();
  compute_start_ = compute_end_ = 0;
  parsed_.assign(n, Request{});
  pending_.assign(n, Pending{});
  gathered_.clear();
  std::vector<std::string> errors(n);
  std::vector<uint32_t> good;
  for (uint32_t i = 0; i < n; ++i) {
    TRITONBACKEND_Request* request = requests[i];
    try {
      errors[i] = parse_request([this, request](const std::string& name, View* v) { return read_input(request, name, v); },
                                model_->spec, &parsed_[i]);
    } catch (const std::exception& e) {
      errors[i] = e.what();
    }
    if (errors[i].empty()) good.push_back(i);
  }
  if (!good.empty()) {
    try {
      run_group(requests, good);
    } catch (const std::exception& e) {
      if (good.size() == 1) errors[good[0]] = one_line(e.what());
      for (size_t j = 0; good.size() > 1 && j < good.size(); ++j) {
        try {
          run_group(requests, {good[j]});
        } catch (const std::exception& e1) {
          errors[good[j]] = one_line(e1.what());
        }
      }
    }
  }
  if (compute_start_ == 0) compute_start_ = compute_end_ = now_ns();
  uint32_t succeeded = 0;
  for (uint32_t i = 0; i < n; ++i) {
    if (!errors[i].empty()) {
      pending_[i] = Pending{new_response(requests[i]),
                            TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INVALID_ARG, errors[i].c_str())};
    }
    succeeded += pending_[i].response != nullptr && pending_[i].error == nullptr;
  }
  const uint64_t exec_end = now_ns();
  for (uint32_t i = 0; i < n; ++i) {
    const bool ok = pending_[i].response != nullptr && pending_[i].error == nullptr;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceReportStatistics(instance_, requests[i], ok, exec_start,
                                                                             compute_start_, compute_end_, exec_end))
      TRITONSERVER_ErrorDelete(e);
  }
  if (succeeded > 0) {
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceReportBatchStatistics(instance_, succeeded, exec_start,
                                                                                 compute_start_, compute_end_, exec_end))
      TRITONSERVER_ErrorDelete(e);
  }
  for (uint32_t i = 0; i < n; ++i) {
    const Pending& p = pending_[i];
    if (p.response != nullptr) {
      if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseSend(p.response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, p.error))
        TRITONSERVER_ErrorDelete(e);
    }
    if (p.error != nullptr) TRITONSERVER_ErrorDelete(p.error);
    if (TRITONSERVER_Error* e = TRITONBACKEND_RequestRelease(requests[i], TRITONSERVER_REQUEST_RELEASE_ALL))
      TRITONSERVER_ErrorDelete(e);
  }
}

TRITONSERVER_Error* as_error(const std::exception& e) {
  return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INVALID_ARG, (std::string("dlrm_deploy: ") + e.what()).c_str());
}

}  // namespace
}  // namespace dd_triton

using dd_triton::Instance;
using dd_triton::ModelState;

DD_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend*) {
  uint32_t major = 0, minor = 0;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ApiVersion(&major, &minor)) return e;
  if (major != 1)
    return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_UNSUPPORTED,
                                 ("dlrm_deploy: backend API 1.x needed, the server has " + std::to_string(major) + "." +
                                  std::to_string(minor)).c_str());
  return nullptr;
}

DD_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
  try {
    return TRITONBACKEND_ModelSetState(model, dd_triton::load_model(model));
  } catch (const std::exception& e) {
    return dd_triton::as_error(e);
  }
}

DD_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
  void* state = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ModelState(model, &state)) return e;
  delete static_cast<ModelState*>(state);
  return nullptr;
}

DD_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
  try {
    TRITONBACKEND_Model* model = nullptr;
    void* state = nullptr;
    dd_triton::check(TRITONBACKEND_ModelInstanceModel(instance, &model));
    dd_triton::check(TRITONBACKEND_ModelState(model, &state));
    return TRITONBACKEND_ModelInstanceSetState(instance, new Instance(static_cast<ModelState*>(state), instance));
  } catch (const std::exception& e) {
    return dd_triton::as_error(e);
  }
}

DD_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
  void* state = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceState(instance, &state)) return e;
  delete static_cast<Instance*>(state);
  return nullptr;
}

DD_BACKEND_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                                        TRITONBACKEND_Request** requests,
                                                                        const uint32_t count) {
  void* state = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceState(instance, &state)) return e;
  static_cast<Instance*>(state)->execute(requests, count);
  return nullptr;
}
