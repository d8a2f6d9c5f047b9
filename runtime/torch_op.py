"""The torch op ``torch.ops.dlrm_deploy.embedding_bag`` and the drop-in function
:func:`embedding_bag`.

The op's schema is derived from the op contract (``dlrm_deploy.contract.FIELDS``): tensors
(weight, indices, offsets, per_sample_weights) followed by every contract attribute in order.
CPU tensors run the core's CPU reference, CUDA tensors the core's kernels on the current CUDA
stream; a fake (meta) implementation lets torch.export, the ONNX exporter and torch.compile trace it.
Importing this module registers the op once.
"""

from __future__ import annotations

import functools

import torch

from dlrm_deploy import contract

from . import _core

_TORCH_TYPES = {contract.INT: "int", contract.STRING: "str", contract.INTS: "int[]"}
_WEIGHT_DTYPES = {d: getattr(torch, i.torch) for d, i in contract.DTYPE_INFO.items()}
_OUT_DTYPES = {d: t for d, t in _WEIGHT_DTYPES.items() if contract.DTYPE_INFO[d].output}


def _schema() -> str:
    def default(f):
        if f.default == "":
            return ""
        return f'="{f.default}"' if f.kind == contract.STRING else f"={f.default}"

    attrs = ", ".join(f"{_TORCH_TYPES[f.kind]} {f.name}{default(f)}" for f in contract.FIELDS)
    return f"(Tensor weight, Tensor indices, Tensor offsets, Tensor? per_sample_weights, {attrs}) -> Tensor"


QUALNAME = f"{contract.DOMAIN}::embedding_bag"

if not hasattr(torch.ops, contract.DOMAIN) or not hasattr(getattr(torch.ops, contract.DOMAIN), "embedding_bag"):
    torch.library.define(QUALNAME, _schema())

_ATTR_NAMES = [f.name for f in contract.FIELDS]


def _attrs(args, kwargs) -> dict:
    """Contract attributes from the op's trailing arguments (positional or by name)."""
    attrs = dict(zip(_ATTR_NAMES, args))
    attrs.update(kwargs)
    return contract.validate_attributes(attrs)


@functools.lru_cache(maxsize=256)
def _config(attr_items: tuple, index_type: str):
    """The core's config for one attribute set, parsed once (the op is called per batch)."""
    return _core.make_config({k: list(v) if isinstance(v, tuple) else v for k, v in attr_items}, index_type)


def _prepare(weight, indices, offsets, psw, attrs):
    """Validates tensor dtypes/shapes against the attributes; returns (config, batch)."""
    if indices.dim() != 1 or offsets.dim() != 1:
        raise ValueError(f"indices and offsets must be 1-D (got {indices.dim()}-D and {offsets.dim()}-D)")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if offsets.dtype != indices.dtype:
        raise TypeError(f"offsets ({offsets.dtype}) must have the dtype of indices ({indices.dtype})")
    cfg = _weight_config(weight, attrs, indices.dtype)
    if psw is not None:
        if psw.dtype != torch.float32 or psw.shape != indices.shape:
            raise ValueError(f"per_sample_weights must be float32 of shape {list(indices.shape)}, "
                             f"got {psw.dtype} {list(psw.shape)}")
    batch = _core.batch_size(cfg, offsets.numel())
    return cfg, batch


def _weight_config(weight, attrs, index_dtype):
    """The core's config for attrs and the index dtype, after checking the weight against it."""
    cfg = _config(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()),
                  "int32" if index_dtype == torch.int32 else "int64")
    want = _WEIGHT_DTYPES[attrs["dtype"]]
    if weight.dtype != want:
        raise TypeError(f"dtype={attrs['dtype']} needs a {want} weight tensor, got {weight.dtype}")
    try:
        _core.check_weights_shape(cfg, weight.shape)
    except _core.CoreError as e:
        raise ValueError(f"weight must be as the attributes say: {e}") from None
    return cfg


def _run(weight, indices, offsets, psw, *args, **kwargs):
    attrs = _attrs(args, kwargs)
    cfg, batch = _prepare(weight, indices, offsets, psw, attrs)
    T, D = len(attrs["table_rows"]), int(attrs["dim"])
    out = torch.empty((batch, T * D), dtype=_OUT_DTYPES[attrs["out_dtype"]], device=weight.device)
    tensors = [weight, indices, offsets] + ([psw] if psw is not None else [])
    if any(t.device != weight.device for t in tensors):
        raise ValueError("weight, indices, offsets and per_sample_weights must be on one device")
    weight, indices, offsets = weight.contiguous(), indices.contiguous(), offsets.contiguous()
    psw = psw.contiguous() if psw is not None else None
    ptr = (lambda t: t.data_ptr() if t is not None and t.numel() else None)
    try:
        if weight.is_cuda:
            ws = torch.empty(_core.workspace_size(cfg), dtype=torch.uint8, device=weight.device)
            stream = torch.cuda.current_stream(weight.device).cuda_stream
            _core.forward_cuda(cfg, ptr(weight), ptr(indices), ptr(offsets), ptr(psw), indices.numel(),
                               offsets.numel(), ptr(out), ws.data_ptr(), stream)
        else:
            _core.forward_cpu(cfg, ptr(weight), ptr(indices), ptr(offsets), ptr(psw), indices.numel(), offsets.numel(),
                              ptr(out))
    except _core.CoreError as e:
        raise RuntimeError(f"dlrm_deploy.embedding_bag: {e}") from None
    return out


torch.library.impl(QUALNAME, "CPU")(_run)
torch.library.impl(QUALNAME, "CUDA")(_run)


@torch.library.register_fake(QUALNAME)
def _fake(weight, indices, offsets, per_sample_weights, *args, **kwargs):
    attrs = _attrs(args, kwargs)
    T, D = len(attrs["table_rows"]), int(attrs["dim"])
    bags = offsets.shape[0] - int(attrs["include_last_offset"])
    batch = bags // T
    return weight.new_empty((batch, T * D), dtype=_OUT_DTYPES[attrs["out_dtype"]])


def op_call(weight, indices, offsets, per_sample_weights=None, **attrs):
    """Calls torch.ops.dlrm_deploy.embedding_bag with contract attributes by name
    (defaults from the contract for the ones left out)."""
    full = contract.validate_attributes(attrs)
    return torch.ops.dlrm_deploy.embedding_bag(weight, indices, offsets, per_sample_weights,
                                               *[full[n] for n in _ATTR_NAMES])


def embedding_bag_tables(weight, indices, offsets, per_sample_weights=None, **attrs):
    """The op's per-table form on CPU or CUDA tensors: lists of T tensors, each table's ids and
    offsets exactly as nn.EmbeddingBag takes them (1-D, offsets[0] == 0; B or B+1 entries with
    include_last_offset), over the packed weight. attrs: contract attributes (table_rows, dim, ...).
    Returns [B, T*D]. Bad input raises RuntimeError naming the table (check="checked")."""
    full = contract.validate_attributes(attrs)
    T, D = len(full["table_rows"]), int(full["dim"])
    psw = per_sample_weights or [None] * T
    if not (len(indices) == len(offsets) == len(psw) == T):
        raise ValueError(f"expected {T} indices, offsets (and per_sample_weights) tensors, one per table")
    cfg = _weight_config(weight, full, indices[0].dtype)
    ptr = (lambda t: t.data_ptr() if t is not None and t.numel() else None)
    tensors = [(i.contiguous(), o.contiguous(), None if p is None else p.contiguous())
               for i, o, p in zip(indices, offsets, psw)]
    for i, o, p in tensors:
        if i.dtype != indices[0].dtype or o.dtype != i.dtype or i.device != weight.device or o.device != weight.device:
            raise TypeError("every table's indices and offsets need the dtype of the first indices and the weight's device")
    batch = max(0, offsets[0].numel() - int(full["include_last_offset"]))
    out = torch.empty((batch, T * D), dtype=_OUT_DTYPES[full["out_dtype"]], device=weight.device)
    table_arr = _core.table_lookups([(ptr(i), ptr(o), ptr(p), i.numel(), o.numel()) for i, o, p in tensors])
    try:
        if weight.is_cuda:
            ws = torch.empty(_core.workspace_size(cfg), dtype=torch.uint8, device=weight.device)
            stream = torch.cuda.current_stream(weight.device).cuda_stream
            _core.forward_tables_cuda(cfg, ptr(weight), table_arr, ptr(out), ws.data_ptr(), stream)
        else:
            _core.forward_tables_cpu(cfg, ptr(weight), table_arr, ptr(out))
    except _core.CoreError as e:
        raise RuntimeError(f"dlrm_deploy.embedding_bag: {e}") from None
    return out


def embedding_bag(input, weight, offsets, mode="sum", per_sample_weights=None, include_last_offset=False,
                  **kernel_options):
    """Drop-in for ``torch.nn.functional.embedding_bag`` (1-D ``input`` + ``offsets`` form) on our
    kernels. Note the default ``mode="sum"`` (PyTorch's default is "mean").

    input: 1-D int32/int64 row ids; weight: [rows, dim] fp32/fp16/bf16 (or uint8 int8/int4 row-wise
    rows with ``dtype="int8"/"int4", dim=...`` in kernel_options; int4 runs on CUDA only for now: the
    multi-threaded CPU forward refuses it); offsets: bag starts.
    kernel_options: any other contract attribute (variant, prefetch_distance, pinned_rows, check, ...).
    Returns [bags, dim] in the weight's dtype (fp32 for int8/int4 tables) unless out_dtype is given.
    Bad input raises RuntimeError (check="checked", the default).
    """
    if input.dim() != 1:
        raise ValueError("embedding_bag: only the 1-D input + offsets form is supported")
    if mode not in contract.MODES:
        raise ValueError(f"embedding_bag: mode must be one of {contract.MODES}, got {mode!r}")
    dtype = kernel_options.pop("dtype", None) or contract.dtype_of_torch(weight.dtype)
    if dtype is None:
        raise TypeError(f"embedding_bag: unsupported weight dtype {weight.dtype} (int8 tables: pass dtype='int8')")
    dim = kernel_options.pop("dim", None) or weight.shape[1]
    out_dtype = kernel_options.pop("out_dtype", "fp32" if dtype in contract.ROWWISE else dtype)
    if offsets.dtype != input.dtype:
        offsets = offsets.to(input.dtype)
    return op_call(weight, input, offsets, per_sample_weights, table_rows=[weight.shape[0]], dim=dim, dtype=dtype,
                   out_dtype=out_dtype, mode=mode, include_last_offset=int(bool(include_last_offset)),
                   **kernel_options)
