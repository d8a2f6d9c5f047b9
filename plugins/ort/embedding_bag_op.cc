// ONNX Runtime kernel of dlrm_deploy::EmbeddingBag (CPU and CUDA execution providers).
#include "embedding_bag_op.h"
#include "join_op.h"
#include "dlrm_deploy/mlp.h"

#include <cinttypes>
#include <cstdio>
#include <memory>
#include <set>
#include <vector>

namespace dd_ort {
namespace {

const char* ElementTypeName(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "double";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED: return "undefined";
    default: return "another type";
  }
}

// ONNX element type that stores a table of dtype (dd_dtype) / an output of out_dtype.
ONNXTensorElementDataType WeightsTypeOf(int32_t dtype) {
  switch (dtype) {
    case DD_FP32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DD_FP16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DD_BF16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case DD_INT8:
    case DD_INT4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;  // row-wise rows: bytes [rows, row_bytes]
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  }
}

OrtErrorCode ErrorCodeOf(int rc) {
  switch (rc) {
    case DD_ERR_CONFIG:
    case DD_ERR_INPUT: return ORT_INVALID_ARGUMENT;
    case DD_ERR_UNSUPPORTED: return ORT_NOT_IMPLEMENTED;
    default: return ORT_FAIL;
  }
}

bool Ok(const OrtApi& api, OrtStatus* status) {
  if (status == nullptr) return true;
  api.ReleaseStatus(status);
  return false;
}

// The node's attributes for the core's parser (dd_config_parse). ORT's C API has no call for an
// attribute's type: each kind is asked for in turn, a failed query just means "not this kind".
struct AttributeReader {
  const OrtApi& api;
  const OrtKernelInfo* info;
  std::string s;  // storage of the last string or list fetched
  std::vector<int64_t> ints;
};

int GetAttribute(void* ctx, const dd_field* field, dd_attribute* a) {
  auto* r = static_cast<AttributeReader*>(ctx);
  const char* name = field->name;
  size_t size = 0;
  float f = 0.0f;
  a->present = 1;
  if (Ok(r->api, r->api.KernelInfoGetAttribute_int64(r->info, name, &a->i))) {
    a->kind = DD_KIND_INT;
  } else if (Ok(r->api, r->api.KernelInfoGetAttribute_string(r->info, name, nullptr, &size))) {
    std::vector<char> buf(size + 1, '\0');
    if (!Ok(r->api, r->api.KernelInfoGetAttribute_string(r->info, name, buf.data(), &size))) return DD_ERR_CONFIG;
    r->s = buf.data();
    a->kind = DD_KIND_STRING;
    a->s = r->s.c_str();
  } else if (Ok(r->api, r->api.KernelInfoGetAttributeArray_int64(r->info, name, nullptr, &size))) {
    r->ints.assign(size, 0);
    if (size && !Ok(r->api, r->api.KernelInfoGetAttributeArray_int64(r->info, name, r->ints.data(), &size)))
      return DD_ERR_CONFIG;
    a->kind = DD_KIND_INTS;
    a->ints = r->ints.data();
    a->n = (int64_t)size;
  } else if (Ok(r->api, r->api.KernelInfoGetAttribute_float(r->info, name, &f))) {
    a->kind = -1;
    a->type_name = "float";
  } else if (Ok(r->api, r->api.KernelInfoGetAttributeArray_float(r->info, name, nullptr, &size))) {
    a->kind = -1;
    a->type_name = "floats";
  } else {
    a->present = 0;
  }
  return DD_OK;
}

std::string ShapeText(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Kernel

EmbeddingBagKernel::EmbeddingBagKernel(const OrtKernelInfo* info, Provider provider,
                                       ONNXTensorElementDataType weights_type, ONNXTensorElementDataType index_type,
                                       OrtStatusPtr* status)
    : provider_(provider), weights_type_(weights_type), index_type_(index_type) {
  dd_config_init(&cfg_);
  try {
    *status = Init(info);
  } catch (const Ort::Exception& e) {
    *status = Error(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    *status = Error(ORT_FAIL, e.what());
  }
}

EmbeddingBagKernel::~EmbeddingBagKernel() {
  ForgetCaptured();
  dd_overlap_destroy(overlap_);
  if (deferred_ != nullptr) {
    char text[DD_MSG_LEN];
    if (dd_deferred_poll_tables(deferred_, nullptr, nullptr, 1, Names(), text, sizeof(text)) == DD_ERR_INPUT)
      ReportDeferred(text);
    dd_deferred_destroy(deferred_);
  }
  if (workspace_allocator_ != nullptr) {
    if (persistent_workspace_ != nullptr) workspace_allocator_->Free(workspace_allocator_, persistent_workspace_);
    Ort::GetApi().ReleaseAllocator(workspace_allocator_);
  }
}

void EmbeddingBagKernel::ReportDeferred(const char* text) const {
  std::fprintf(stderr, "dlrm_deploy::EmbeddingBag%s%s%s: bad input in an earlier run (check=deferred: its bad lookups "
               "contributed zeros): %s\n", node_name_.empty() ? "" : " (node '", node_name_.c_str(),
               node_name_.empty() ? "" : "')", text);
}

OrtStatusPtr EmbeddingBagKernel::Error(OrtErrorCode code, const std::string& what) const {
  return OpError("EmbeddingBag", node_name_, code, what);
}

OrtStatusPtr EmbeddingBagKernel::Init(const OrtKernelInfo* info) {
  const OrtApi& api = Ort::GetApi();
  Ort::ConstKernelInfo kinfo(info);
  node_name_ = kinfo.GetNodeName();
  for (size_t i = 0; i < kinfo.GetInputCount(); ++i) input_names_.push_back(kinfo.GetInputName(i));

  // Every attribute of the contract goes through the core's parser.
  char msg[DD_MSG_LEN] = {0};
  AttributeReader reader{api, info, {}, {}};
  const int rc = dd_config_parse(&cfg_, GetAttribute, &reader,
                                 index_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ? DD_INT32 : DD_INT64, msg,
                                 sizeof(msg));
  if (rc != DD_OK) return Error(ErrorCodeOf(rc), msg);

  if (WeightsTypeOf(cfg_.dtype) != weights_type_)
    return Error(ORT_INVALID_ARGUMENT, std::string("weights are ") + ElementTypeName(weights_type_) +
                                           " but attribute dtype='" + dd_name("dtype", cfg_.dtype) + "' needs " +
                                           ElementTypeName(WeightsTypeOf(cfg_.dtype)));
  // The output's element type comes from the model (ORT cannot derive it from an attribute): it
  // must agree with out_dtype, or the kernel would write the wrong element size.
  const ONNXTensorElementDataType want_out = WeightsTypeOf(cfg_.out_dtype);
  ONNXTensorElementDataType declared = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  try {
    Ort::TypeInfo type_info = kinfo.GetOutputTypeInfo(0);
    if (type_info.GetONNXType() == ONNX_TYPE_TENSOR)
      declared = type_info.GetTensorTypeAndShapeInfo().GetElementType();
  } catch (const Ort::Exception&) {
    // type not known at kernel creation: checked again on every call
  }
  if (declared != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && declared != want_out)
    return Error(ORT_INVALID_ARGUMENT, std::string("the model declares the output as ") + ElementTypeName(declared) +
                                           " but attribute out_dtype='" + dd_name("dtype", cfg_.out_dtype) +
                                           "' produces " + ElementTypeName(want_out));

  // The variadic inputs' element types, where the model declares them (else checked per call).
  const size_t n = kinfo.GetInputCount(), T = (size_t)cfg_.num_tables;
  const bool per_table = n == 1 + 2 * T || n == 1 + 3 * T;
  const size_t index_inputs = per_table ? 2 * T : 2;
  for (size_t i = 2; i < n; ++i) {
    const ONNXTensorElementDataType want = i <= index_inputs ? index_type_ : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    ONNXTensorElementDataType got = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    try {
      Ort::TypeInfo ti = kinfo.GetInputTypeInfo(i);
      if (ti.GetONNXType() == ONNX_TYPE_TENSOR) got = ti.GetTensorTypeAndShapeInfo().GetElementType();
    } catch (const Ort::Exception&) {
    }
    if (got != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && got != want)
      return Error(ORT_INVALID_ARGUMENT, "input " + std::to_string(i) + " ('" + input_names_[i] + "') is " +
                                             ElementTypeName(got) + "; expected " + ElementTypeName(want) +
                                             (i <= index_inputs ? " (the type of the first indices input)" : ""));
  }

  if (provider_ == Provider::kCuda && cfg_.check != DD_UNCHECKED)
    Ort::ThrowOnError(api.KernelInfoGetAllocator(info, OrtMemTypeDefault, &workspace_allocator_));
  if (provider_ == Provider::kCuda && cfg_.overlap) {
    char msg[DD_MSG_LEN];
    overlap_ = dd_overlap_create(msg, sizeof(msg));
    if (overlap_ == nullptr) return Error(ORT_FAIL, msg);
  }
  if (per_table) {  // names for records reported after the call (deferred, CUDA graphs)
    names_.assign(T, dd_table_lookups{});
    for (size_t t = 0; t < T; ++t) {
      names_[t].indices_name = input_names_[1 + t].c_str();
      names_[t].offsets_name = input_names_[1 + T + t].c_str();
    }
  }
  if (provider_ == Provider::kCuda && cfg_.check == DD_DEFERRED) {
    char msg[DD_MSG_LEN];
    deferred_ = dd_deferred_create(msg, sizeof(msg));
    if (deferred_ == nullptr) return Error(ORT_FAIL, msg);
  }
  return nullptr;
}

OrtStatusPtr EmbeddingBagKernel::ComputeV2(OrtKernelContext* context) {
  return Guarded([&] { return Compute(context); },
                 [&](OrtErrorCode code, const char* what) { return Error(code, what); });
}

OrtStatusPtr EmbeddingBagKernel::GatherTables(Ort::KernelContext& ctx, std::vector<dd_table_lookups>* tables) const {
  const size_t T = (size_t)cfg_.num_tables, n = ctx.GetInputCount();
  const bool weighted = n == 1 + 3 * T;
  tables->assign(T, dd_table_lookups{});
  auto name = [&](size_t i) { return i < input_names_.size() ? input_names_[i].c_str() : nullptr; };
  auto tensor = [&](size_t i, ONNXTensorElementDataType want, const char* what, size_t t, int64_t* length,
                    const void** data) -> OrtStatusPtr {
    Ort::ConstValue v = ctx.GetInput(i);
    const std::string label = std::string(what) + " '" + (name(i) ? name(i) : "?") + "' (table " + std::to_string(t) + ")";
    if (!v) return Error(ORT_INVALID_ARGUMENT, label + " is missing");
    const auto info = v.GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != want)
      return Error(ORT_INVALID_ARGUMENT, label + " is " + ElementTypeName(info.GetElementType()) + "; expected " +
                                             ElementTypeName(want) + " like the first indices input");
    const std::vector<int64_t> shape = info.GetShape();
    if (shape.size() != 1) return Error(ORT_INVALID_ARGUMENT, label + " must be 1-D, got shape " + ShapeText(shape));
    *length = shape[0];
    *data = v.GetTensorRawData();
    return nullptr;
  };
  for (size_t t = 0; t < T; ++t) {
    dd_table_lookups& tl = (*tables)[t];
    const void* p = nullptr;
    if (OrtStatusPtr st = tensor(1 + t, index_type_, "indices", t, &tl.num_indices, &p)) return st;
    tl.indices = p;
    if (OrtStatusPtr st = tensor(1 + T + t, index_type_, "offsets", t, &tl.num_offsets, &p)) return st;
    tl.offsets = p;
    tl.indices_name = name(1 + t);
    tl.offsets_name = name(1 + T + t);
    if (weighted) {
      int64_t count = 0;
      if (OrtStatusPtr st = tensor(1 + 2 * T + t, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "per_sample_weights", t,
                                   &count, &p))
        return st;
      if (count != tl.num_indices)
        return Error(ORT_INVALID_ARGUMENT, std::string("per_sample_weights must have shape [") +
                                               std::to_string(tl.num_indices) + "] like indices '" +
                                               (tl.indices_name ? tl.indices_name : "?") + "', got [" +
                                               std::to_string(count) + "]");
      tl.per_sample_weights = static_cast<const float*>(p);
    }
  }
  return nullptr;
}

OrtStatusPtr EmbeddingBagKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const size_t num_inputs = ctx.GetInputCount();
  const size_t T = (size_t)cfg_.num_tables;
  // Per-table form: 1 + 2T or 1 + 3T inputs (T = 1: the same as the packed form's 3 or 4).
  const bool per_table = num_inputs == 1 + 2 * T || num_inputs == 1 + 3 * T;
  if (!per_table && num_inputs != 3 && num_inputs != 4)
    return Error(ORT_INVALID_ARGUMENT, "expected weights then " + std::to_string(T) + " indices, " +
                                           std::to_string(T) + " offsets and optionally " + std::to_string(T) +
                                           " per_sample_weights inputs (or the packed form's indices, offsets "
                                           "[, per_sample_weights]); got " + std::to_string(num_inputs) + " inputs");
  Ort::ConstValue weights = ctx.GetInput(0);
  if (!weights) return Error(ORT_INVALID_ARGUMENT, "weights are required");

  const int64_t D = cfg_.dim;
  const std::vector<int64_t> wshape = weights.GetTensorTypeAndShapeInfo().GetShape();
  char msg[DD_MSG_LEN] = {0};
  if (dd_check_weights_shape(&cfg_, (int32_t)wshape.size(), wshape.data(), msg, sizeof(msg)) != DD_OK)
    return Error(ORT_INVALID_ARGUMENT, msg);
  std::vector<dd_table_lookups> tables;
  const void *idx = nullptr, *off = nullptr;
  const float* psw_data = nullptr;
  int64_t num_indices = 0, num_offsets = 0, batch = 0;
  if (per_table) {
    if (OrtStatusPtr st = GatherTables(ctx, &tables)) return st;
    batch = tables[0].num_offsets - cfg_.include_last_offset;
    if (batch < 0) batch = 0;  // the core names the table and the problem
  } else {
    Ort::ConstValue indices = ctx.GetInput(1), offsets = ctx.GetInput(2);
    Ort::ConstValue psw = num_inputs > 3 ? ctx.GetInput(3) : Ort::ConstValue(nullptr);
    if (!indices || !offsets) return Error(ORT_INVALID_ARGUMENT, "indices and offsets are required");
    const std::vector<int64_t> ishape = indices.GetTensorTypeAndShapeInfo().GetShape();
    if (ishape.size() != 1) return Error(ORT_INVALID_ARGUMENT, "indices must be 1-D, got shape " + ShapeText(ishape));
    const auto oinfo = offsets.GetTensorTypeAndShapeInfo();
    if (oinfo.GetElementType() != index_type_)
      return Error(ORT_INVALID_ARGUMENT, std::string("offsets are ") + ElementTypeName(oinfo.GetElementType()) +
                                             "; expected the type of indices");
    const std::vector<int64_t> oshape = oinfo.GetShape();
    if (oshape.size() != 1) return Error(ORT_INVALID_ARGUMENT, "offsets must be 1-D, got shape " + ShapeText(oshape));
    num_indices = ishape[0];
    num_offsets = oshape[0];
    if (psw) {
      const auto pinfo = psw.GetTensorTypeAndShapeInfo();
      const std::vector<int64_t> pshape = pinfo.GetShape();
      if (pinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || pshape.size() != 1 ||
          pshape[0] != num_indices)
        return Error(ORT_INVALID_ARGUMENT, "per_sample_weights must have shape [" + std::to_string(num_indices) +
                                               "] like indices (float), got " + ShapeText(pshape));
      psw_data = psw.GetTensorData<float>();
    }
    batch = dd_batch_size(&cfg_, num_offsets, msg, sizeof(msg));
    if (batch < 0) return Error(ORT_INVALID_ARGUMENT, msg);
    idx = indices.GetTensorRawData();
    off = offsets.GetTensorRawData();
  }
  Ort::UnownedValue output = ctx.GetOutput(0, {batch, (int64_t)T * D});
  const ONNXTensorElementDataType out_type = output.GetTensorTypeAndShapeInfo().GetElementType();
  if (out_type != WeightsTypeOf(cfg_.out_dtype))
    return Error(ORT_INVALID_ARGUMENT, std::string("the node's output is ") + ElementTypeName(out_type) +
                                           " but attribute out_dtype='" + dd_name("dtype", cfg_.out_dtype) +
                                           "' produces " + ElementTypeName(WeightsTypeOf(cfg_.out_dtype)));
  void* out = output.GetTensorMutableRawData();
  OrtStatusPtr st = Launch(context, weights.GetTensorRawData(), idx, off, psw_data, num_indices, num_offsets,
                           per_table ? &tables : nullptr, out, msg);
  if (st == nullptr && provider_ == Provider::kCuda && !cfg_.overlap) {  // launched on ORT's stream, in order
    const size_t bytes = (size_t)batch * T * D * (out_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? 4 : 2);
    ThreadLookups() = {Ort::KernelContext(context).GetGPUComputeStream(), reinterpret_cast<uintptr_t>(out),
                       reinterpret_cast<uintptr_t>(out) + bytes};
  }
  return st;
}

// Runs the core on this provider (per-table form when tables is not null, else packed).
OrtStatusPtr EmbeddingBagKernel::Launch(OrtKernelContext* context, const void* w, const void* idx, const void* off,
                                        const float* psw, int64_t num_indices, int64_t num_offsets,
                                        const std::vector<dd_table_lookups>* tables, void* out, char* msg) {
  const OrtApi& api = Ort::GetApi();
  int rc = DD_OK;
  if (provider_ == Provider::kCpu) {
    // Bags spread over ONNX Runtime's intra-op thread pool: OrtApi::KernelContext_ParallelFor
    // (API 17, so inside the version-18 table this library asks for). Where ORT cannot run it
    // (a build without the kernel-context API), everything runs on this thread.
    struct Pool {
      const OrtApi* api;
      OrtKernelContext* context;
    };
    struct Body {
      dd_range_fn fn;
      void* arg;
    };
    Pool pool{&api, context};
    const dd_parallel_for_fn parallel_for = [](void* p, int64_t n, dd_range_fn fn, void* arg) {
      const Pool& pl = *static_cast<const Pool*>(p);
      Body body{fn, arg};
      auto one_task = [](void* b, size_t i) {
        const Body& bd = *static_cast<const Body*>(b);
        bd.fn(bd.arg, (int64_t)i, (int64_t)i + 1);
      };
      if (OrtStatus* st = pl.api->KernelContext_ParallelFor(pl.context, one_task, (size_t)n, 0, &body)) {
        pl.api->ReleaseStatus(st);
        fn(arg, 0, n);
      }
    };
    rc = tables ? dd_forward_tables_cpu_parallel(&cfg_, w, tables->data(), out, parallel_for, &pool, msg, DD_MSG_LEN)
                : dd_forward_cpu_parallel(&cfg_, w, idx, off, psw, num_indices, num_offsets, out, parallel_for, &pool,
                                          msg, DD_MSG_LEN);
  } else {
    // The CUDA provider's call. With overlap it may run after Compute has returned (overlap=2
    // launches it from the joining node), so it then owns a copy of the per-table list; otherwise
    // it reads the caller's, alive until Launch returns.
    std::vector<dd_table_lookups> kept;
    if (tables != nullptr && cfg_.overlap) kept = *tables;
    const dd_table_lookups* borrowed = tables != nullptr && !cfg_.overlap ? tables->data() : nullptr;
    const bool packed = tables == nullptr;
    Forward forward = [=, kept = std::move(kept)](void* ws, void* stream, const dd_config* cfg, char* m) {
      return packed ? dd_forward_cuda(cfg, w, idx, off, psw, num_indices, num_offsets, out, ws, stream, m, DD_MSG_LEN)
                    : dd_forward_tables_cuda(cfg, w, borrowed ? borrowed : kept.data(), out, ws, stream, m,
                                             DD_MSG_LEN);
    };
    Ort::KernelContext ctx(context);
    void* stream = ctx.GetGPUComputeStream();
    const size_t ws_bytes = dd_workspace_size(&cfg_);
    if (cfg_.overlap) {
      const int64_t batch = tables ? (*tables)[0].num_offsets - cfg_.include_last_offset
                                   : dd_batch_size(&cfg_, num_offsets, msg, DD_MSG_LEN);
      return LaunchOverlapped(forward, stream, out, tables, batch, msg);
    }
    if (cfg_.check == DD_DEFERRED) {
      // Bad lookups contribute zeros without a synchronisation; the record's host copy is examined
      // at a later run (never blocking) and reported on stderr, since this run's status cannot
      // carry it (use check=checked for errors as statuses).
      rc = LaunchDeferred(forward, stream, msg);
    } else if (cfg_.check == DD_CHECKED && dd_stream_capturing(stream)) {
      rc = LaunchCaptured(forward, stream, msg);
    } else if (cfg_.check == DD_CHECKED) {
      // What a CUDA-graph capture will need, made now: capture forbids allocating (ORT runs the
      // model normally before it captures).
      if (OrtStatusPtr st = PrepareCapture(stream)) return st;
      // Per call, from the execution provider's (arena) allocator: concurrent runs never share it.
      OrtAllocator* allocator = nullptr;
      Ort::ConstValue w0 = ctx.GetInput(0);
      Ort::ThrowOnError(api.KernelContext_GetAllocator(context, w0.GetTensorMemoryInfo(), &allocator));
      void* ws = allocator->Alloc(allocator, ws_bytes);
      if (ws == nullptr) {
        api.ReleaseAllocator(allocator);
        return Error(ORT_FAIL, "cannot allocate the kernel workspace");
      }
      // checked mode synchronises the stream before returning, so the workspace is free again.
      rc = forward(ws, stream, &cfg_, msg);
      allocator->Free(allocator, ws);
      api.ReleaseAllocator(allocator);
    } else {
      rc = forward(nullptr, stream, &cfg_, msg);
    }
  }
  if (rc != DD_OK) return Error(ErrorCodeOf(rc), msg);
  return nullptr;
}

// check=checked inside a CUDA graph: ORT captures the run once and replays it without calling
// Compute again, so the kernel cannot return a status per replay. The captured work clears the
// error record, validates as deferred does (bad lookups add zeros, nothing out of bounds) and
// copies the record to pinned host memory behind the launch; after each replay,
// dd_ort_captured_error() (called by dlrm_deploy's OrtSession) reads those copies and reports the
// first error of that replay.
namespace {
std::mutex g_captured_mutex;
std::set<const EmbeddingBagKernel*> g_captured;
}  // namespace

OrtStatusPtr EmbeddingBagKernel::PrepareCapture(void* stream) {
  std::lock_guard<std::mutex> lock(workspace_mutex_);
  if (workspace_allocator_ == nullptr || deferred_ != nullptr) return nullptr;
  char text[DD_MSG_LEN];
  persistent_workspace_ = workspace_allocator_->Alloc(workspace_allocator_, dd_workspace_size(&cfg_));
  if (persistent_workspace_ == nullptr) return Error(ORT_FAIL, "cannot allocate the kernel workspace");
  if (dd_clear_error(persistent_workspace_, stream, text, sizeof(text)) != DD_OK) return Error(ORT_FAIL, text);
  deferred_ = dd_deferred_create(text, sizeof(text));
  return deferred_ == nullptr ? Error(ORT_FAIL, text) : nullptr;
}

int EmbeddingBagKernel::LaunchCaptured(const Forward& forward, void* stream, char* msg) {
  std::lock_guard<std::mutex> lock(workspace_mutex_);
  if (persistent_workspace_ == nullptr || deferred_ == nullptr)
    return std::snprintf(msg, DD_MSG_LEN, "check=checked in a CUDA graph needs one regular run before capture "
                                          "(ONNX Runtime makes one)"), DD_ERR_CONFIG;
  dd_config cfg = cfg_;
  cfg.check = DD_DEFERRED;
  // The record was cleared when it was made (PrepareCapture) and each replay clears it behind its
  // copy, so every replay starts clear without a memset node in front of the lookups.
  int rc = forward(persistent_workspace_, stream, &cfg, msg);
  if (rc == DD_OK) rc = dd_deferred_after_launch_clear(deferred_, persistent_workspace_, stream, msg, DD_MSG_LEN);
  if (rc == DD_OK) {
    std::lock_guard<std::mutex> reg(g_captured_mutex);
    g_captured.insert(this);
  }
  return rc;
}

// The lookups on the op's own stream, joined back by the Join node reading output. check=checked
// runs as deferred there (nothing synchronises here) and Join reads the record (or, inside a CUDA
// graph capture, the session does after the replay, as in LaunchCaptured). overlap=2: the stream
// forks here but the lookups are launched when the joining node runs (FinishPending), after the
// nodes between (the bottom MLP, beside=1) were launched, so that those take their SMs first; the
// inputs are graph inputs and initializers (the export's overlap pass checks), alive until then.
OrtStatusPtr EmbeddingBagKernel::LaunchOverlapped(const Forward& forward, void* stream, const void* output,
                                                  const std::vector<dd_table_lookups>* tables, int64_t batch,
                                                  char* msg) {
  const bool capturing = dd_stream_capturing(stream) != 0;
  if (!capturing && cfg_.check == DD_CHECKED)
    if (OrtStatusPtr st = PrepareCapture(stream)) return st;
  void* side = dd_overlap_fork(overlap_, stream, msg, DD_MSG_LEN);
  if (side == nullptr) return Error(ORT_FAIL, msg);
  PendingLookups pending;
  pending.overlap = overlap_;
  pending.node = node_name_;
  if (tables != nullptr) pending.names = *tables;
  if (cfg_.check == DD_CHECKED && !capturing) {
    pending.workspace = workspace_allocator_->Alloc(workspace_allocator_, dd_workspace_size(&cfg_));
    if (pending.workspace == nullptr) return Error(ORT_FAIL, "cannot allocate the kernel workspace");
    pending.allocator = workspace_allocator_;
    pending.checked = true;
  }
  void* ws = pending.workspace;
  auto launch = [this, forward, side, capturing, ws](char* m) {
    int rc = DD_OK;
    if (cfg_.check == DD_UNCHECKED) {
      rc = forward(nullptr, side, &cfg_, m);
    } else if (cfg_.check == DD_DEFERRED) {
      rc = LaunchDeferred(forward, side, m);
    } else if (capturing) {
      rc = LaunchCaptured(forward, side, m);
    } else {
      dd_config cfg = cfg_;
      cfg.check = DD_DEFERRED;  // validate without synchronising; Join synchronises and reports
      rc = dd_clear_error(ws, side, m, DD_MSG_LEN);
      if (rc == DD_OK) rc = forward(ws, side, &cfg, m);
    }
    if (rc == DD_OK) rc = dd_overlap_done(overlap_, m, DD_MSG_LEN);
    return rc;
  };
  // overlap=2 waits for the joining node only where the bottom MLP (beside=1) will take few SMs at
  // this batch; else (small batches: it takes every SM) the lookups start at once, as overlap=1.
  if (cfg_.overlap == 2 && dd_mlp_beside_blocks(batch) > 0) {
    pending.launch = launch;
  } else if (int rc = launch(msg)) {
    if (pending.allocator != nullptr) pending.allocator->Free(pending.allocator, pending.workspace);
    return Error(ErrorCodeOf(rc), msg);
  }
  RegisterPending(output, std::move(pending));
  return nullptr;
}

// check=deferred: a workspace kept across calls; an earlier run's bad input goes to stderr.
int EmbeddingBagKernel::LaunchDeferred(const Forward& forward, void* stream, char* msg) {
  std::lock_guard<std::mutex> lock(workspace_mutex_);
  if (persistent_workspace_ == nullptr) {
    persistent_workspace_ = workspace_allocator_->Alloc(workspace_allocator_, dd_workspace_size(&cfg_));
    if (persistent_workspace_ == nullptr)
      return std::snprintf(msg, DD_MSG_LEN, "cannot allocate the kernel workspace"), DD_ERR_CUDA;
    char ignored[DD_MSG_LEN];
    dd_read_error(&cfg_, persistent_workspace_, stream, ignored, sizeof(ignored));  // clears the record
  }
  char earlier[DD_MSG_LEN];
  if (!dd_stream_capturing(stream) &&  // capture forbids querying events
      dd_deferred_poll_tables(deferred_, persistent_workspace_, stream, 0, Names(), earlier, sizeof(earlier)) ==
          DD_ERR_INPUT)
    ReportDeferred(earlier);
  int rc = forward(persistent_workspace_, stream, &cfg_, msg);
  if (rc == DD_OK) rc = dd_deferred_after_launch(deferred_, persistent_workspace_, stream, msg, DD_MSG_LEN);
  return rc;
}

int EmbeddingBagKernel::CapturedError(char* msg, size_t len) const {
  char text[DD_MSG_LEN];
  if (deferred_ == nullptr ||
      dd_deferred_poll_tables(deferred_, nullptr, nullptr, 1, Names(), text, sizeof(text)) != DD_ERR_INPUT)
    return DD_OK;
  std::snprintf(msg, len, "dlrm_deploy::EmbeddingBag%s%s%s: %s", node_name_.empty() ? "" : " (node '",
                node_name_.c_str(), node_name_.empty() ? "" : "')", text);
  return DD_ERR_INPUT;
}

void EmbeddingBagKernel::ForgetCaptured() const {
  std::lock_guard<std::mutex> reg(g_captured_mutex);
  g_captured.erase(this);
}

// ---------------------------------------------------------------------------------------------
// Op (schema side)

EmbeddingBagOp::EmbeddingBagOp(Provider provider, ONNXTensorElementDataType weights_type,
                               ONNXTensorElementDataType index_type)
    : provider_(provider), weights_type_(weights_type), index_type_(index_type) {
  // See kMinOrtApiVersion: ORT reads only the members that existed at this API version.
  OrtCustomOp::version = kMinOrtApiVersion;
}

OrtStatusPtr EmbeddingBagOp::CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
  OrtStatusPtr status = nullptr;
  std::unique_ptr<EmbeddingBagKernel> k;
  try {
    k = std::make_unique<EmbeddingBagKernel>(info, provider_, weights_type_, index_type_, &status);
  } catch (const std::exception& e) {
    *kernel = nullptr;
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  if (status != nullptr) {
    *kernel = nullptr;
    return status;
  }
  *kernel = k.release();
  return nullptr;
}

const char* EmbeddingBagOp::GetName() const {
  const char* op_type = nullptr;
  dd_op_identity(nullptr, &op_type, nullptr);
  return op_type;
}

const char* EmbeddingBagOp::GetExecutionProviderType() const { return ProviderName(provider_); }

ONNXTensorElementDataType EmbeddingBagOp::GetInputType(size_t index) const {
  switch (index) {
    case 0: return weights_type_;
    case 1: return index_type_;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // heterogeneous variadic
  }
}

OrtCustomOpInputOutputCharacteristic EmbeddingBagOp::GetInputCharacteristic(size_t index) const {
  return index == 2 ? INPUT_OUTPUT_VARIADIC : INPUT_OUTPUT_REQUIRED;
}

}  // namespace dd_ort

// The first bad input of the last CUDA-graph replay of any check=checked kernel (see
// LaunchCaptured): DD_ERR_INPUT with the message, or DD_OK. Call after the replay finished (ONNX
// Runtime's Run returns after synchronising). Each report is returned once.
extern "C" __attribute__((visibility("default"))) int dd_ort_captured_error(char* msg, size_t len) {
  std::lock_guard<std::mutex> reg(dd_ort::g_captured_mutex);
  for (const dd_ort::EmbeddingBagKernel* k : dd_ort::g_captured) {
    const int rc = k->CapturedError(msg, len);
    if (rc != DD_OK) return rc;
  }
  if (msg && len) msg[0] = 0;
  return DD_OK;
}
