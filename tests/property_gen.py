"""Seeded random models and inputs for the differential test (tests/test_property.py).

A model is a ModuleList of nn.EmbeddingBag (1-8 tables, rows 1-5000, D 1-260, sum/mean, per-sample
weights, include_last_offset, 1-D ids + offsets or 2-D [B, L] ids, int32/int64 ids) that concatenates
the pooled bags, sometimes with a Linear on top. It is exported with ``export_onnx`` (storage dtype,
table batching, hot rows, check mode drawn per model), run in ONNX Runtime and compared with PyTorch
eager on the original module (tables rounded to what the export stores).

Everything is drawn from ``numpy.random.default_rng(seed)``: a model is ``draw_model(seed)``, its
inputs ``draw_case(spec, case_seed)``, so a failure reproduces from its two seeds alone.

Outcomes (``compare``): PyTorch decides validity by running. PyTorch succeeds -> ONNX Runtime must
succeed and match; PyTorch raises -> ONNX Runtime must raise an error naming ``dlrm_deploy``.

Tolerance: each output element of the pooled bags may differ from PyTorch by
``(1e-5 + 2 * n * 2**-24) * sum|terms|`` where n is the bag length and sum|terms| the sum of the
absolute looked-up values (times |per-sample weight|, divided by n for mean): the rounding bound of
two fp32 sums of n terms in any order, plus the 1e-5 relative floor the op's own tests use. A Linear
on top propagates it through |W|. Tables stored as fp16/bf16/int8 are compared against PyTorch on the
rounded/dequantised table, so storage rounding does not count.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

DTYPES = ("fp32", "fp16", "bf16", "int8")
VARIANTS = ("auto", "baseline", "occupancy", "prefetch", "l2pin", "combined")
CHECKS = ("checked", "deferred", "unchecked")
# Bad-input classes (fed to check=checked models only) and valid edge classes (fed to every model).
INVALID_KINDS = ("id_too_large", "id_negative", "first_offset_positive", "first_offset_negative", "decreasing_offsets",
                 "offset_past_end")
VALID_KINDS = ("valid", "empty_bags", "huge_bag", "empty_batch", "ilo_trailing_ids")
U = 2.0 ** -24  # fp32 unit roundoff
EXAMPLE_BATCH = 5  # export batch: >= 2 and different from every example id count


@dataclass
class TableSpec:
    """One nn.EmbeddingBag and the form of its inputs."""

    rows: int
    dim: int
    mode: str  # sum | mean
    weighted: bool  # per_sample_weights (sum only)
    include_last_offset: bool
    seq_len: int  # 0: 1-D ids + offsets; L > 0: 2-D [B, L] ids without offsets
    index_dtype: torch.dtype

    def short(self) -> str:
        form = f"2d[B,{self.seq_len}]" if self.seq_len else ("1d+ilo" if self.include_last_offset else "1d")
        return (f"{self.rows}x{self.dim} {self.mode}{'+psw' if self.weighted else ''} {form} "
                f"{str(self.index_dtype).replace('torch.', '')}")


@dataclass
class ModelSpec:
    """A random model and its export options."""

    seed: int
    tables: list[TableSpec]
    dtype: str
    table_batching: bool
    check: str
    hot: bool
    pinned_rows: int | None  # with hot: None = automatic choice
    head: int  # 0: no Linear; else its output features
    hot_perm: list = field(default_factory=list, repr=False)  # per table: rows in hotness order
    variant: str = "auto"  # kernel variant (the CUDA provider runs it; the CPU ignores it)

    def short(self) -> str:
        hot = f"hot(pinned={'auto' if self.pinned_rows is None else self.pinned_rows})" if self.hot else "cold"
        return (f"model seed {self.seed}: dtype={self.dtype} batching={self.table_batching} check={self.check} "
                f"variant={self.variant} {hot} "
                f"head={self.head} tables=[{'; '.join(t.short() for t in self.tables)}]")


class PropModel(nn.Module):
    """nn.EmbeddingBag per table; forward(xs) takes the flat list of per-table tensors (ids, offsets
    for 1-D tables, per-sample weights where weighted) and returns the concatenated pooled bags,
    through a Linear when the spec has a head."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        g = torch.Generator().manual_seed(spec.seed)
        self.bags = nn.ModuleList()
        for t in spec.tables:
            eb = nn.EmbeddingBag(t.rows, t.dim, mode=t.mode, include_last_offset=t.include_last_offset)
            with torch.no_grad():
                eb.weight.copy_(torch.randn(t.rows, t.dim, generator=g))
            self.bags.append(eb)
        total = sum(t.dim for t in spec.tables)
        self.head = None
        if spec.head:
            self.head = nn.Linear(total, spec.head)
            with torch.no_grad():
                self.head.weight.copy_(torch.randn(spec.head, total, generator=g) / math.sqrt(total))
                self.head.bias.copy_(torch.randn(spec.head, generator=g))

    def pooled(self, xs: list[torch.Tensor]) -> torch.Tensor:
        outs, k = [], 0
        for t, eb in zip(self.spec.tables, self.bags):
            ids = xs[k]
            k += 1
            offsets = None
            if not t.seq_len:
                offsets = xs[k]
                k += 1
            psw = None
            if t.weighted:
                psw = xs[k]
                k += 1
            outs.append(eb(ids, offsets, per_sample_weights=psw))
        return torch.cat(outs, dim=1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        p = self.pooled(xs)
        return self.head(p) if self.head is not None else p


def input_names(spec: ModelSpec) -> list[str]:
    """ONNX input names in the flattened order of forward's list."""
    names = []
    for i, t in enumerate(spec.tables):
        names.append(f"indices_{i}")
        if not t.seq_len:
            names.append(f"offsets_{i}")
        if t.weighted:
            names.append(f"weights_{i}")
    return names


# ---------------------------------------------------------------------------------------------
# Drawing models


def _draw_dim(rng) -> int:
    if rng.random() < 0.5:
        return int(rng.choice([1, 2, 3, 4, 5, 7, 8, 12, 16, 17, 31, 32, 33, 64, 100, 127, 128, 129, 255, 256, 260]))
    return int(rng.integers(1, 261))


def _draw_rows(rng) -> int:
    r = rng.random()
    if r < 0.1:
        return int(rng.integers(1, 4))
    if r < 0.2:
        return 5000
    return int(round(math.exp(rng.uniform(math.log(4), math.log(5000)))))


def draw_model(seed: int) -> ModelSpec:
    """The model of seed. dtype, table batching and check mode are stratified over seeds (every
    combination within 24 consecutive seeds); the rest is random. Table attributes are drawn from
    a few per-model values so that tables often share a batching group."""
    rng = np.random.default_rng([seed, 0x5EED])
    dtype = DTYPES[seed % 4]
    table_batching = bool((seed // 4) % 2 == 0)
    check = ("checked", "deferred", "checked", "unchecked", "checked", "deferred")[(seed // 8) % 6] \
        if seed < 48 else CHECKS[int(rng.integers(0, 3))]
    n = int(rng.choice([1, 2, 2, 3, 3, 4, 5, 8])) if rng.random() < 0.9 else int(rng.integers(1, 9))
    dims = [_draw_dim(rng) for _ in range(int(rng.integers(1, 3)))]
    modes = ["sum", "mean"][:int(rng.integers(1, 3))] if rng.random() < 0.7 else ["mean"]
    idx_choice = rng.random()
    tables = []
    for _ in range(n):
        mode = str(rng.choice(modes))
        seq_len = int(rng.integers(1, 6)) if rng.random() < 0.2 else 0
        if idx_choice < 0.55:
            idt = torch.int64
        elif idx_choice < 0.8:
            idt = torch.int32
        else:
            idt = torch.int32 if rng.random() < 0.5 else torch.int64
        tables.append(TableSpec(rows=_draw_rows(rng), dim=int(rng.choice(dims)), mode=mode,
                                weighted=bool(mode == "sum" and rng.random() < 0.4),
                                include_last_offset=bool(rng.random() < 0.35), seq_len=seq_len, index_dtype=idt))
    hot = bool(rng.random() < 0.4)
    pinned = None
    if hot and rng.random() < 0.5:
        pinned = int(rng.integers(0, 65))
    head = int(rng.integers(1, 5)) if rng.random() < 0.25 else 0
    hot_perm = [rng.permutation(t.rows) for t in tables]
    variant = VARIANTS[(seed + 3) % len(VARIANTS)]  # with seed % 4 (dtype): every pair within 12 seeds
    return ModelSpec(seed=seed, tables=tables, dtype=dtype, table_batching=table_batching, check=check, hot=hot,
                     pinned_rows=pinned, head=head, hot_perm=hot_perm, variant=variant)


def hot_sample(spec: ModelSpec) -> list[torch.Tensor]:
    """hot_rows_from for export_onnx: per table, Zipf(1.1)-distributed ids over the table's hot order."""
    rng = np.random.default_rng([spec.seed, 0x407])
    out = []
    for t, perm in zip(spec.tables, spec.hot_perm):
        ranks = np.minimum(rng.zipf(1.1, size=4 * t.rows + 64) - 1, t.rows - 1)
        out.append(torch.from_numpy(perm[ranks].astype(np.int64)))
    return out


# ---------------------------------------------------------------------------------------------
# Drawing inputs


@dataclass
class TableInput:
    ids: np.ndarray  # 1-D int64 (or [B, L] for 2-D tables)
    offsets: np.ndarray | None  # int64, None for 2-D tables
    psw: np.ndarray | None  # float32, same shape as ids


@dataclass
class Case:
    """Inputs of one run: per table its ids/offsets/weights, and what was done to them."""

    seed: int
    kind: str
    target: int | None  # the table the kind applies to (None: all tables)
    detail: str
    batch: int
    tables: list[TableInput]

    def tensors(self, spec: ModelSpec) -> list[torch.Tensor]:
        xs = []
        for t, x in zip(spec.tables, self.tables):
            xs.append(torch.from_numpy(x.ids).to(t.index_dtype))
            if not t.seq_len:
                xs.append(torch.from_numpy(x.offsets).to(t.index_dtype))
            if t.weighted:
                xs.append(torch.from_numpy(x.psw))
        return xs

    def feeds(self, spec: ModelSpec) -> dict[str, np.ndarray]:
        return {n: x.numpy() for n, x in zip(input_names(spec), self.tensors(spec))}

    def short(self, spec: ModelSpec) -> str:
        s = f"case seed {self.seed}: {self.kind} (B={self.batch}"
        if self.target is not None:
            x = self.tables[self.target]
            s += f", table {self.target}"
            if x.offsets is not None:
                off = x.offsets.tolist()
                s += f", its offsets {off if len(off) <= 12 else off[:6] + ['...'] + off[-4:]} with {x.ids.size} ids"
        return s + (f"; {self.detail}" if self.detail else "") + ")"


def _ids(rng, spec: ModelSpec, t: int, n: int) -> np.ndarray:
    rows = spec.tables[t].rows
    if spec.hot and rng.random() < 0.7:  # hit the hot rows
        ranks = np.minimum(rng.zipf(1.1, size=n) - 1, rows - 1)
        return spec.hot_perm[t][ranks].astype(np.int64)
    return rng.integers(0, rows, size=n).astype(np.int64)


def _lengths(rng, batch: int, style: str) -> np.ndarray:
    if style == "empty":
        lens = np.zeros(batch, np.int64)
        if batch and rng.random() < 0.5:
            lens[rng.integers(0, batch)] = rng.integers(1, 4)
        return lens
    if style == "nonempty":
        return rng.integers(1, 6, size=batch)
    max_len = int(rng.choice([0, 1, 2, 4, 8, 20]))
    return rng.integers(0, max_len + 1, size=batch)


def _table_input(rng, spec: ModelSpec, t: int, batch: int, style: str) -> TableInput:
    ts = spec.tables[t]
    if ts.seq_len:
        ids = _ids(rng, spec, t, batch * ts.seq_len).reshape(batch, ts.seq_len)
        offsets = None
    else:
        lens = _lengths(rng, batch, style)
        ids = _ids(rng, spec, t, int(lens.sum()))
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]) if batch else np.zeros(0, np.int64)
        if ts.include_last_offset:
            offsets = np.concatenate([offsets, [ids.size]])
        offsets = offsets.astype(np.int64)
    psw = rng.uniform(-1.5, 1.5, size=ids.shape).astype(np.float32) if ts.weighted else None
    return TableInput(ids, offsets, psw)


def _pick(rng, tables: list[int]) -> int | None:
    return int(rng.choice(tables)) if tables else None


def _bad_id(rng, rows: int, negative: bool, idt: torch.dtype) -> int:
    big = 2 ** 31 - 1 if idt == torch.int32 else 2 ** 40
    if negative:
        return int(rng.choice([-1, -rows, -(rows + 1), -int(rng.integers(1, rows + 2)), -big]))
    return int(rng.choice([rows, rows + 1, rows + int(rng.integers(0, 1000)), big]))


def draw_case(spec: ModelSpec, case_seed: int, kind: str | None = None) -> Case:
    """Inputs for spec from case_seed. kind: one of VALID_KINDS or INVALID_KINDS, else drawn
    (invalid kinds only for check=checked models). A kind that does not apply to the model (no
    1-D table, ...) falls back to 'valid'."""
    rng = np.random.default_rng([spec.seed, case_seed, 0xCA5E])
    if kind is None:
        pool = list(VALID_KINDS) + (list(INVALID_KINDS) * 2 if spec.check == "checked" else [])
        kind = str(rng.choice(pool))
    T = len(spec.tables)
    one_d = [i for i, t in enumerate(spec.tables) if not t.seq_len]
    ilo = [i for i in one_d if spec.tables[i].include_last_offset]
    batch = int(rng.choice([1, 2, 3, 5, 8, 17, 32, 64]))
    detail = ""
    target = None
    styles = ["random"] * T
    if kind == "empty_batch":
        batch = 0
    elif kind == "empty_bags":
        styles = ["empty"] * T
    elif kind in ("first_offset_positive", "decreasing_offsets"):
        target = _pick(rng, one_d)
        if target is None:
            kind = "valid"
        else:
            batch = max(batch, 3)
            styles[target] = "nonempty"
    elif kind in ("first_offset_negative", "offset_past_end"):
        target = _pick(rng, one_d)
        if target is None:
            kind = "valid"
    elif kind == "ilo_trailing_ids":
        target = _pick(rng, ilo)
        if target is None:
            kind = "valid"
    elif kind in ("id_too_large", "id_negative"):
        target = int(rng.integers(0, T))
    tabs = [_table_input(rng, spec, t, batch, styles[t]) for t in range(T)]

    if kind == "empty_batch":  # sometimes with ids that no bag covers (PyTorch ignores them)
        for t in one_d:
            if rng.random() < 0.3:
                x = tabs[t]
                x.ids = _ids(rng, spec, t, int(rng.integers(1, 5)))
                if spec.tables[t].weighted:
                    x.psw = rng.uniform(-1.5, 1.5, size=x.ids.shape).astype(np.float32)
                detail = "ids outside every bag"
    elif kind == "huge_bag":
        t = int(rng.integers(0, T))
        target = t
        x = tabs[t]
        if spec.tables[t].seq_len:
            kind = "valid"
        else:
            b = int(rng.integers(0, batch))
            n = int(rng.integers(1000, 5001))
            lens = np.diff(np.append(x.offsets[:batch], x.ids.size if not spec.tables[t].include_last_offset
                                     else x.offsets[-1]))
            lens[b] = n
            x.ids = _ids(rng, spec, t, int(lens.sum()))
            off = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
            x.offsets = np.concatenate([off, [x.ids.size]]) if spec.tables[t].include_last_offset else off
            if spec.tables[t].weighted:
                x.psw = rng.uniform(-1.5, 1.5, size=x.ids.shape).astype(np.float32)
            detail = f"bag {b} holds {n} ids"
    elif kind == "ilo_trailing_ids":
        x = tabs[target]
        extra = int(rng.choice([1, 2, 5, 50]))
        bad = spec.check == "checked" and rng.random() < 0.3  # PyTorch never reads trailing ids
        more = _ids(rng, spec, target, extra)
        if bad:
            more[int(rng.integers(0, extra))] = _bad_id(rng, spec.tables[target].rows, bool(rng.random() < 0.5),
                                                        spec.tables[target].index_dtype)
        x.ids = np.concatenate([x.ids, more])
        if spec.tables[target].weighted:
            x.psw = np.concatenate([x.psw, rng.uniform(-1.5, 1.5, size=extra).astype(np.float32)])
        detail = f"{extra} ids after the last offset" + (" (one out of range)" if bad else "")
    elif kind in ("id_too_large", "id_negative"):
        ts = spec.tables[target]
        n_in = lambda x: x.ids.size if ts.seq_len or not ts.include_last_offset else int(x.offsets[-1])
        if n_in(tabs[target]) == 0:  # no id inside a bag: draw the table again with none empty
            tabs[target] = _table_input(rng, spec, target, batch, "nonempty")
        x = tabs[target]
        flat = x.ids.reshape(-1).copy()
        pos = int(rng.integers(0, n_in(x)))
        v = _bad_id(rng, ts.rows, kind == "id_negative", ts.index_dtype)
        flat[pos] = v
        x.ids = flat.reshape(x.ids.shape)
        detail = f"id {v} at flat position {pos} (rows {ts.rows})"
    elif kind == "first_offset_positive":
        x = tabs[target]
        k = int(rng.integers(1, x.offsets[1] + 1))
        x.offsets[0] = k
        detail = f"offsets[0] = {k}"
    elif kind == "first_offset_negative":
        x = tabs[target]
        if x.offsets.size == 0:
            x.offsets = np.zeros(1, np.int64)  # a bag where there was none: shapes then differ
            kind, target = "valid", None
            tabs = [_table_input(rng, spec, t, batch, "random") for t in range(T)]
        else:
            k = int(rng.choice([1, 2, 7, 1000]))
            x.offsets[0] = -k
            detail = f"offsets[0] = {-k}"
    elif kind == "decreasing_offsets":
        x = tabs[target]
        b = int(rng.integers(2, x.offsets.size))
        new = int(rng.integers(0, x.offsets[b - 1]))
        detail = f"offsets[{b}] = {new} < offsets[{b - 1}] = {x.offsets[b - 1]}"
        x.offsets[b] = new
    elif kind == "offset_past_end":
        x = tabs[target]
        if x.offsets.size == 0:
            kind, target = "valid", None
        else:
            k = int(rng.choice([1, 2, 10, 10000]))
            b = x.offsets.size - 1 if rng.random() < 0.6 else int(rng.integers(0, x.offsets.size))
            x.offsets[b:] = x.ids.size + k
            detail = f"offsets[{b}:] = {x.ids.size + k} with {x.ids.size} ids"
    return Case(seed=case_seed, kind=kind, target=target, detail=detail, batch=batch, tables=tabs)


# ---------------------------------------------------------------------------------------------
# PyTorch side


def decoded_model(model: PropModel, dtype: str) -> PropModel:
    """A copy whose tables hold what export_onnx stores (rounded to fp16/bf16, int8 dequantised)."""
    from dlrm_deploy.export.tables import dequantize_int8_rowwise, quantize_int8_rowwise

    m = copy.deepcopy(model)
    with torch.no_grad():
        for eb in m.bags:
            w = eb.weight.detach()
            if dtype == "int8":
                dec = torch.from_numpy(dequantize_int8_rowwise(quantize_int8_rowwise(w), w.shape[1]))
            else:
                dec = w.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]).float()
            eb.weight.copy_(dec)
    return m


@dataclass
class Reference:
    out: np.ndarray | None  # PyTorch's output, float64; None when PyTorch raised
    error: str | None
    tol: np.ndarray | None  # allowed |ORT - PyTorch| per element


def torch_reference(dec: PropModel, spec: ModelSpec, case: Case) -> Reference:
    """PyTorch eager on the decoded model, and the tolerance of each output element."""
    xs = case.tensors(spec)
    try:
        with torch.no_grad():
            out = dec(xs)
    except Exception as e:  # PyTorch's own verdict on the input
        return Reference(None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", None)
    # sum|terms| (|table| and |weights|) and bag lengths (a ones table, no weights), same pooling.
    absm = copy.deepcopy(dec)
    ones = copy.deepcopy(dec)
    with torch.no_grad():
        for eb in absm.bags:
            eb.weight.abs_()
        for eb in ones.bags:
            eb.weight.fill_(1.0)
            eb.mode = "sum"
        axs = [x.abs() if x.is_floating_point() else x for x in xs]
        oxs = [torch.ones_like(x) if x.is_floating_point() else x for x in xs]
        mag = absm.pooled(axs).double()
        n = ones.pooled(oxs).double()
        tol = (1e-5 + 2.0 * torch.clamp(n, min=1.0) * U) * mag
        if dec.head is not None:
            w = dec.head.weight.detach().double().abs()
            k = w.shape[1]
            tol = tol @ w.T + (k + 2) * U * (mag @ w.T + dec.head.bias.detach().double().abs())
    return Reference(out.double().numpy(), None, tol.numpy() + 1e-30)


# ---------------------------------------------------------------------------------------------
# Export and ONNX Runtime side


def export_model(model: PropModel, spec: ModelSpec, path: str):
    """export_onnx with the spec's options; the example inputs give every tensor a distinct size."""
    from dlrm_deploy.export import export_onnx

    ex = example_case(spec)
    kw = dict(dtype=spec.dtype, table_batching=spec.table_batching, check=spec.check, variant=spec.variant,
              input_names=input_names(spec))
    if spec.hot:
        kw["hot_rows_from"] = hot_sample(spec)
        kw["pinned_rows"] = spec.pinned_rows
    return export_onnx(model, (ex.tensors(spec),), path, **kw)


def example_case(spec: ModelSpec) -> Case:
    """Export inputs: batch EXAMPLE_BATCH, table t with 7 + 2t ids (never the batch size or batch + 1,
    so the exporter keeps every first dimension its own symbol)."""
    rng = np.random.default_rng([spec.seed, 0xE1])
    B = EXAMPLE_BATCH
    tabs = []
    for t, ts in enumerate(spec.tables):
        if ts.seq_len:
            ids = rng.integers(0, ts.rows, size=(B, ts.seq_len))
            offsets = None
        else:
            n = 7 + 2 * t
            ids = rng.integers(0, ts.rows, size=n)
            offsets = np.sort(rng.integers(0, n + 1, size=B))
            offsets[0] = 0
            if ts.include_last_offset:
                offsets = np.append(offsets, n)
        psw = rng.uniform(0.5, 1.5, size=ids.shape).astype(np.float32) if ts.weighted else None
        tabs.append(TableInput(ids.astype(np.int64), None if offsets is None else offsets.astype(np.int64), psw))
    return Case(seed=-1, kind="example", target=None, detail="", batch=B, tables=tabs)


def ort_device() -> str:
    return os.environ.get("DLRM_DEPLOY_PROPERTY_DEVICE", "cpu")


@dataclass
class Outcome:
    ok: bool
    verdict: str  # match | both raised | silent mismatch | ORT accepted bad input | ORT raised on valid input | unclear error
    message: str = ""


def run_ort(sess, spec: ModelSpec, case: Case):
    """(output float64 or None, error message or None)."""
    try:
        out = sess.run(case.feeds(spec))[0]
        return np.asarray(out, dtype=np.float64), None
    except Exception as e:  # the verdict is judged against PyTorch's
        return None, f"{type(e).__name__}: {e}"


def compare(ref: Reference, got: np.ndarray | None, err: str | None, *, must_raise: bool = False,
            alt: Reference | None = None) -> Outcome:
    """PyTorch raised (or must_raise: the input breaks the op contract, whatever PyTorch did) -> ORT must
    raise naming dlrm_deploy; PyTorch succeeded -> ORT must match it (or alt, another accepted
    reference) within the tolerance."""
    if ref.error is not None or must_raise:
        why = f"PyTorch raised {ref.error}" if ref.error is not None else "PyTorch returned a result"
        if err is None:
            return Outcome(False, "ORT accepted bad input", f"{why}; ORT returned a result")
        if "dlrm_deploy" not in err:
            return Outcome(False, "unclear error", f"{why}; ORT raised without naming dlrm_deploy: {err[:300]}")
        return Outcome(True, "both raised", err)
    if err is not None:
        return Outcome(False, "ORT raised on valid input", f"PyTorch returned a result; ORT raised {err[:300]}")
    first = _mismatch(ref, got)
    if first is None or (alt is not None and alt.error is None and _mismatch(alt, got) is None):
        return Outcome(True, "match")
    return Outcome(False, "silent mismatch", first)


def _mismatch(ref: Reference, got: np.ndarray) -> str | None:
    if got.shape != ref.out.shape:
        return f"shape {got.shape} vs PyTorch {ref.out.shape}"
    diff = np.abs(got - ref.out)
    bad = ~(diff <= ref.tol)  # NaN counts as bad
    if not bad.any():
        return None
    i = np.unravel_index(int(np.argmax(np.where(bad, diff / ref.tol, -1))), bad.shape)
    return (f"{int(bad.sum())} of {bad.size} elements off; at {tuple(int(v) for v in i)}: ORT {got[i]:.6g} "
            f"vs PyTorch {ref.out[i]:.6g} (tol {ref.tol[i]:.3g})")


def without_trailing_ids(spec: ModelSpec, case: Case) -> Case | None:
    """case with the ids after each include_last_offset table's last offset dropped (None if none):
    the "trailing ids are ignored" reading. PyTorch's CPU mean pooling divides the last bag by
    (number of ids - its start), trailing ids included, so mean tables accept either reading."""
    tabs, changed = [], False
    for t, x in zip(spec.tables, case.tables):
        if not t.seq_len and t.include_last_offset and x.offsets.size and 0 <= x.offsets[-1] < x.ids.size:
            end = int(x.offsets[-1])
            x = TableInput(x.ids[:end], x.offsets, None if x.psw is None else x.psw[:end])
            changed = True
        tabs.append(x)
    return Case(case.seed, case.kind, case.target, case.detail, case.batch, tabs) if changed else None


class ExportedModel:
    """One random model exported once and run on many inputs."""

    def __init__(self, spec: ModelSpec, folder: str, device: str = "cpu"):
        from dlrm_deploy.runtime import ort_session

        self.spec = spec
        self.model = PropModel(spec).eval()
        self.decoded = decoded_model(self.model, spec.dtype)
        self.path = os.path.join(folder, f"m{spec.seed}.onnx")
        self.info = export_model(self.model, spec, self.path)
        # fp32 GEMMs of the optional head as in PyTorch's reference (the CUDA provider's default TF32
        # rounds their inputs to 10-bit mantissas, far outside the tolerance)
        opts = {"use_tf32": "0"} if device == "cuda" else None
        self.sess = ort_session(self.path, device=device, log_severity_level=4, provider_options=opts)

    def check(self, case: Case) -> Outcome:
        """Runs case in PyTorch and ONNX Runtime and judges the pair (see compare)."""
        ref = torch_reference(self.decoded, self.spec, case)
        got, err = run_ort(self.sess, self.spec, case)
        trimmed = without_trailing_ids(self.spec, case)
        alt = torch_reference(self.decoded, self.spec, trimmed) if trimmed is not None else None
        return compare(ref, got, err, must_raise=case.kind in INVALID_KINDS, alt=alt)


def with_int8_dims(spec: ModelSpec) -> ModelSpec:
    """spec with every D rounded up to a multiple of 4 (what int8 row-wise tables need)."""
    s = copy.deepcopy(spec)
    for t in s.tables:
        t.dim = -(-t.dim // 4) * 4
    return s


def int8_dim_refused(spec: ModelSpec) -> str | None:
    """For int8 with a D not divisible by 4: export_onnx must refuse with a ValueError; returns its message."""
    from dlrm_deploy.export import export_onnx

    with tempfile.TemporaryDirectory() as d:
        try:
            export_model(PropModel(spec).eval(), spec, os.path.join(d, "x.onnx"))
        except ValueError as e:
            return str(e)
    return None
