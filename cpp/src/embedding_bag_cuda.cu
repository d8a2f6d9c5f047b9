// CUDA forward of the op: the C entry points that check a call on the host, fill the kernel
// parameters and launch. Two templated kernel families, each variant a named policy type
// (cuda/policies.cuh: the one list of compiled variants), dispatched in one place (cuda/launch.cuh):
//  - bag_kernel (cuda/bag_kernel.cuh): PyTorch's EmbeddingBag forward structure (a thread per
//    output feature, 32x8 blocks, scalar loads), with the paper's optimisations as policies:
//    register cap (MinBlocks), register prefetch of the next PD lookups, and L2 pinning (evict_last
//    hints for hot rows plus an evict_last prefetch pass). Variants baseline/occupancy/prefetch/
//    l2pin/combined.
//  - warp_kernel (cuda/warp_kernel.cuh): what `auto` runs. A warp (or a group of lanes) per bag and
//    column slice, 4-16 byte vector loads of whole rows, U independent row loads in flight per lane,
//    the next 32 indices fetched while the current ones are consumed; with pinned_rows and the
//    hot_first layout, a persisting-L2 access-policy window over the hot rows.
//  - short_kernel (cuda/short_kernel.cuh): what `auto` runs instead for short bags (up to 28-120
//    lookups a bag on average by row size, rows of 16-256 bytes, 512 for fp32; plan.cuh,
//    short_rule): a warp per 2, 4 or 8 bags, their rows copied into shared memory 8-32 at a time, a
//    lane adding its columns of every row (in index order, so bit-exact with the CPU but for int8,
//    whose biases it sums apart too, and for rows under 128 bytes, whose rows lane groups take in
//    turn).
// Both add each bag's rows in index order in fp32, so results equal the CPU reference bit for bit
// whenever one lane group walks the whole bag (describe_kernel's groups=1: warp_kernel at rows of
// 512 bytes and more, e.g. fp32 D=128; short_kernel at rows of 128 bytes and more); when a row
// takes fewer lanes (fp16 and int8 at D=128, small D) several lane groups share a bag and their
// partial sums are added in a fixed order instead (within the tests' tolerance). int8 in
// warp_kernel and short_kernel sums each row's bias apart from its codes (warp_kernel.cuh,
// add_row), so it is never bit-exact with the CPU there.
// The CUDA services the adapters call beside the forward (error records, L2 persistence, the
// overlap stream) are in cuda_host.cu.
#include <cuda_runtime.h>

#include <cstdio>
#include <memory>

#include "cuda/launch.cuh"
#include "cuda/status.cuh"
#include "internal.h"

namespace dd {
namespace {

// Both forms' launch: view holds the call's per-table tensors, already checked on the host.
int forward_cuda_view(const dd_config* cfg, const void* weights, const Lookups& view, void* output, void* workspace,
                      void* stream_ptr, const dd_table_lookups* names, char* msg, size_t len) {
  if (view.batch == 0) return DD_OK;
  if (cfg->check != DD_UNCHECKED && !workspace)
    return fail(DD_ERR_CONFIG, msg, len, "check=%s needs a workspace of dd_workspace_size() bytes",
                dd_name("check", cfg->check));
  DeviceInfo dev;
  int rc = device_info(&dev, msg, len);
  if (rc) return rc;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  auto p = std::make_unique<Params>();
  p->weights = static_cast<const uint8_t*>(weights);
  p->out = output;
  p->err = static_cast<ErrorRecord*>(workspace);
  p->batch = view.batch;
  const RowLayout lay = row_layout(*cfg);
  p->row_bytes = lay.stride;
  p->sb = p->weights + lay.sb_offset;
  p->sb_stride = lay.sb_stride;
  p->pinned = cfg->pinned_rows;
  p->dim = cfg->dim;
  p->mode = cfg->mode;
  p->out_dtype = cfg->out_dtype;
  p->check = cfg->check != DD_UNCHECKED;
  make_tables(*cfg, &p->tab);
  p->lk = view;
  if (cfg->check == DD_CHECKED) {
    cudaError_t e = cudaMemsetAsync(workspace, 0, sizeof(ErrorRecord), stream);
    if (e != cudaSuccess) return cuda_fail(e, "clearing the error record", msg, len);
  }
  const Plan pl = make_plan(*cfg, weights);
  rc = cfg->index_type == DD_INT32 ? launch_index<int32_t>(*p, *cfg, pl, dev, stream, msg, len)
                                   : launch_index<int64_t>(*p, *cfg, pl, dev, stream, msg, len);
  if (rc) return rc;
  if (cfg->check == DD_CHECKED) {
    ErrorRecord rec;
    cudaError_t e = cudaMemcpyAsync(&rec, workspace, sizeof(rec), cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) return cuda_fail(e, "reading the error record", msg, len);
    if (rec.code) return fail(DD_ERR_INPUT, msg, len, "%s", error_message(rec, names).c_str());
  }
  return DD_OK;
}

}  // namespace
}  // namespace dd

extern "C" {

int dd_forward_cuda(const dd_config* cfg, const void* weights, const void* indices, const void* offsets,
                    const float* psw, int64_t num_indices, int64_t num_offsets, void* output, void* workspace,
                    void* stream_ptr, char* msg, size_t len) {
  auto view = std::make_unique<dd::Lookups>();
  int rc = dd::check_call(cfg, weights, indices, offsets, psw, num_indices, num_offsets, output, view.get(), msg, len,
                          /*int4_ok=*/true);
  if (rc) return rc;
  return dd::forward_cuda_view(cfg, weights, *view, output, workspace, stream_ptr, nullptr, msg, len);
}

int dd_forward_tables_cuda(const dd_config* cfg, const void* weights, const dd_table_lookups* tables, void* output,
                           void* workspace, void* stream_ptr, char* msg, size_t len) {
  auto view = std::make_unique<dd::Lookups>();
  int rc = dd::check_tables_call(cfg, weights, tables, output, view.get(), msg, len, /*int4_ok=*/true);
  if (rc) return rc;
  return dd::forward_cuda_view(cfg, weights, *view, output, workspace, stream_ptr, tables, msg, len);
}

const char* dd_describe_kernel(const dd_config* cfg, char* buf, size_t len) {
  if (!buf || !len) return buf;
  const dd::Plan pl = dd::make_plan(*cfg, nullptr);
  if (pl.warp) {
    const int n = snprintf(buf, len, "%s(vec=%dB, lanes=%d, groups=%d, slices=%d, unroll=%d)",
                           pl.async_rows ? "warp_async_kernel" : "warp_kernel", pl.vb, pl.lanes, pl.groups, pl.slices,
                           pl.unroll);
    const dd::ShortRule rule = dd::short_rule(*cfg, pl);
    if (rule.row_bytes && dd::short_threshold(rule) > 0 && n > 0 && (size_t)n < len)
      snprintf(buf + n, len - n, "; bags of up to %d lookups on average (sm_80+, 16-byte aligned blob): short_kernel",
               dd::short_threshold(rule));
  } else {
    snprintf(buf, len, "bag_kernel(%s, prefetch=%d)", dd_name("variant", pl.variant),
             (pl.variant == DD_PREFETCH || pl.variant == DD_COMBINED) ? pl.pd : 0);
  }
  return buf;
}

}  // extern "C"
