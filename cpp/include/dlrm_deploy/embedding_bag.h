/*
 * dlrm-deploy kernel core: the one C ABI every adapter (ONNX Runtime op, TensorRT plugin, torch op)
 * calls. Plain C so that ctypes, the ORT custom-op library and the TensorRT plugin share it.
 *
 * The op (see docs/op_contract.md): a table-batched EmbeddingBag.
 *   weights  packed tables, table t's rows after table t-1's (or the "hot-first" layout, below).
 *            fp32/fp16/bf16: [total_rows, dim] elements.
 *            int8 row-wise:  [total_rows, dd_row_bytes()] bytes; a row is dim uint8 codes, then an
 *            fp32 scale and an fp32 bias (value = scale * code + bias), zero-padded to 16 bytes;
 *            with split_scales=1: [total_rows, dim + 8] bytes, every row's dim codes first (row g
 *            at byte g*dim), then every row's fp32 scale and bias (at total_rows*dim + 8g).
 *            int4 row-wise:  [total_rows, dd_row_bytes()] bytes; dim/2 bytes of 4-bit codes (column
 *            2i in the low nibble of byte i, 2i+1 in the high one), then fp32 scale and bias, zero-
 *            padded to 16 bytes (cpp/src/int4_rows.h). Every forward takes it.
 *   indices  all lookups, table-major: table 0's bags, then table 1's; ids are rows local to a table.
 *   offsets  start of each bag in indices, table-major (bag b of table t is entry t*B + b);
 *            T*B entries (the last bag ends at num_indices) or T*B+1 with include_last_offset.
 *   per_sample_weights  optional fp32, one per index (sum mode only).
 *   output   [B, T*dim]: bag b of table t pooled into columns t*dim .. t*dim+dim-1.
 * Sums run in fp32 in index order; mean divides by the bag length (an empty bag gives zeros).
 *
 * Two forms of a call's lookups:
 *   per-table (dd_forward_tables_*): each table's own indices, offsets and per-sample weights,
 *     exactly as nn.EmbeddingBag takes them: offsets[0] == 0, offsets non-decreasing and at most
 *     the table's number of ids; without include_last_offset the last bag ends at that table's
 *     last id, with it at offsets[B] (ids after it are ignored, as in PyTorch). Errors name the
 *     table (or its input names) and the position inside that table's tensors.
 *   packed (dd_forward_*): the concatenation above, as FBGEMM's TBE takes it: offsets index the
 *     concatenated indices, the first offset is 0 and every bag ends where the next one starts.
 *
 * Every entry point returns DD_OK (0) or an error code, and writes a readable message into msg
 * (when msg is not NULL).
 */
#ifndef DLRM_DEPLOY_EMBEDDING_BAG_H_
#define DLRM_DEPLOY_EMBEDDING_BAG_H_

#include <stddef.h>
#include <stdint.h>

#include "dlrm_deploy/contract.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DD_API __declspec(dllexport)
#else
#define DD_API __attribute__((visibility("default")))
#endif

typedef enum { DD_OK = 0, DD_ERR_CONFIG = 1, DD_ERR_INPUT = 2, DD_ERR_CUDA = 3, DD_ERR_UNSUPPORTED = 4 } dd_status;

/* DD_MAX_TABLES, the enums dd_dtype (DD_INT8: row-wise), dd_mode, dd_index_type, dd_variant,
 * dd_check, the attribute ranges and dd_config (the op's attributes) are generated from
 * dlrm_deploy/contract.py into dlrm_deploy/contract.h.
 *
 * Bounds checking (dd_check). CHECKED validates on the GPU and reports through the return status
 * (one stream synchronisation per call); DEFERRED validates, zeroes bad bags' bad lookups and
 * records the first error in the workspace for dd_read_error (no synchronisation: for
 * CUDA-graph/TensorRT use); UNCHECKED trusts the input (fastest; bad input is undefined behaviour). */
/* hot_first layout: rows [0, T*P) hold each table's first P = pinned_rows rows (table t at t*P),
 * then each table's remaining rows in table order. One contiguous hot region lets the
 * persisting-L2 access-policy window cover the hot rows of every table. */

/* One attribute of the op contract, for adapters that derive their schema from it. */
typedef struct dd_field {
  const char* name;
  int32_t kind;           /* dd_field_kind: DD_KIND_INT, DD_KIND_STRING or DD_KIND_INTS */
  const char* default_value; /* as text; "" for required fields */
  const char* doc;
} dd_field;

DD_API const char* dd_version(void);

/* The op contract's attributes, in order. *count receives their number. */
DD_API const dd_field* dd_fields(int32_t* count);

/* Defaults for every attribute (num_tables 0 = unset). */
DD_API void dd_config_init(dd_config* cfg);

/* Sets one attribute by its contract name: the single attribute parser of the project. */
DD_API int dd_config_set_int(dd_config* cfg, const char* name, int64_t value, char* msg, size_t msg_len);
DD_API int dd_config_set_string(dd_config* cfg, const char* name, const char* value, char* msg, size_t msg_len);
DD_API int dd_config_set_ints(dd_config* cfg, const char* name, const int64_t* values, int64_t n, char* msg,
                              size_t msg_len);

/* Checks the attributes against each other. */
DD_API int dd_config_validate(const dd_config* cfg, char* msg, size_t msg_len);

/* One attribute as an adapter found it on its node (ONNX attribute, TensorRT plugin field, ...). */
typedef struct dd_attribute {
  int32_t present;        /* 0: the node does not set it (the contract default applies) */
  int32_t kind;           /* dd_field_kind of the value found; -1: another type, named by type_name */
  const char* type_name;  /* kind -1: the adapter's name of the type found (e.g. "float") */
  int64_t i;              /* DD_KIND_INT */
  const char* s;          /* DD_KIND_STRING, NUL-terminated */
  const int64_t* ints;    /* DD_KIND_INTS: n values */
  int64_t n;
} dd_attribute;

/* An adapter's lookup of one attribute: fills *out (zeroed by the caller) for field; the pointers
 * in it must stay valid until the next call. Returns DD_OK, or an error code to stop parsing. */
typedef int (*dd_attribute_getter)(void* ctx, const dd_field* field, dd_attribute* out);

/* The one attribute loop of the project: dd_config_init, then every contract field fetched through
 * get and set by its kind (a missing required field or a value of the wrong kind is an error naming
 * it), index_type (dd_index_type of the indices) set, then dd_config_validate. */
DD_API int dd_config_parse(dd_config* cfg, dd_attribute_getter get, void* ctx, int32_t index_type, char* msg,
                           size_t msg_len);

/* The value of one attribute in cfg (for adapters that write the attributes back, e.g. TensorRT's
 * serialization): s points into the core's name tables, ints into cfg. DD_ERR_CONFIG for an unknown name. */
DD_API int dd_config_get(const dd_config* cfg, const char* name, dd_attribute* out, char* msg, size_t msg_len);

/* Checks the packed weights' shape: rank 2, [dd_total_rows, dim] ([dd_total_rows, dd_row_bytes] for
 * int8/int4 rows). Entries < 0 are unknown (build-time shapes) and pass. DD_ERR_INPUT with the message. */
DD_API int dd_check_weights_shape(const dd_config* cfg, int32_t rank, const int64_t* dims, char* msg, size_t msg_len);

/* 1 when the config keeps hot rows in persisting L2 (pinned_rows > 0 and variant auto, l2pin or
 * combined): then adapters call dd_setup_l2_persistence once at initialisation. */
DD_API int dd_uses_l2(const dd_config* cfg);

/* Names <-> enum values ("fp32", "sum", "int64", "auto", ...). Return -1 for an unknown name. */
DD_API int dd_parse_name(const char* kind, const char* name); /* kind: dtype|mode|index_type|variant|check */
DD_API const char* dd_name(const char* kind, int value);

/* Bytes of one stored row (the weights' second dim: dim + 8 with split_scales), total rows of the
 * packed blob. */
DD_API int64_t dd_row_bytes(const dd_config* cfg);
DD_API int64_t dd_total_rows(const dd_config* cfg);

/* Batch size B from the number of offsets; -1 (and msg) when it does not divide. */
DD_API int64_t dd_batch_size(const dd_config* cfg, int64_t num_offsets, char* msg, size_t msg_len);

/* Device workspace the CUDA forward needs, in bytes (error record and hot-row bookkeeping). */
DD_API size_t dd_workspace_size(const dd_config* cfg);

/* CPU forward: the contract's exact semantics, fp32 sums in index order per bag (bit-exact with
 * dd_forward_cpu_reference), vectorised over D, on the calling thread.
 * Bad input (in any check mode) returns DD_ERR_INPUT with the first offending position. */
DD_API int dd_forward_cpu(const dd_config* cfg, const void* weights, const void* indices, const void* offsets,
                          const float* per_sample_weights, int64_t num_indices, int64_t num_offsets, void* output,
                          char* msg, size_t msg_len);

/* One table's lookups of one call (per-table form). Every table of a call has the same number of
 * bags B = num_offsets - include_last_offset. */
typedef struct dd_table_lookups {
  const void* indices;              /* num_indices ids (index_type), rows of this table */
  const void* offsets;              /* num_offsets bag starts (index_type) */
  const float* per_sample_weights;  /* NULL, or one fp32 weight per id (mode sum) */
  int64_t num_indices;
  int64_t num_offsets;
  const char* indices_name;         /* names for error messages (the model's input names); */
  const char* offsets_name;         /* NULL: "indices of table t", "offsets of table t" */
} dd_table_lookups;

/* The per-table forms of dd_forward_cpu / dd_forward_cuda: tables has cfg->num_tables entries
 * (host memory; the pointers in it are host resp. device pointers). Same output, same modes. */
DD_API int dd_forward_tables_cpu(const dd_config* cfg, const void* weights, const dd_table_lookups* tables,
                                 void* output, char* msg, size_t msg_len);
DD_API int dd_forward_tables_cuda(const dd_config* cfg, const void* weights, const dd_table_lookups* tables,
                                  void* output, void* workspace, void* stream, char* msg, size_t msg_len);

/* Multi-threaded CPU forward. parallel_for(ctx, n, body, arg) must call body(arg, begin, end) on
 * ranges that together cover [0, n) exactly once, on any threads, concurrently or not, and return
 * when all have finished (ONNX Runtime's adapter hands it the intra-op thread pool). NULL runs
 * everything on the calling thread. Work is split across bags and tables only, so the output is
 * bit-exact with the single-threaded forward; with bad input the error reported is that of the
 * lowest (table, bag), as in the sequential reference. */
typedef void (*dd_range_fn)(void* arg, int64_t begin, int64_t end);
typedef void (*dd_parallel_for_fn)(void* ctx, int64_t n, dd_range_fn body, void* arg);
DD_API int dd_forward_cpu_parallel(const dd_config* cfg, const void* weights, const void* indices,
                                   const void* offsets, const float* per_sample_weights, int64_t num_indices,
                                   int64_t num_offsets, void* output, dd_parallel_for_fn parallel_for,
                                   void* parallel_ctx, char* msg, size_t msg_len);
DD_API int dd_forward_tables_cpu_parallel(const dd_config* cfg, const void* weights, const dd_table_lookups* tables,
                                          void* output, dd_parallel_for_fn parallel_for, void* parallel_ctx,
                                          char* msg, size_t msg_len);

/* The sequential CPU reference (one element at a time): what the tests compare every forward with. */
DD_API int dd_forward_cpu_reference(const dd_config* cfg, const void* weights, const void* indices,
                                    const void* offsets, const float* per_sample_weights, int64_t num_indices,
                                    int64_t num_offsets, void* output, char* msg, size_t msg_len);
DD_API int dd_forward_tables_cpu_reference(const dd_config* cfg, const void* weights,
                                           const dd_table_lookups* tables, void* output, char* msg, size_t msg_len);

/* CUDA forward on stream (a cudaStream_t; NULL = legacy default stream). All pointers are device
 * pointers; workspace has dd_workspace_size bytes (NULL allowed when check == DD_UNCHECKED).
 * Returns DD_ERR_UNSUPPORTED in a build without CUDA. */
DD_API int dd_forward_cuda(const dd_config* cfg, const void* weights, const void* indices, const void* offsets,
                           const float* per_sample_weights, int64_t num_indices, int64_t num_offsets, void* output,
                           void* workspace, void* stream, char* msg, size_t msg_len);

/* The error record at the head of the workspace (first bad input the kernel met; code 0 = none).
 * position: the id's position (index errors) or the bag (offset errors) inside the table's own
 * tensors in the per-table form, inside the concatenated tensors in the packed form. */
typedef struct dd_error_record {
  int32_t code;
  int32_t table;
  int64_t position;
  int64_t value;
  int64_t limit;
} dd_error_record;

/* Formats an error record already copied to host memory. Returns DD_OK when it holds no error,
 * else DD_ERR_INPUT with the message (for adapters that copy the record asynchronously). */
DD_API int dd_format_error(const dd_error_record* record, char* msg, size_t msg_len);
/* The same, naming the tables' inputs from tables (per-table form; NULL = dd_format_error). */
DD_API int dd_format_error_tables(const dd_error_record* record, const dd_table_lookups* tables, char* msg,
                                  size_t msg_len);

/* The op's identity from the contract: ONNX domain (= TensorRT plugin namespace), op type
 * (= plugin name) and version. */
DD_API void dd_op_identity(const char** domain, const char** op_type, const char** version);

/* Reporting for check=deferred without synchronising: a pinned host copy of the error record and an
 * event. Create it outside the hot path (not inside TensorRT's enqueue); NULL on failure. */
typedef struct dd_deferred dd_deferred;
DD_API dd_deferred* dd_deferred_create(char* msg, size_t msg_len);
DD_API void dd_deferred_destroy(dd_deferred* d);

/* Queues behind the launch on stream a copy of workspace's error record to the host, and an event
 * (none while the stream is being captured into a CUDA graph). Never synchronises. */
DD_API int dd_deferred_after_launch(dd_deferred* d, const void* workspace, void* stream, char* msg, size_t msg_len);
/* The same, then clears the device record behind the copy, so that the next launch on stream
 * reports only its own errors without a clear in front of it (check=checked in a CUDA graph: the
 * record must be clear before the first launch). */
DD_API int dd_deferred_after_launch_clear(dd_deferred* d, void* workspace, void* stream, char* msg, size_t msg_len);

/* DD_ERR_INPUT with the message when an earlier launch's copy has arrived and holds bad input; the
 * report is consumed and, when workspace is not NULL, the device record is cleared on stream.
 * wait = 0 never blocks (an unfinished copy is looked at next time); wait = 1 waits for the last
 * copy (teardown; also reports a copy captured into a CUDA graph). DD_OK otherwise. */
DD_API int dd_deferred_poll(dd_deferred* d, void* workspace, void* stream, int wait, char* msg, size_t msg_len);
/* The same, naming the tables' inputs from tables (per-table form) in the message. */
DD_API int dd_deferred_poll_tables(dd_deferred* d, void* workspace, void* stream, int wait,
                                   const dd_table_lookups* tables, char* msg, size_t msg_len);

/* Clears the error record at the head of workspace, queued on stream (capturable). */
DD_API int dd_clear_error(void* workspace, void* stream, char* msg, size_t msg_len);

/* Synchronises stream, copies the error record at the head of workspace into *record and clears it. */
DD_API int dd_fetch_error(void* workspace, void* stream, dd_error_record* record, char* msg, size_t msg_len);

/* For DD_DEFERRED: synchronises stream, reads the error record from workspace and clears it. */
DD_API int dd_read_error(const dd_config* cfg, void* workspace, void* stream, char* msg, size_t msg_len);

/* Sets up persisting L2 for the hot rows (cudaLimitPersistingL2CacheSize, process-wide): call once
 * at initialisation, not per launch. Returns the bytes reserved in *reserved. */
DD_API int dd_setup_l2_persistence(const dd_config* cfg, size_t* reserved, char* msg, size_t msg_len);

/* 1 while stream (a cudaStream_t) is being captured into a CUDA graph, else 0: adapters then avoid
 * what capture forbids (synchronisation, allocation). */
DD_API int dd_stream_capturing(void* stream);

/* overlap=1: a stream of the adapter's own, forked from the caller's stream before the lookups
 * and joined back into it where their output is needed (events only; capturable into a CUDA
 * graph). NULL on failure. */
typedef struct dd_overlap dd_overlap;
DD_API dd_overlap* dd_overlap_create(char* msg, size_t msg_len);
DD_API void dd_overlap_destroy(dd_overlap* o);
/* The side stream, made to wait for everything queued on stream so far; NULL (and msg) on error. */
DD_API void* dd_overlap_fork(dd_overlap* o, void* stream, char* msg, size_t msg_len);
/* Marks the end of the side stream's work (call after queueing the lookups on it). */
DD_API int dd_overlap_done(dd_overlap* o, char* msg, size_t msg_len);
/* Makes stream wait for the side stream's work up to the last dd_overlap_done. */
DD_API int dd_overlap_join(dd_overlap* o, void* stream, char* msg, size_t msg_len);

/* Copies rows x width bytes from src (row pitch src_pitch) to dst (row pitch dst_pitch): on stream
 * (device memory) or, with on_device = 0, on the host. For concatenating along columns. */
DD_API int dd_copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                        int on_device, void* stream, char* msg, size_t msg_len);

/* 1 when the library was built with CUDA and a device is visible. */
DD_API int dd_cuda_available(void);

/* The kernel the variant resolves to for this config on the current device (for logs/benchmarks). */
DD_API const char* dd_describe_kernel(const dd_config* cfg, char* buf, size_t buf_len);

#ifdef __cplusplus
}
#endif

#endif /* DLRM_DEPLOY_EMBEDDING_BAG_H_ */
