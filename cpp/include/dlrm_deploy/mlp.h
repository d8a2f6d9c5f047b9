/* dlrm-deploy: a chain of fully connected layers in one kernel (the op dlrm_deploy::Mlp).
 *
 * Y = act_L( ... act_1(X W_1^T + b_1) ... W_L^T + b_L ), X [batch, in_width] row-major, W_i
 * [N_i, K_i] row-major (nn.Linear.weight; K_1 = in_width, K_{i+1} = N_i), b_i [N_i], act_i one of
 * DD_MLP_NONE / DD_MLP_RELU / DD_MLP_SIGMOID, Y [batch, N_L]. float32, sums in fp32. Replaces ONNX
 * Runtime's three kernels per layer (bias broadcast, GEMM, activation). Errors return DD_ERR_* with a
 * message in msg. */
#ifndef DLRM_DEPLOY_MLP_H_
#define DLRM_DEPLOY_MLP_H_

#include "dlrm_deploy/embedding_bag.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DD_MLP_MAX_LAYERS 16
#define DD_MLP_MAX_WIDTH 4096 /* contract.MLP_MAX_WIDTH */
#define DD_MLP_NONE 0
#define DD_MLP_RELU 1
#define DD_MLP_SIGMOID 2
#define DD_MLP_BESIDE (-1) /* max_blocks: dd_mlp_beside_blocks(batch) (the op's beside=1) */

typedef struct dd_mlp_args {
  const float* x;    /* [batch, in_width] */
  int64_t batch;
  int64_t in_width;
  int32_t layers;
  const float* weights[DD_MLP_MAX_LAYERS]; /* [w_rows[i], w_cols[i]] */
  const float* biases[DD_MLP_MAX_LAYERS];  /* [b_len[i]] */
  int64_t w_rows[DD_MLP_MAX_LAYERS];        /* N_i: the shapes as given, checked by dd_mlp_check */
  int64_t w_cols[DD_MLP_MAX_LAYERS];        /* K_i */
  int64_t b_len[DD_MLP_MAX_LAYERS];
  int32_t activations[DD_MLP_MAX_LAYERS];
  float* out; /* [batch, w_rows[layers - 1]] */
  int32_t max_blocks; /* CUDA: 0 = a block per few rows (every SM busy); n > 0 = at most n blocks, each
                       * staging the weights once and taking every n-th group of rows, so that the
                       * chain holds at most n SMs while other kernels run beside it; DD_MLP_BESIDE
                       * (above) */
  int32_t fixed_weights; /* CUDA: 1 = the weights and biases are not written by work queued before
                          * this call (e.g. ONNX initializers): the kernel may copy them while the
                          * kernel before it on the stream finishes (sm_90+). 0 = read them after it. */
  int32_t input_ready; /* CUDA, with fixed_weights: 1 = x is not written by any kernel that may still run
                        * when this one starts: the kernel before it on the stream, and every one
                        * back to the first launched in plain stream order (without programmatic
                        * launch), leave x alone (e.g. x is a graph input and the kernel before is
                        * the lookups'). The kernel then reads x and computes every layer but the
                        * last while that kernel finishes, and writes out after it (sm_90+).
                        * 0 = read x after it. */
} dd_mlp_args;

/* Checks the layer count, shapes, widths (<= DD_MLP_MAX_WIDTH) and activation codes. */
DD_API int dd_mlp_check(const dd_mlp_args* a, char* msg, size_t msg_len);

/* CPU: rows [row_begin, row_end) on the calling thread (callers spread row ranges over threads). */
DD_API int dd_mlp_cpu(const dd_mlp_args* a, int64_t row_begin, int64_t row_end, char* msg, size_t msg_len);

/* CUDA, DD_MLP_BESIDE: the blocks a chain of batch rows takes on the current device (a quarter of
 * the SMs), or 0 where a block would get less than two groups of 16 rows (the usual grid over every
 * SM: small batches). 0 without CUDA. */
DD_API int64_t dd_mlp_beside_blocks(int64_t batch);

/* CUDA: one kernel on stream (no synchronisation, no allocation: CUDA-graph safe); x, weights,
 * biases and out are device pointers. */
DD_API int dd_mlp_cuda(const dd_mlp_args* a, void* stream, char* msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif /* DLRM_DEPLOY_MLP_H_ */
