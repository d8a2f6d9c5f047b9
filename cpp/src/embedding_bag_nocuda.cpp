// CPU-only build: the CUDA entry points exist and say why they cannot run.
#include "internal.h"

using dd::fail;

extern "C" {
int dd_forward_cuda(const dd_config*, const void*, const void*, const void*, const float*, int64_t, int64_t, void*,
                    void*, void*, char* msg, size_t len) {
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
int dd_forward_tables_cuda(const dd_config*, const void*, const dd_table_lookups*, void*, void*, void*, char* msg,
                           size_t len) {
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
int dd_clear_error(void*, void*, char* msg, size_t len) {
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
int dd_read_error(const dd_config*, void*, void*, char* msg, size_t len) {
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
int dd_setup_l2_persistence(const dd_config*, size_t* reserved, char* msg, size_t len) {
  if (reserved) *reserved = 0;
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
dd_deferred* dd_deferred_create(char* msg, size_t len) {
  fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
  return nullptr;
}
void dd_deferred_destroy(dd_deferred*) {}
int dd_deferred_after_launch(dd_deferred*, const void*, void*, char* msg, size_t len) {
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
int dd_deferred_poll(dd_deferred*, void*, void*, int, char* msg, size_t len) {
  if (msg && len) msg[0] = 0;
  return DD_OK;
}
int dd_stream_capturing(void*) { return 0; }
int dd_cuda_available(void) { return 0; }
const char* dd_describe_kernel(const dd_config*, char* buf, size_t len) {
  if (buf && len) snprintf(buf, len, "cpu-reference");
  return buf;
}
}
