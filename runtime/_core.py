"""ctypes binding of the kernel core's C ABI (cpp/include/dlrm_deploy/embedding_bag.h).

Attributes go through the core's own parser (dd_config_set_*), so Python, ONNX Runtime and
TensorRT accept and reject exactly the same attribute values.
"""

from __future__ import annotations

import ctypes
import functools

from dlrm_deploy import contract
from dlrm_deploy.libraries import library_path

from ._contract_ctypes import INDEX_TYPE as INDEX_TYPES  # noqa: F401  (re-exported)
from ._contract_ctypes import MAX_TABLES, MSG_LEN, Config  # noqa: F401  (generated from the contract)


class Field(ctypes.Structure):
    """Mirror of dd_field."""

    _fields_ = [("name", ctypes.c_char_p), ("kind", ctypes.c_int32), ("default_value", ctypes.c_char_p),
                ("doc", ctypes.c_char_p)]


class TableLookups(ctypes.Structure):
    """Mirror of dd_table_lookups: one table's tensors of a per-table call."""

    _fields_ = [("indices", ctypes.c_void_p), ("offsets", ctypes.c_void_p), ("per_sample_weights", ctypes.c_void_p),
                ("num_indices", ctypes.c_int64), ("num_offsets", ctypes.c_int64), ("indices_name", ctypes.c_char_p),
                ("offsets_name", ctypes.c_char_p)]


class Attribute(ctypes.Structure):
    """Mirror of dd_attribute: one attribute as an adapter found it."""

    _fields_ = [("present", ctypes.c_int32), ("kind", ctypes.c_int32), ("type_name", ctypes.c_char_p),
                ("i", ctypes.c_int64), ("s", ctypes.c_char_p), ("ints", ctypes.POINTER(ctypes.c_int64)),
                ("n", ctypes.c_int64)]


GETTER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(Field), ctypes.POINTER(Attribute))


class CoreError(RuntimeError):
    """An error status from the kernel core, with its message."""


@functools.lru_cache(maxsize=None)
def lib() -> ctypes.CDLL:
    """The loaded core library with argument types declared."""
    L = ctypes.CDLL(library_path("core"))
    P, I64, SZ, S = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_char_p
    C = ctypes.POINTER(Config)
    sig = {
        "dd_version": (S, []),
        "dd_fields": (ctypes.POINTER(Field), [ctypes.POINTER(ctypes.c_int32)]),
        "dd_config_init": (None, [C]),
        "dd_config_validate": (ctypes.c_int, [C, P, SZ]),
        "dd_config_parse": (ctypes.c_int, [C, GETTER, P, ctypes.c_int32, P, SZ]),
        "dd_check_weights_shape": (ctypes.c_int, [C, ctypes.c_int32, ctypes.POINTER(I64), P, SZ]),
        "dd_row_bytes": (I64, [C]),
        "dd_total_rows": (I64, [C]),
        "dd_batch_size": (I64, [C, I64, P, SZ]),
        "dd_workspace_size": (SZ, [C]),
        "dd_forward_cpu": (ctypes.c_int, [C, P, P, P, P, I64, I64, P, P, SZ]),
        "dd_forward_cuda": (ctypes.c_int, [C, P, P, P, P, I64, I64, P, P, P, P, SZ]),
        "dd_forward_tables_cpu": (ctypes.c_int, [C, P, ctypes.POINTER(TableLookups), P, P, SZ]),
        "dd_forward_tables_cuda": (ctypes.c_int, [C, P, ctypes.POINTER(TableLookups), P, P, P, P, SZ]),
        "dd_read_error": (ctypes.c_int, [C, P, P, P, SZ]),
        "dd_setup_l2_persistence": (ctypes.c_int, [C, ctypes.POINTER(SZ), P, SZ]),
        "dd_cuda_available": (ctypes.c_int, []),
        "dd_describe_kernel": (S, [C, P, SZ]),
    }
    for name, (res, args) in sig.items():
        f = getattr(L, name)
        f.restype, f.argtypes = res, args
    return L


def _check(rc: int, buf) -> None:
    if rc != 0:
        raise CoreError(buf.value.decode(errors="replace") or f"dlrm-deploy core error {rc}")


def fields() -> list[tuple[str, int, str]]:
    """The contract's attributes as compiled into the core: (name, kind, default)."""
    n = ctypes.c_int32()
    arr = lib().dd_fields(ctypes.byref(n))
    return [(arr[i].name.decode(), arr[i].kind, arr[i].default_value.decode()) for i in range(n.value)]


def make_config(attrs: dict, index_type: str = "int64") -> Config:
    """A validated dd_config from contract attributes (names as in dlrm_deploy/contract.py); unset
    attributes keep the contract defaults. Raises CoreError with the core's message (dd_config_parse:
    the parser ONNX Runtime and TensorRT use)."""
    known = {name for name, _, _ in fields()}
    unknown = set(attrs) - known
    if unknown:
        raise CoreError(f"unknown attribute '{sorted(unknown)[0]}'; known: {sorted(known)}")
    if index_type not in INDEX_TYPES:
        raise CoreError(f"indices must be int32 or int64, got {index_type}")
    keep = []  # the buffers handed to the core, alive until parsing ends

    def get(_ctx, field, out):
        f = field.contents
        name = f.name.decode()
        if name not in attrs:
            return 0
        out.contents.present, out.contents.kind = 1, f.kind  # Python values take the field's kind
        value = attrs[name]
        if f.kind == contract.INTS:
            vals = [int(v) for v in value]
            arr = (ctypes.c_int64 * max(1, len(vals)))(*vals)
            keep.append(arr)
            out.contents.ints, out.contents.n = ctypes.cast(arr, ctypes.POINTER(ctypes.c_int64)), len(vals)
        elif f.kind == contract.STRING:
            text = str(value).encode()
            keep.append(text)
            out.contents.s = text
        else:
            out.contents.i = int(value)
        return 0

    cfg = Config()
    buf = ctypes.create_string_buffer(MSG_LEN)
    _check(lib().dd_config_parse(ctypes.byref(cfg), GETTER(get), None, INDEX_TYPES[index_type], buf, MSG_LEN), buf)
    return cfg


def check_weights_shape(cfg: Config, shape) -> None:
    """Raises CoreError unless shape is the packed weights' [total rows, dim or int8 row bytes]."""
    dims = (ctypes.c_int64 * max(1, len(shape)))(*[int(d) for d in shape])
    buf = ctypes.create_string_buffer(MSG_LEN)
    _check(lib().dd_check_weights_shape(ctypes.byref(cfg), len(shape), dims, buf, MSG_LEN), buf)


def row_bytes(cfg: Config) -> int:
    """Bytes of one stored row of the packed weights."""
    return int(lib().dd_row_bytes(ctypes.byref(cfg)))


def batch_size(cfg: Config, num_offsets: int) -> int:
    """Batch size implied by the number of offsets; raises CoreError when it does not divide."""
    buf = ctypes.create_string_buffer(MSG_LEN)
    b = lib().dd_batch_size(ctypes.byref(cfg), num_offsets, buf, MSG_LEN)
    if b < 0:
        raise CoreError(buf.value.decode())
    return int(b)


def workspace_size(cfg: Config) -> int:
    """Device workspace bytes dd_forward_cuda needs."""
    return int(lib().dd_workspace_size(ctypes.byref(cfg)))


def forward_cpu(cfg: Config, weights: int, indices: int, offsets: int, psw: int | None, num_indices: int,
                num_offsets: int, output: int) -> None:
    """CPU reference on raw host pointers."""
    buf = ctypes.create_string_buffer(MSG_LEN)
    _check(lib().dd_forward_cpu(ctypes.byref(cfg), weights, indices, offsets, psw, num_indices, num_offsets, output,
                                buf, MSG_LEN), buf)


def forward_cuda(cfg: Config, weights: int, indices: int, offsets: int, psw: int | None, num_indices: int,
                 num_offsets: int, output: int, workspace: int | None, stream: int) -> None:
    """CUDA kernels on raw device pointers and a cudaStream_t (as an int)."""
    buf = ctypes.create_string_buffer(MSG_LEN)
    _check(lib().dd_forward_cuda(ctypes.byref(cfg), weights, indices, offsets, psw, num_indices, num_offsets, output,
                                 workspace, stream, buf, MSG_LEN), buf)


def table_lookups(tables: list[tuple]) -> ctypes.Array:
    """dd_table_lookups[T] from (indices_ptr, offsets_ptr, psw_ptr or None, num_indices, num_offsets[,
    indices_name, offsets_name]) tuples (pointers as ints)."""
    arr = (TableLookups * len(tables))()
    for t, entry in enumerate(tables):
        idx, off, psw, n_idx, n_off = entry[:5]
        names = [n.encode() if n else None for n in (list(entry[5:7]) + [None, None])[:2]]
        arr[t] = TableLookups(idx, off, psw, n_idx, n_off, names[0], names[1])
    return arr


def forward_tables_cpu(cfg: Config, weights: int, tables: ctypes.Array, output: int) -> None:
    """CPU reference of the per-table form (tables from ``table_lookups``, host pointers)."""
    buf = ctypes.create_string_buffer(MSG_LEN)
    _check(lib().dd_forward_tables_cpu(ctypes.byref(cfg), weights, tables, output, buf, MSG_LEN), buf)


def forward_tables_cuda(cfg: Config, weights: int, tables: ctypes.Array, output: int, workspace: int | None,
                        stream: int) -> None:
    """CUDA kernels on the per-table form (device pointers in tables) and a cudaStream_t (an int)."""
    buf = ctypes.create_string_buffer(MSG_LEN)
    _check(lib().dd_forward_tables_cuda(ctypes.byref(cfg), weights, tables, output, workspace, stream, buf, MSG_LEN),
           buf)


def setup_l2_persistence(cfg: Config) -> int:
    """Reserves persisting L2 for the config's hot rows (process-wide); returns bytes reserved."""
    got = ctypes.c_size_t()
    buf = ctypes.create_string_buffer(MSG_LEN)
    _check(lib().dd_setup_l2_persistence(ctypes.byref(cfg), ctypes.byref(got), buf, MSG_LEN), buf)
    return int(got.value)


def cuda_available() -> bool:
    """True when the core was built with CUDA and a GPU is visible."""
    return bool(lib().dd_cuda_available())


def describe_kernel(cfg: Config) -> str:
    """The kernel (and its parameters) the config's variant resolves to."""
    buf = ctypes.create_string_buffer(256)
    lib().dd_describe_kernel(ctypes.byref(cfg), buf, 256)
    return buf.value.decode()
