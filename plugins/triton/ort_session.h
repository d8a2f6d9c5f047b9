// ONNX Runtime for the dlrm_deploy backend: the library is opened at run time (the path the model's
// config names, an onnxruntime package's libonnxruntime.so), so the backend links to no ONNX
// Runtime and needs only its C API headers to build.
#pragma once

#include <onnxruntime_c_api.h>

#include <memory>
#include <string>
#include <vector>

#include "packed_requests.h"

namespace dd_triton {

// The OrtApi of the ONNX Runtime library at `path` (opened once per path, kept for the process).
// Throws std::runtime_error naming the path when it cannot be opened or is older than ORT 1.18.
const OrtApi* load_onnxruntime(const std::string& path);

struct SessionOptions {
  std::string model, op_library;  // paths
  bool gpu = false;               // the CUDA execution provider (on device_id), else the CPU one
  int device_id = 0;
  int threads = 0;  // intra-op threads; 0: ONNX Runtime's default
};

// A model output in ONNX Runtime's memory (valid until the next run).
struct Output {
  Elem type;
  std::vector<int64_t> shape;
  const char* data;
  size_t bytes;
};

class Session {
 public:
  // Throws std::runtime_error with ONNX Runtime's message (e.g. no CUDA provider in this build).
  Session(const OrtApi* api, const SessionOptions& options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs the model on host feeds; outputs in `names` order. Throws std::runtime_error with the
  // failing node's message (our op's one line for bad ids) on failure.
  std::vector<Output> run(const std::vector<Feed>& feeds, const std::vector<std::string>& names);

 private:
  void check(OrtStatus* status);
  void release_outputs();

  const OrtApi* api_;
  OrtEnv* env_ = nullptr;
  OrtSession* session_ = nullptr;
  OrtMemoryInfo* cpu_ = nullptr;
  std::vector<OrtValue*> outputs_;
};

// cudaHostRegister / cudaHostUnregister of the CUDA runtime the CUDA provider loaded, or nullptrs.
struct HostRegister {
  int (*reg)(void* ptr, size_t bytes, unsigned flags) = nullptr;
  int (*unreg)(void* ptr) = nullptr;
  static HostRegister find();
};

// Merged inputs' buffers, one per input name, kept from run to run; page-locked where `host` can
// register them (the CUDA provider then copies them to the GPU by DMA without a staging copy).
class Staging {
 public:
  explicit Staging(HostRegister host) : host_(host) {}
  ~Staging();
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  void* take(const std::string& name, size_t bytes);

 private:
  struct Buffer {
    std::unique_ptr<char[]> data;
    size_t bytes = 0;
    bool registered = false;
  };
  HostRegister host_;
  std::vector<std::pair<std::string, Buffer>> buffers_;
};

}  // namespace dd_triton
