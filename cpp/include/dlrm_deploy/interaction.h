/* dlrm-deploy: DLRM's dot interaction fused into one kernel (the op dlrm_deploy::DotInteraction).
 *
 * A batch of n vectors of `dim` floats per sample arrives as `count` parts, part k a row-major
 * [batch, width_k] float tensor (width_k a multiple of dim; the n vectors of a sample are its
 * parts' rows side by side, like Concat(axis=1) then Reshape [batch, n, dim]). Output row b is
 *   [ part `prefix`'s row b (when prefix >= 0) , dot(v_i, v_j) for every (i, j) = divmod(pairs[p], n) ]
 * i.e. Concat(axis=1)(prefix, Gather(Reshape(V V^T, [batch, n*n]), pairs, axis=1)). Dots are summed
 * in fp32. Errors return DD_ERR_* with a message in msg. */
#ifndef DLRM_DEPLOY_INTERACTION_H_
#define DLRM_DEPLOY_INTERACTION_H_

#include "dlrm_deploy/embedding_bag.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DD_INTERACTION_MAX_PARTS 16

typedef struct dd_interaction_args {
  const float* parts[DD_INTERACTION_MAX_PARTS];
  int64_t widths[DD_INTERACTION_MAX_PARTS];
  int32_t count;       /* parts */
  int64_t batch;       /* rows of every part */
  int64_t dim;         /* floats per vector */
  const int64_t* pairs; /* host array: flat indices i*n+j into the n x n dot products */
  int64_t num_pairs;
  int32_t prefix;      /* part copied before the dots, or -1 */
  float* out;          /* [batch, prefix width + num_pairs] */
} dd_interaction_args;

/* Checks the shapes (widths multiples of dim, pairs in range, prefix a part) and returns the
 * output width through out_width. */
DD_API int dd_interaction_check(const dd_interaction_args* a, int64_t* out_width, char* msg, size_t msg_len);

/* CPU: the whole batch on the calling thread. */
DD_API int dd_interaction_cpu(const dd_interaction_args* a, char* msg, size_t msg_len);
/* CPU: samples [row_begin, row_end) only (callers spread the batch over threads this way). */
DD_API int dd_interaction_cpu_rows(const dd_interaction_args* a, int64_t row_begin, int64_t row_end, char* msg,
                                   size_t msg_len);

/* CUDA: a plan holding the pairs on the device (made once per node, outside stream capture), then
 * one kernel per call on stream (no synchronisation, no allocation: CUDA-graph safe). a->parts and
 * a->out are device pointers; a->pairs is ignored by dd_interaction_cuda (the plan's are used) and
 * must equal the plan's for dd_interaction_check. */
typedef struct dd_interaction_plan dd_interaction_plan;
DD_API dd_interaction_plan* dd_interaction_plan_create(const int64_t* pairs, int64_t num_pairs, int64_t n,
                                                       char* msg, size_t msg_len);
DD_API void dd_interaction_plan_destroy(dd_interaction_plan* plan);
DD_API int dd_interaction_cuda(const dd_interaction_plan* plan, const dd_interaction_args* a, void* stream, char* msg,
                               size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif /* DLRM_DEPLOY_INTERACTION_H_ */
