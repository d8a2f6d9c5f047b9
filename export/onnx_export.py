"""ONNX export of any torch module that uses ``nn.EmbeddingBag``, with our custom op: the pipeline.

``export_onnx`` leaves the user's model untouched: it deep-copies it with every ``nn.EmbeddingBag``
replaced by a ``DeployEmbeddingBag`` that calls ``torch.ops.dlrm_deploy.embedding_bag`` (tables
converted to the storage dtype, optionally frequency-reordered with an index remap; ``swap.py``),
exports the copy with torch's dynamo exporter (the op becomes one ``dlrm_deploy::EmbeddingBag`` node
per table through a custom translation; ``translate.py``), then, with table batching on, fuses those
nodes into one node per group of compatible tables over a packed table blob (``batching.py``) and
saves the file, big tables as external data (``external_data.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import onnx
from torch import nn

from dlrm_deploy import contract as C

from .batching import batch_tables, keep_shared_tables_unpacked
from .external_data import (EXTERNAL_DATA_THRESHOLD, ExternalDataWriter, HeldTables, save_model, tensor_bytes,
                            write_held)
from .model_inputs import dumps, input_source, warn_fixed_dims
from .onnx_graph import annotate_outputs, is_op, op_nodes
from .onnx_schema import register_onnx_schema
from .interaction import fuse_interaction as fuse_dot_interaction
from .mlp import fuse_mlp as fuse_linear_chains
from .overlap import apply_overlap
from .swap import check_supported, embedding_bags, swap_embedding_bags
from .tables import (DEFAULT_HOT_COVERAGE, DEFAULT_L2_BUDGET_BYTES, choose_pinned_rows, hot_coverage, plan_hot_rows,
                     profile_hot_rows, storage_row_bytes)
from .torchrec_support import (STORED_ROWS, canonical_inputs, check_quantized, dequantize_collections,
                               features_of_tables, kjt_inputs)
from .translate import trace


@dataclass
class TableInfo:
    """One exported table: its module, rows, storage and hot-row statistics."""

    module: str
    rows: int
    dim: int
    dtype: str
    mode: str
    pinned_rows: int = 0
    reordered: bool = False
    sampled_lookups: int = 0
    hot_coverage: float = 0.0  # share of sampled lookups served by the pinned rows


@dataclass
class ExportInfo:
    """What ``export_onnx`` wrote: path, external data file, tables, op nodes and timings (s)."""

    path: str
    external_data: str | None
    tables: list[TableInfo]
    op_nodes: int
    groups: list[list[str]] = field(default_factory=list)  # module names per op node
    weight_bytes: int = 0
    pinned_rows: int = 0
    seconds: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"wrote {self.path}" + (f" (+ {self.external_data})" if self.external_data else ""),
                 f"  {len(self.tables)} tables -> {self.op_nodes} {C.DOMAIN}::{C.OP_TYPE} node(s); "
                 f"table bytes {self.weight_bytes / 2**20:.1f} MiB"]
        if self.pinned_rows:
            cov = [t.hot_coverage for t in self.tables if t.reordered]
            lines.append(f"  pinned rows per table {self.pinned_rows} (sampled coverage "
                         f"{100 * min(cov):.1f}..{100 * max(cov):.1f}%)" if cov else
                         f"  pinned rows per table {self.pinned_rows}")
        lines.append("  time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """model in eval mode inside the block; every submodule's own training flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def check_output_path(out: str) -> None:
    """Raises a one-line error (ValueError, PermissionError) when the file out cannot be written: it
    is a folder, or its folder cannot be created or written. export_onnx checks before any work."""
    path = os.path.abspath(out)
    if os.path.isdir(path):
        raise ValueError(f"output {out} is a folder; give a file name such as {os.path.join(out, 'dlrm.onnx')}")
    folder = os.path.dirname(path)
    while not os.path.exists(folder):  # the nearest existing ancestor must let us create the rest
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {out}: no write permission in {folder}")


@contextlib.contextmanager
def _staged_output(path: str):
    """A fresh folder beside path for the files being written; on success they are renamed into
    place (the external data file first, then the .onnx; a ``<path>.data`` left by an earlier export
    with external data is removed when this one has none), on failure removed: an export never leaves
    a half-written or orphaned file. Yields the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        yield stage
        data_name = os.path.basename(path) + ".data"
        if os.path.exists(os.path.join(stage, data_name)):
            os.replace(os.path.join(stage, data_name), os.path.join(folder, data_name))
        elif os.path.exists(os.path.join(folder, data_name)):
            os.remove(os.path.join(folder, data_name))
        os.replace(os.path.join(stage, os.path.basename(path)), os.path.abspath(path))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _table_map(proto: onnx.ModelProto, model: nn.Module, bags: list, example_inputs: tuple,
               plans: dict) -> tuple[list[dict], list[tuple[str, nn.EmbeddingBag]]]:
    """Per op node of the traced graph: its module and where its ids and offsets come from (graph
    inputs, a row of a stacked input, or a feature of a KeyedJaggedTensor input), for the file's
    ``dlrm_deploy.tables`` metadata. Returns (entries, (module name, module) per node)."""
    nodes = op_nodes(proto)
    by_weight = {f"{name}.weight": (name, m) for name, m in bags}
    if all(n.input[0] in by_weight for n in nodes):
        node_bags = [by_weight[n.input[0]] for n in nodes]
    else:
        node_bags = bags[:len(nodes)]
    features = features_of_tables(model)
    rows_of = {f: int(m.num_embeddings) for name, m in bags for f in features.get(name, [])}
    init = {t.name for t in proto.graph.initializer}
    kjts = kjt_inputs(example_inputs, [i.name for i in proto.graph.input if i.name not in init], rows_of)
    source = input_source(proto)
    seen: dict[str, int] = {}
    entries = []
    for (name, m), n in zip(node_bags, nodes):
        (indices, indices_row), (offsets, offsets_row) = source(n.input[1]), source(n.input[2])
        entry = {"module": name, "rows": int(m.num_embeddings), "dim": int(m.embedding_dim),
                 "indices": indices, "offsets": offsets, "include_last_offset": int(m.include_last_offset),
                 "reordered": name in plans}
        if indices_row is not None:
            entry["indices_row"] = indices_row
        if offsets_row is not None:
            entry["offsets_row"] = offsets_row
        k = seen.get(name, 0)
        seen[name] = k + 1
        feature = features[name][k] if k < len(features.get(name, [])) else None
        kjt = next((d for d in kjts if feature in d["keys"]), None)
        if feature is not None and kjt is not None:
            entry.update(indices=None, offsets=None, feature=feature, kjt=kjt)
        entries.append(entry)
    return entries, node_bags


def _checked_bags(model: nn.Module, dtype: str) -> list[tuple[str, nn.EmbeddingBag]]:
    """model's nn.EmbeddingBag modules, each checked as supported; warns when there are none, and
    when a converted quantized table is exported in another storage than its own."""
    bags = embedding_bags(model)
    if not bags:
        warnings.warn("model has no nn.EmbeddingBag: exporting it without the custom op")
    for name, m in bags:
        check_supported(name, m)
        quantized = sorted(getattr(m, STORED_ROWS, {}))
        if quantized and dtype not in quantized:
            warnings.warn(f"table '{name}' is {quantized[0]} in the quantized model; exporting it as {dtype} "
                          f"(pass dtype='{quantized[0]}' to keep its rows as they are)")
    return bags


def _table_infos(bags: list, plans: dict, pinned: dict, dtype: str) -> list[TableInfo]:
    """A TableInfo per nn.EmbeddingBag (sizes as Python ints, hot-row statistics where profiled)."""
    tables = []
    for name, m in bags:
        plan, p = plans.get(name), pinned.get(name, 0)
        tables.append(TableInfo(module=name, rows=int(m.num_embeddings), dim=int(m.embedding_dim), dtype=dtype,
                                mode=m.mode, pinned_rows=p, reordered=plan is not None,
                                sampled_lookups=int(plan.counts.sum()) if plan is not None else 0,
                                hot_coverage=hot_coverage(plan.counts, p) if plan is not None else 0.0))
    return tables


def _hot_rows(model: nn.Module, bags: list, hot_rows_from, pinned_rows, dtype: str, coverage: float,
              l2_budget_bytes: int, say) -> tuple[dict, dict]:
    """(hot-row plans {module: HotRowPlan}, pinned rows {module: rows}) for export_onnx; profiling
    runs model in eval mode and restores its training flags."""
    plans, pinned = {}, {}
    if hot_rows_from is not None:
        say("profiling hot rows ...")
        with _eval_mode(model):
            counts = profile_hot_rows(model, hot_rows_from)
        plans = {n: plan_hot_rows(c) for n, c in counts.items()}
        if pinned_rows is None:
            row_bytes = max(storage_row_bytes(int(m.embedding_dim), dtype) for n, m in bags if n in counts)
            p = choose_pinned_rows(list(counts.values()), row_bytes, coverage=coverage, l2_budget_bytes=l2_budget_bytes)
        else:
            p = int(pinned_rows)
        pinned = {n: min(int(p), int(m.num_embeddings)) for n, m in bags if n in counts}
    elif pinned_rows:
        pinned = {n: int(pinned_rows) for n, _m in bags}
    return plans, pinned


def _prepare(model: nn.Module, example_inputs: tuple, path, *, dtype: str, variant: str,
             check: str) -> tuple[nn.Module, tuple, str]:
    """Checks export_onnx's options and output path before any work; returns the model with TorchRec
    quantized tables as float ones carrying their rows, the inputs in canonical form and the path."""
    if dtype not in C.DTYPES:
        raise ValueError(f"dtype must be one of {C.DTYPES}, got {dtype!r}")
    C.validate_attributes(dict(table_rows=[1], dim=1, variant=variant, check=check))
    register_onnx_schema()
    path = os.fspath(path)
    check_output_path(path)
    model = dequantize_collections(model)
    check_quantized(model)
    return model, canonical_inputs(example_inputs), path


def _swap_and_trace(model: nn.Module, bags: list, example_inputs: tuple, plans: dict, pinned: dict, say,
                    seconds: dict, *, dtype: str, variant: str, prefetch_distance: int, check: str,
                    trace_options: dict) -> tuple[onnx.ModelProto, HeldTables]:
    """The traced ONNX model of a swapped copy of model (one op node per table) and its held tables
    (see HeldTables); records the seconds of the swap and of the export."""
    say(f"swapping {len(bags)} nn.EmbeddingBag module(s) for {C.DOMAIN}::{C.OP_TYPE} (tables {dtype}) ...")
    t = time.perf_counter()
    deferred = {}  # tables converted only when written (see swap_embedding_bags)
    swapped = swap_embedding_bags(model, dtype=dtype, variant=variant, prefetch_distance=prefetch_distance,
                                  check=check, pinned_rows=pinned, hot_plans=plans, deferred=deferred).eval()
    seconds["swap"] = time.perf_counter() - t
    say("tracing and converting with torch.onnx (dynamo) ...")
    t = time.perf_counter()
    proto, held = trace(swapped, example_inputs, deferred=deferred, **trace_options)
    del swapped, deferred
    seconds["export"] = time.perf_counter() - t
    warn_fixed_dims(proto, example_inputs)
    return proto, held


def export_onnx(model: nn.Module, example_inputs: tuple, path: str | os.PathLike, *, dtype: str = "fp32",
                variant: str = "auto", prefetch_distance: int = 0, table_batching: bool = True,
                hot_rows_from=None, pinned_rows: int | None = None, hot_coverage_target: float = DEFAULT_HOT_COVERAGE,
                l2_budget_bytes: int = DEFAULT_L2_BUDGET_BYTES, check: str = "checked", opset: int = 18,
                input_names: list[str] | None = None, output_names: list[str] | None = None,
                dynamic_shapes=None, external_data: bool | None = None, validate: bool = True,
                overlap: bool = False, fuse_interaction: bool = True, fuse_mlp: bool = True,
                split_scales: bool = True, progress=None) -> ExportInfo:
    """Exports model to ONNX at path with every nn.EmbeddingBag as ``dlrm_deploy::EmbeddingBag``.

    model: any torch module using nn.EmbeddingBag (mode sum or mean, with or without
      per_sample_weights, either include_last_offset; table sizes may be numpy integers), e.g.
      facebookresearch's DLRM_Net or an unsharded TorchRec EmbeddingBagCollection / DLRM, also with
      torchrec.quant EmbeddingBagCollections: their FBGEMM int8/fp16 rows are stored exactly with
      dtype='int8'/'fp16' (a warning says when dtype differs). It is not modified (the export works
      on a copy; its training flags stay as they were).
    example_inputs: a tuple of forward's positional arguments: tensors, lists/tuples/dicts of them,
      TorchRec KeyedJaggedTensors (exported as values, lengths and weights inputs). ONNX inputs follow
      their flattened order. Every dimension stays dynamic where the model allows (the batch, numbers
      of ids; a feature width a Linear fixes becomes fixed); a warning names the inputs when the
      batch or a number of ids was specialised (use a batch >= 2 unlike the other sizes). Pass
      dynamic_shapes (torch.export's form) to choose otherwise.
    dtype: table storage fp32|fp16|bf16|int8|int4 (int8/int4 = row-wise, see ``quantize_int8_rowwise``
      / ``quantize_int4_rowwise``; int4 needs every table's dim divisible by 8); the op's output keeps
      the model's dtype.
    variant, prefetch_distance (lookups), check: op attributes (see docs/op_contract.md).
    table_batching: fuse the tables into one op node per compatible group (packed blob); False
      keeps one node per table.
    split_scales: with dtype='int8', a fused node's blob holds every row's codes first, then every
      row's scale and bias (op attribute ``split_scales=1``; dim a multiple of 8 and at least 64,
      where the GPU reads it faster: docs/benchmarks.md; the CPU reads it slower). False keeps each
      row's codes, scale and bias together (FBGEMM's row form; also what unfused nodes and smaller
      dims keep): the choice for CPU inference.
    hot_rows_from: a sample of ids (see ``profile_hot_rows``: trace path, id tensors or model inputs);
      rows are reordered by descending frequency, ids remapped in the graph, and ``pinned_rows`` hot
      rows per table are marked for L2 (default: the fewest covering ``hot_coverage_target`` of the
      sampled lookups, capped so all tables' pinned rows fit ``l2_budget_bytes`` bytes).
    pinned_rows: hot rows per table (overrides the automatic choice; without hot_rows_from the
      tables are assumed already ordered hottest first).
    opset: default-domain opset; the op's domain is imported at version 1.
    external_data: write initializers to ``<path>.data``; default when they exceed 1 GiB (required
      above 2 GB). Files are written under temporary names beside path and renamed at the end: an
      existing export at path is replaced, a failed export leaves nothing behind.
    validate: run onnx.checker.check_model(full_check=True) on the written file.
    overlap: on ONNX Runtime's CUDA provider, run the lookups on the op's own stream beside the
      dense layers where the graph allows (see export/overlap.py); such a file needs ONNX Runtime
      (TensorRT has no Join plugin).
    fuse_interaction: DLRM's dot interaction (Concat, Reshape, Transpose, MatMul, Reshape, Gather,
      Concat, as facebookresearch's DLRM and ``export.dlrm`` write it) as one
      ``dlrm_deploy::DotInteraction`` node where the graph has that chain (export/interaction.py):
      one kernel instead of four on ONNX Runtime's CUDA provider. ``trt-build`` expands it back
      for TensorRT. False keeps the chain.
    fuse_mlp: every chain of Linear layers (Gemm, optionally followed by Relu or Sigmoid, each
      layer's output used only by the next; DLRM's bottom and top MLPs) as one ``dlrm_deploy::Mlp``
      node (export/mlp.py): one kernel instead of three per layer on ONNX Runtime's CUDA provider.
      ``trt-build`` expands it back for TensorRT. False keeps the Gemm nodes.
    progress: callable taking a message string (e.g. print), or None.
    Returns an ExportInfo.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    seconds = {}
    model, example_inputs, path = _prepare(model, example_inputs, path, dtype=dtype, variant=variant, check=check)
    bags = _checked_bags(model, dtype)
    plans, pinned = _hot_rows(model, bags, hot_rows_from, pinned_rows, dtype, hot_coverage_target,
                              l2_budget_bytes, say)
    if hot_rows_from is not None:
        seconds["profile"] = time.perf_counter() - t0
    proto, held = _swap_and_trace(model, bags, example_inputs, plans, pinned, say, seconds, dtype=dtype, variant=variant,
                            prefetch_distance=prefetch_distance, check=check,
                            trace_options=dict(opset=opset, input_names=input_names, output_names=output_names,
                                               dynamic_shapes=dynamic_shapes))
    table_map, node_bags = _table_map(proto, model, bags, example_inputs, plans)
    options = dict(dtype=dtype, variant=variant, prefetch_distance=prefetch_distance,
                   table_batching=bool(table_batching), check=check, pinned_rows=max(pinned.values(), default=0),
                   overlap=bool(overlap), fuse_interaction=bool(fuse_interaction), fuse_mlp=bool(fuse_mlp),
                   split_scales=bool(split_scales))
    meta = {"dlrm_deploy.tables": dumps(table_map), "dlrm_deploy.export": dumps(options)}
    if external_data is None:
        external_data = sum(tensor_bytes(t) for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    data_name = os.path.basename(path) + ".data" if external_data else None
    with _staged_output(path) as stage:
        groups, op_count = _write(proto, held, os.path.join(stage, os.path.basename(path)), data_name, node_bags, meta,
                                  table_batching=table_batching, validate=validate, overlap=overlap,
                                  fuse_interaction=fuse_interaction, fuse_mlp=fuse_mlp, say=say,
                                  seconds=seconds, split_scales=split_scales)
    seconds["total"] = time.perf_counter() - t0
    info = ExportInfo(path=path, external_data=data_name, tables=_table_infos(bags, plans, pinned, dtype),
                      op_nodes=op_count, groups=groups,
                      weight_bytes=sum(tensor_bytes(t) for t in proto.graph.initializer),
                      pinned_rows=max(pinned.values(), default=0), seconds=seconds)
    say(info.summary())
    return info


def _batch(proto: onnx.ModelProto, held: HeldTables, node_bags: list, writer: ExternalDataWriter | None, say,
           seconds: dict, split_scales: bool = True) -> list[list[str]]:
    """Table batching of the traced model; returns the module names per op node."""
    keep_shared_tables_unpacked(proto)
    say("batching tables into one op node per group ...")
    t = time.perf_counter()
    positions = [i for i, n in enumerate(proto.graph.node) if is_op(n)]
    pos_to_module = {p: node_bags[k][0] for k, p in enumerate(positions)}
    groups = [[pos_to_module[p] for p in g] for g in batch_tables(proto, writer, held, split_scales)]
    seconds["batch"] = time.perf_counter() - t
    return groups


def _write(proto: onnx.ModelProto, held: HeldTables, path: str, data_name: str | None, node_bags: list, meta: dict, *,
           table_batching: bool, validate: bool, overlap: bool, fuse_interaction: bool, fuse_mlp: bool, say,
           seconds: dict, split_scales: bool = True) -> tuple[list[list[str]], int]:
    """Table batching, metadata, saving and checking of the traced model at path (a staging name).
    Returns (module names per op node, number of op nodes)."""
    writer = ExternalDataWriter(os.path.join(os.path.dirname(path), data_name), data_name) if data_name else None
    groups = [[name] for name, _m in node_bags]
    if table_batching and len(node_bags) > 1:
        groups = _batch(proto, held, node_bags, writer, say, seconds, split_scales)
    annotate_outputs(proto)
    if fuse_interaction:
        say(f"fuse_interaction: {fuse_dot_interaction(proto)} dot interaction(s) as one node")
    if fuse_mlp:
        say(f"fuse_mlp: {fuse_linear_chains(proto)} chain(s) of Linear layers as one Mlp node each")
    if overlap:  # after the fusions: it marks the fused bottom MLP to run beside the lookups
        say(f"overlap: {apply_overlap(proto)} op node(s) beside the dense layers")
    proto.producer_name = "dlrm_deploy"
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    if not any(o.domain == C.DOMAIN for o in proto.opset_import):
        proto.opset_import.add(domain=C.DOMAIN, version=C.OP_VERSION)
    weight_bytes = sum(tensor_bytes(t) for t in proto.graph.initializer)
    say(f"saving {os.path.basename(path)} ({weight_bytes / 2**20:.1f} MiB of initializers"
        + (", external data)" if data_name else ")") + " ...")
    t = time.perf_counter()
    write_held(proto, held, writer)  # tables that batching did not pack
    save_model(proto, path, data_name)
    seconds["save"] = time.perf_counter() - t
    if validate:
        t = time.perf_counter()
        say("checking with onnx.checker (full_check) ...")
        onnx.checker.check_model(path, full_check=True)
        seconds["check"] = time.perf_counter() - t
    return groups, len(op_nodes(proto))
