// CPU-only build: the CUDA entry points exist and say why they cannot run.
#include "dlrm_deploy/mlp.h"
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
int dd_fetch_error(void*, void*, dd_error_record*, char* msg, size_t len) {
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
int dd_deferred_after_launch_clear(dd_deferred*, void*, void*, char* msg, size_t len) {
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
int dd_deferred_poll_tables(dd_deferred*, void*, void*, int, const dd_table_lookups*, char* msg, size_t len) {
  if (msg && len) msg[0] = 0;
  return DD_OK;
}
int dd_deferred_poll(dd_deferred*, void*, void*, int, char* msg, size_t len) {
  if (msg && len) msg[0] = 0;
  return DD_OK;
}
dd_overlap* dd_overlap_create(char* msg, size_t len) {
  fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
  return nullptr;
}
void dd_overlap_destroy(dd_overlap*) {}
int64_t dd_mlp_beside_blocks(int64_t) { return 0; }
void* dd_overlap_fork(dd_overlap*, void*, char* msg, size_t len) {
  fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
  return nullptr;
}
int dd_overlap_done(dd_overlap*, char* msg, size_t len) {
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
int dd_overlap_join(dd_overlap*, void*, char* msg, size_t len) {
  return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels (built without nvcc)");
}
int dd_copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                 int on_device, void*, char* msg, size_t len) {
  if (on_device) return fail(DD_ERR_UNSUPPORTED, msg, len, "this build of dlrm-deploy has no CUDA kernels");
  for (size_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
  return DD_OK;
}
int dd_stream_capturing(void*) { return 0; }
int dd_cuda_available(void) { return 0; }
const char* dd_describe_kernel(const dd_config*, char* buf, size_t len) {
  if (buf && len) snprintf(buf, len, "cpu-reference");
  return buf;
}
}
