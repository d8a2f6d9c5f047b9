// The packed request form (docs/triton.md, "Request forms") read and merged without Triton or ONNX
// Runtime objects: what runtime/triton_python_model.py's parse_packed / merge_packed do in the
// python backend, for the dlrm_deploy backend.
//
// One request = the per-sample inputs [1, b, ...], one `ids` input [1, N] (every table's ids,
// table-major), one `lengths` input [1, T*b] (INT32, ids per sample per table, table-major) and,
// where the model takes per-sample weights, one `weights` input [1, N_w]. Lengths concatenate
// exactly when requests merge; the model's offsets are derived here.
#pragma once

#include <onnxruntime_c_api.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "json_value.h"

namespace dd_triton {

using Elem = ONNXTensorElementDataType;

size_t elem_size(Elem t);
// ONNX element type of a numpy dtype name as dlrm_deploy_io.json writes it ("int32", "float16", ...).
Elem elem_from_numpy(const std::string& name);
// The numpy name of an element type ("int32", ...), for messages.
std::string elem_name(Elem t);

struct BagSpec {
  std::string indices, offsets, lengths, weights;  // offsets empty: the model takes lengths itself
  int t0 = 0, t1 = 0;                               // its tables in the packed ids: [t0, t1)
  bool include_last_offset = false;
  Elem indices_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  Elem offsets_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
};

// dlrm_deploy_io.json of a packed-form model. from_json throws std::runtime_error for another form.
struct Spec {
  std::string onnx, library;
  std::vector<std::string> dense, outputs;
  std::vector<BagSpec> bags;
  std::string ids, lengths, weights;  // request input names (weights empty: the model has none)
  int tables = 0;
  std::vector<char> weighted;  // per table: its ids carry per-sample weights
  Elem ids_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  Elem weights_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;

  static Spec from_json(const Json& j);
};

// A tensor in host memory, not owned.
struct View {
  const void* data = nullptr;
  Elem type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;  // as sent, Triton's leading 1 included
  size_t bytes = 0;
};

// get(name, &view) fills one request input; returns "" or the reason it cannot (missing, GPU memory).
using InputGetter = std::function<std::string(const std::string& name, View* view)>;

struct Request {
  int64_t b = 0;                   // samples
  std::vector<View> dense;         // the spec's per-sample inputs, in order
  const int32_t* lengths = nullptr;  // [T * b]
  View ids, weights;
  std::vector<int64_t> bounds, wbounds;  // [T + 1]: where each table's ids (weights) start
};

// Reads one request; returns "" or the one-line reason it breaks the request form (that request's error).
std::string parse_request(const InputGetter& get, const Spec& spec, Request* out);

// A merged model input in a staging buffer.
struct Feed {
  std::string name;
  Elem type;
  std::vector<int64_t> shape;
  void* data;
  size_t bytes;
};

// take(name, bytes): a buffer for merged input `name`, valid until the next merge.
using Take = std::function<void*(const std::string& name, size_t bytes)>;

// The model inputs of the requests run as one batch (rows in request order). Throws
// std::runtime_error when they cannot be merged (per-sample dims that differ, an id that does not fit
// the model's index type, offsets past the model's INT32 range).
std::vector<Feed> merge(const std::vector<const Request*>& requests, const Spec& spec, const Take& take);

}  // namespace dd_triton
