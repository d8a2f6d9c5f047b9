// CUDA graphs of whole ONNX Runtime runs, captured and replayed by dlrm_deploy's OrtSession
// (runtime/ort.py, cuda_graph=True) rather than by ONNX Runtime's own graph mode: one Run of the
// session on its compute stream is captured into a graph, which is then launched directly. Same
// kernels as ORT's graph, but a replay costs one cudaGraphLaunch of host time instead of a whole
// Run (binding checks, run options, then ORT's own launch): on one H100 host ORT's graphed run
// took 20 us of host time per call and a replay of a capture of the same run 7 us, time the GPU
// otherwise waits for at the start of every batch.
//
// Exported with C linkage for ctypes; each returns 0 or writes a one-line reason into msg.
#include <cstddef>
#include <cstdio>

#ifdef DD_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace {
int say(char* msg, size_t len, const char* what, const char* why) {
  if (msg && len) std::snprintf(msg, len, "%s: %s", what, why);
  return 1;
}
}  // namespace

#define DD_EXPORT extern "C" __attribute__((visibility("default")))

#ifdef DD_HAVE_CUDA
namespace {
int cuda_say(char* msg, size_t len, const char* what, cudaError_t e) { return say(msg, len, what, cudaGetErrorString(e)); }
}  // namespace

// A stream of its own for a session's work on device (ONNX Runtime's user_compute_stream).
DD_EXPORT void* dd_ort_stream_create(int device, char* msg, size_t len) {
  cudaStream_t s = nullptr;
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    cuda_say(msg, len, "creating the session's CUDA stream", e);
    return nullptr;
  }
  return s;
}

DD_EXPORT void dd_ort_stream_destroy(void* stream) {
  if (stream) cudaStreamDestroy(static_cast<cudaStream_t>(stream));
}

// Starts capturing what this thread queues on stream (thread-local mode: other threads' CUDA calls
// are not affected).
DD_EXPORT int dd_ort_graph_begin(void* stream, char* msg, size_t len) {
  cudaError_t e = cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal);
  return e == cudaSuccess ? 0 : cuda_say(msg, len, "starting the CUDA-graph capture", e);
}

// Ends the capture and instantiates it into *exec (NULL when the capture failed: the stream is
// usable again either way).
DD_EXPORT int dd_ort_graph_end(void* stream, void** exec, char* msg, size_t len) {
  *exec = nullptr;
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph);
  if (e != cudaSuccess || graph == nullptr) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    return cuda_say(msg, len, "capturing the run into a CUDA graph", e != cudaSuccess ? e : cudaErrorStreamCaptureInvalidated);
  }
  cudaGraphExec_t instance = nullptr;
  e = cudaGraphInstantiate(&instance, graph, 0);
  cudaGraphDestroy(graph);
  if (e != cudaSuccess) return cuda_say(msg, len, "instantiating the CUDA graph", e);
  *exec = instance;
  return 0;
}

// Launches a captured run on stream; synchronize = 1 waits for it.
DD_EXPORT int dd_ort_graph_launch(void* exec, void* stream, int synchronize, char* msg, size_t len) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), s);
  if (e == cudaSuccess && synchronize) e = cudaStreamSynchronize(s);
  return e == cudaSuccess ? 0 : cuda_say(msg, len, "replaying the CUDA graph", e);
}

DD_EXPORT void dd_ort_graph_destroy(void* exec) {
  if (exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}
#else
DD_EXPORT void* dd_ort_stream_create(int, char* msg, size_t len) {
  say(msg, len, "CUDA graphs", "this build of dlrm-deploy has no CUDA support");
  return nullptr;
}
DD_EXPORT void dd_ort_stream_destroy(void*) {}
DD_EXPORT int dd_ort_graph_begin(void*, char* msg, size_t len) {
  return say(msg, len, "CUDA graphs", "this build of dlrm-deploy has no CUDA support");
}
DD_EXPORT int dd_ort_graph_end(void*, void** exec, char* msg, size_t len) {
  *exec = nullptr;
  return say(msg, len, "CUDA graphs", "this build of dlrm-deploy has no CUDA support");
}
DD_EXPORT int dd_ort_graph_launch(void*, void*, int, char* msg, size_t len) {
  return say(msg, len, "CUDA graphs", "this build of dlrm-deploy has no CUDA support");
}
DD_EXPORT void dd_ort_graph_destroy(void*) {}
#endif
