"""Random op inputs with an independent float64 reference (numpy over the logical tables), shared by
the core's CPU and GPU tests and the benchmark's correctness check."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dlrm_deploy.layout import (dequantize_int4_rowwise, dequantize_int8_rowwise, int8_scale_bias, pack_tables,
                                quantize_int4_rowwise, quantize_int8_rowwise, split_scales)

TORCH_DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.uint8,
            "int4": torch.uint8}


@dataclass
class Case:
    attrs: dict
    weight: torch.Tensor
    indices: torch.Tensor
    offsets: torch.Tensor
    psw: torch.Tensor | None
    expected: np.ndarray  # float64 [B, T*D]
    scale: np.ndarray = field(default=None)  # float64 [B, T*D]: sum of |terms|, for tolerances

    def to(self, device):
        mv = lambda t: None if t is None else t.to(device)
        return Case(self.attrs, mv(self.weight), mv(self.indices), mv(self.offsets), mv(self.psw), self.expected,
                    self.scale)


def make_case(seed=0, tables=(50, 70), dim=16, batch=8, dtype="fp32", mode="sum", weighted=False,
              include_last_offset=0, index_dtype=torch.int64, lengths="random", max_len=6, pinned_rows=0,
              hot_first=0, out_dtype="fp32", **extra) -> Case:
    """A table-batched case. lengths: 'random' (0..max_len, some empty), 'one', 'fixed' (= max_len).
    extra: more op attributes (split_scales=1 stores the int8 blob split)."""
    rng = np.random.default_rng(seed)
    T = len(tables)
    logical, stored, magnitude = [], [], []
    for rows in tables:
        t = rng.standard_normal((rows, dim)).astype(np.float32)
        if dtype == "int8":
            q = quantize_int8_rowwise(t)
            stored.append(q)
            logical.append(dequantize_int8_rowwise(q, dim))
            # the auto kernels add scale * code and the bias as separate terms (warp_kernel.cuh)
            scale, bias = (x.astype(np.float64)[:, None] for x in int8_scale_bias(q, dim))
            magnitude.append(np.abs(q[:, :dim] * scale) + np.abs(bias))
        elif dtype == "int4":
            q = quantize_int4_rowwise(t)
            stored.append(q)
            logical.append(dequantize_int4_rowwise(q, dim))
        elif dtype == "fp32":
            stored.append(t)
            logical.append(t.astype(np.float64))
        else:
            tt = torch.from_numpy(t).to(TORCH_DT[dtype])
            stored.append(tt.view(torch.int16).numpy())
            logical.append(tt.to(torch.float64).numpy())
    blob = pack_tables(stored, pinned_rows, bool(hot_first))
    if extra.get("split_scales"):
        blob = split_scales(blob, dim)
    weight = torch.from_numpy(blob)
    if dtype in ("fp16", "bf16"):
        weight = weight.view(TORCH_DT[dtype])
    if lengths == "one":
        lens = np.ones((T, batch), dtype=np.int64)
    elif lengths == "fixed":
        lens = np.full((T, batch), max_len, dtype=np.int64)
    else:
        lens = rng.integers(0, max_len + 1, size=(T, batch))
    idx_parts, starts = [], []
    pos = 0
    for t in range(T):
        for b in range(batch):
            starts.append(pos)
            ids = rng.integers(0, tables[t], size=lens[t, b])
            if pinned_rows and rng.random() < 0.7:  # make the hot prefix actually hot
                ids = rng.integers(0, min(pinned_rows, tables[t]), size=lens[t, b])
            idx_parts.append(ids)
            pos += lens[t, b]
    indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    offsets = np.array(starts + ([pos] if include_last_offset else []), dtype=np.int64)
    w = rng.uniform(-1.5, 1.5, size=indices.shape[0]).astype(np.float32) if weighted else None
    expected = np.zeros((batch, T * dim))
    scale = np.zeros((batch, T * dim))
    k = 0
    for t in range(T):
        for b in range(batch):
            ids = idx_parts[k]
            s0 = starts[k]
            k += 1
            rows = logical[t][ids]
            mags = np.abs(magnitude[t][ids] if magnitude else rows)
            if w is not None:
                rows = rows * w[s0:s0 + len(ids), None].astype(np.float64)
                mags = mags * np.abs(w[s0:s0 + len(ids), None].astype(np.float64))
            acc, mag = rows.sum(axis=0), mags.sum(axis=0)
            if mode == "mean" and len(ids):
                acc, mag = acc / len(ids), mag / len(ids)
            expected[b, t * dim:(t + 1) * dim] = acc
            scale[b, t * dim:(t + 1) * dim] = mag
    attrs = dict(table_rows=list(tables), dim=dim, dtype=dtype, mode=mode, include_last_offset=include_last_offset,
                 pinned_rows=pinned_rows, hot_first=hot_first, out_dtype=out_dtype, **extra)
    return Case(attrs, weight, torch.from_numpy(indices).to(index_dtype), torch.from_numpy(offsets).to(index_dtype),
                None if w is None else torch.from_numpy(w), expected, scale)


def run_op(case: Case) -> torch.Tensor:
    """The op on the case's tensors (device = the tensors' device)."""
    from dlrm_deploy.runtime.torch_op import op_call

    return op_call(case.weight, case.indices, case.offsets, case.psw, **case.attrs)


def run_reference(case: Case) -> torch.Tensor:
    """The core's sequential CPU reference (dd_forward_cpu_reference) on the case's packed lookups,
    on host copies: what the tests compare int4 with (the torch op's CPU path is the multi-threaded
    forward, which does not take int4 tables yet)."""
    import ctypes

    from dlrm_deploy.runtime import _core

    lib = _core.lib()
    fn = lib.dd_forward_cpu_reference
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_core.Config)] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + \
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    c = case.to("cpu")
    a = c.attrs
    cfg = _core.make_config(a, "int32" if c.indices.dtype == torch.int32 else "int64")
    T, D, ilo = len(a["table_rows"]), int(a["dim"]), int(a.get("include_last_offset", 0))
    batch = (c.offsets.numel() - ilo) // T
    out_t = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.get("out_dtype", "fp32")]
    out = torch.empty((batch, T * D), dtype=out_t)
    w, idx, off = c.weight.contiguous(), c.indices.contiguous(), c.offsets.contiguous()
    psw = None if c.psw is None else c.psw.contiguous()
    buf = ctypes.create_string_buffer(512)
    rc = fn(ctypes.byref(cfg), w.data_ptr(), idx.data_ptr() if idx.numel() else None, off.data_ptr(),
            None if psw is None else psw.data_ptr(), idx.numel(), off.numel(), out.data_ptr(), buf, 512)
    if rc:
        raise RuntimeError(buf.value.decode())
    return out


def assert_close(case: Case, out: torch.Tensor, rel: float = 1e-5) -> None:
    """|out - expected| <= rel * (sum of |terms|) + output-rounding, elementwise."""
    got = out.detach().to("cpu", torch.float64).numpy()
    out_eps = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[out.dtype]
    tol = rel * case.scale + out_eps * np.abs(case.expected) + 1e-30
    err = np.abs(got - case.expected)
    bad = err > tol
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements off; worst err {err.max():.3g} "
                           f"(tol there {tol.flat[np.argmax(err)]:.3g})")


def per_table(case: Case, trailing: int = 0) -> tuple[list, list, list | None]:
    """The case's lookups in the op's per-table form: each table's own ids and local offsets (B, or
    B+1 with include_last_offset; then `trailing` extra ids after the last offset, which PyTorch
    and the op ignore)."""
    a = case.attrs
    case = case.to("cpu")
    T, ilo = len(a["table_rows"]), int(a["include_last_offset"])
    off = case.offsets.long()
    batch = (off.numel() - ilo) // T
    n = case.indices.numel()
    idx_l, off_l, psw_l = [], [], []
    for t in range(T):
        lo = int(off[t * batch]) if batch else 0
        hi = int(off[(t + 1) * batch]) if (t + 1) * batch < off.numel() else n
        ids = case.indices[lo:hi]
        local = (off[t * batch:(t + 1) * batch] - lo).to(case.indices.dtype)
        if ilo:
            local = torch.cat([local, torch.tensor([hi - lo], dtype=local.dtype)])
            if trailing:
                ids = torch.cat([ids, torch.zeros(trailing, dtype=ids.dtype)])
        idx_l.append(ids)
        off_l.append(local)
        if case.psw is not None:
            w = case.psw[lo:hi]
            psw_l.append(torch.cat([w, torch.ones(len(ids) - len(w))]) if len(ids) > len(w) else w)
    return idx_l, off_l, (psw_l if case.psw is not None else None)


def run_op_tables(case: Case, idx_l, off_l, psw_l) -> torch.Tensor:
    """The op's per-table form on the case's weight and the given per-table tensors."""
    from dlrm_deploy.runtime.torch_op import embedding_bag_tables

    dev = case.weight.device
    mv = (lambda ts: None if ts is None else [t.to(dev) for t in ts])
    return embedding_bag_tables(case.weight, mv(idx_l), mv(off_l), mv(psw_l), **case.attrs)
