// CUDA services the adapters call beside the forward: error records read after a checked launch
// or deferred (TensorRT's enqueue cannot fail per batch), the persisting-L2 carve-out, the overlap
// stream, row copies and device queries. The lookup kernels are in embedding_bag_cuda.cu; the one
// kernel here copies an error record into mapped host memory inside a CUDA graph.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cuda/pdl.cuh"
#include "cuda/status.cuh"
#include "internal.h"

using dd::fail;

extern "C" {

// ---- error records: read after the launch (checked) or at a later call (deferred) ----
int dd_clear_error(void* workspace, void* stream_ptr, char* msg, size_t len) {
  if (!workspace) return fail(DD_ERR_CONFIG, msg, len, "no workspace");
  cudaError_t e = cudaMemsetAsync(workspace, 0, sizeof(dd::ErrorRecord), static_cast<cudaStream_t>(stream_ptr));
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "clearing the error record", msg, len);
}

int dd_fetch_error(void* workspace, void* stream_ptr, dd_error_record* record, char* msg, size_t len) {
  if (!workspace || !record) return fail(DD_ERR_CONFIG, msg, len, "no workspace");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t e = cudaMemcpyAsync(record, workspace, sizeof(*record), cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaMemsetAsync(workspace, 0, sizeof(*record), stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "reading the error record", msg, len);
}

int dd_read_error(const dd_config*, void* workspace, void* stream_ptr, char* msg, size_t len) {
  dd::ErrorRecord rec{};
  const int rc = dd_fetch_error(workspace, stream_ptr, &rec, msg, len);
  return rc != DD_OK ? rc : dd_format_error(&rec, msg, len);
}

struct dd_deferred {
  dd_error_record* host = nullptr;  // pinned
  dd_error_record* mapped = nullptr;  // host as the device sees it (NULL: not mapped; copies then)
  cudaEvent_t done = nullptr;
  bool pending = false;   // a copy with an event behind it was queued and not yet examined
  bool captured = false;  // a copy was captured into a CUDA graph: replays write host, no event says when
  int major = 0;          // the device's compute capability (programmatic dependent launch from 9)
};

dd_deferred* dd_deferred_create(char* msg, size_t len) {
  auto* d = new dd_deferred;
  cudaError_t e = cudaHostAlloc(reinterpret_cast<void**>(&d->host), sizeof(dd_error_record), cudaHostAllocDefault);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&d->done, cudaEventDisableTiming);
  if (e != cudaSuccess) {
    dd::cuda_fail(e, "setting up deferred error reports", msg, len);
    dd_deferred_destroy(d);
    return nullptr;
  }
  std::memset(d->host, 0, sizeof(dd_error_record));
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&d->major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    d->major = 0;
    cudaGetLastError();
  }
  if (cudaHostGetDevicePointer(reinterpret_cast<void**>(&d->mapped), d->host, 0) != cudaSuccess) {
    d->mapped = nullptr;
    cudaGetLastError();  // not mapped: the captured path copies instead
  }
  return d;
}

namespace {
// The error record into mapped host memory, for CUDA graphs: the device-to-host memcpy node it
// replaces left the GPU idle for about 14 us after the lookups of every replay (H100 profile).
// clear: the device record is zeroed behind the copy (the next launch then reports only its own
// errors, without a memset node in front of it). Launched after the lookups with programmatic
// dependent launch (cuda/pdl.cuh), so that the kernel after it can start as the lookups end.
__global__ void store_record(dd_error_record* to, dd_error_record* from, bool clear) {
  static_assert(sizeof(dd_error_record) % sizeof(uint32_t) == 0, "record of whole words");
  dd::pdl_trigger();
  dd::pdl_wait();
  const unsigned i = threadIdx.x;
  if (i < sizeof(dd_error_record) / sizeof(uint32_t)) {
    uint32_t* word = reinterpret_cast<uint32_t*>(from) + i;
    reinterpret_cast<volatile uint32_t*>(to)[i] = *word;
    if (clear) *word = 0;
  }
}
// Rows of 32-bit words, pitched (the Join's concatenation): a kernel node in a CUDA graph, where a
// 2-D memcpy node goes through a copy engine and its setup latency.
__global__ void copy_words(uint32_t* dst, size_t dst_pitch, const uint32_t* src, size_t src_pitch, size_t width,
                           size_t rows) {
  const size_t total = width * rows;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / width, c = i % width;
    dst[r * dst_pitch + c] = src[r * src_pitch + c];
  }
}
}  // namespace

void dd_deferred_destroy(dd_deferred* d) {
  if (!d) return;
  if (d->done) cudaEventDestroy(d->done);
  if (d->host) cudaFreeHost(d->host);
  delete d;
}

namespace {
int after_launch(dd_deferred* d, void* workspace, void* stream_ptr, bool clear, char* msg, size_t len) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaStreamIsCapturing(stream, &capture);
  cudaError_t e;
  if (capture != cudaStreamCaptureStatusNone && d->mapped != nullptr) {
    e = dd::launch_pdl(store_record, dim3(1), dim3(32), 0, stream, d->major, d->mapped,
                       static_cast<dd_error_record*>(workspace), clear);
    if (e == cudaSuccess) e = cudaGetLastError();
  } else {
    e = cudaMemcpyAsync(d->host, workspace, sizeof(dd_error_record), cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess && clear) e = cudaMemsetAsync(workspace, 0, sizeof(dd_error_record), stream);
  }
  if (e != cudaSuccess) return dd::cuda_fail(e, "queueing the error-record copy", msg, len);
  if (capture != cudaStreamCaptureStatusNone) {
    d->captured = true;
  } else {
    e = cudaEventRecord(d->done, stream);
    if (e != cudaSuccess) return dd::cuda_fail(e, "recording the error-record event", msg, len);
    d->pending = true;
  }
  return DD_OK;
}
}  // namespace

int dd_deferred_after_launch(dd_deferred* d, const void* workspace, void* stream_ptr, char* msg, size_t len) {
  return after_launch(d, const_cast<void*>(workspace), stream_ptr, false, msg, len);
}

int dd_deferred_after_launch_clear(dd_deferred* d, void* workspace, void* stream_ptr, char* msg, size_t len) {
  return after_launch(d, workspace, stream_ptr, true, msg, len);
}

int dd_deferred_poll(dd_deferred* d, void* workspace, void* stream_ptr, int wait, char* msg, size_t len) {
  return dd_deferred_poll_tables(d, workspace, stream_ptr, wait, nullptr, msg, len);
}

int dd_deferred_poll_tables(dd_deferred* d, void* workspace, void* stream_ptr, int wait, const dd_table_lookups* tables,
                            char* msg, size_t len) {
  if (msg && len) msg[0] = 0;
  if (d->pending) {
    cudaError_t e = wait ? cudaEventSynchronize(d->done) : cudaEventQuery(d->done);
    if (e == cudaErrorNotReady) return DD_OK;  // still running: looked at next time
    if (e != cudaSuccess) return dd::cuda_fail(e, "waiting for the error-record copy", msg, len);
    d->pending = false;
  } else if (!(wait && d->captured)) {
    return DD_OK;
  }
  const int rc = dd_format_error_tables(d->host, tables, msg, len);
  if (rc != DD_OK) {
    d->host->code = 0;
    if (workspace) cudaMemsetAsync(workspace, 0, sizeof(dd_error_record), static_cast<cudaStream_t>(stream_ptr));
  }
  return rc;
}

// ---- L2 persistence: the carve-out the access-policy window of the hot rows draws on ----
int dd_setup_l2_persistence(const dd_config* cfg, size_t* reserved, char* msg, size_t len) {
  if (reserved) *reserved = 0;
  int dev = 0, max_persist = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&max_persist, cudaDevAttrMaxPersistingL2CacheSize, dev);
  if (e != cudaSuccess) return dd::cuda_fail(e, "querying persisting L2", msg, len);
  const size_t want = (size_t)cfg->num_tables * (size_t)cfg->pinned_rows * (size_t)dd_row_bytes(cfg);
  const size_t bytes = std::min(want, (size_t)max_persist);
  size_t current = 0;
  cudaDeviceGetLimit(&current, cudaLimitPersistingL2CacheSize);
  if (bytes > current) {
    e = cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, bytes);
    if (e != cudaSuccess) return dd::cuda_fail(e, "cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize)", msg, len);
    current = bytes;
  }
  if (reserved) *reserved = current;
  return DD_OK;
}

// ---- the overlap stream: the lookups beside the graph's other nodes ----
struct dd_overlap {
  cudaStream_t side = nullptr;
  cudaEvent_t fork = nullptr, done = nullptr;
};

dd_overlap* dd_overlap_create(char* msg, size_t len) {
  auto* o = new dd_overlap;
  cudaError_t e = cudaStreamCreateWithFlags(&o->side, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&o->fork, cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&o->done, cudaEventDisableTiming);
  if (e != cudaSuccess) {
    dd::cuda_fail(e, "creating the overlap stream", msg, len);
    dd_overlap_destroy(o);
    return nullptr;
  }
  return o;
}

void dd_overlap_destroy(dd_overlap* o) {
  if (!o) return;
  if (o->side) cudaStreamSynchronize(o->side);
  if (o->fork) cudaEventDestroy(o->fork);
  if (o->done) cudaEventDestroy(o->done);
  if (o->side) cudaStreamDestroy(o->side);
  delete o;
}

void* dd_overlap_fork(dd_overlap* o, void* stream, char* msg, size_t len) {
  cudaError_t e = cudaEventRecord(o->fork, static_cast<cudaStream_t>(stream));
  if (e == cudaSuccess) e = cudaStreamWaitEvent(o->side, o->fork, 0);
  if (e != cudaSuccess) {
    dd::cuda_fail(e, "forking the overlap stream", msg, len);
    return nullptr;
  }
  return o->side;
}

int dd_overlap_done(dd_overlap* o, char* msg, size_t len) {
  cudaError_t e = cudaEventRecord(o->done, o->side);
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "recording the end of the overlapped work", msg, len);
}

int dd_overlap_join(dd_overlap* o, void* stream, char* msg, size_t len) {
  cudaError_t e = cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), o->done, 0);
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "joining the overlap stream", msg, len);
}

// ---- copies and queries ----
int dd_copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                 int on_device, void* stream, char* msg, size_t len) {
  if (rows == 0 || width == 0) return DD_OK;
  if (!on_device) {
    for (size_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
    return DD_OK;
  }
  const uintptr_t bits = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | dst_pitch | src_pitch | width;
  const size_t total = (bits % 4 == 0 ? width / 4 : width) * rows;
  if (bits % 4 != 0 || total > (size_t(1) << 40)) {
    cudaError_t e = cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice,
                                      static_cast<cudaStream_t>(stream));
    return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "copying rows", msg, len);
  }
  const unsigned blocks = (unsigned)std::min<size_t>((total + 255) / 256, 4096);
  copy_words<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<uint32_t*>(dst), dst_pitch / 4, static_cast<const uint32_t*>(src), src_pitch / 4, width / 4, rows);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? DD_OK : dd::cuda_fail(e, "copying rows", msg, len);
}

int dd_stream_capturing(void* stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status) != cudaSuccess) return 0;
  return status == cudaStreamCaptureStatusActive ? 1 : 0;
}

int dd_cuda_available(void) {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0 ? 1 : 0;
}

}  // extern "C"
