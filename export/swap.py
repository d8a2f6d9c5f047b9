"""Module swap: a copy of a torch model whose ``nn.EmbeddingBag`` modules call our op.

``DeployEmbeddingBag`` holds a table in the op's storage form and calls
``torch.ops.dlrm_deploy.embedding_bag``; ``swap_embedding_bags`` deep-copies a model with every
``nn.EmbeddingBag`` replaced by one (tables converted, optionally frequency-reordered).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dlrm_deploy import contract as C

from .tables import convert_table
from .torchrec_support import STORED_ROWS

def torch_op():
    """The registered torch op (importing the runtime module registers it)."""
    import dlrm_deploy.runtime.torch_op  # noqa: F401

    return torch.ops.dlrm_deploy.embedding_bag


def table_attributes(*, rows: int, dim: int, dtype: str = "fp32", out_dtype: str = "fp32", mode: str = "sum",
                     include_last_offset: bool = False, variant: str = "auto", prefetch_distance: int = 0,
                     pinned_rows: int = 0, check: str = "checked") -> dict:
    """One table's op attributes, validated by the core (ValueError with its message); hot_first
    follows pinned_rows, as in the fused node table batching writes."""
    return C.validate_attributes(dict(
        table_rows=[int(rows)], dim=int(dim), dtype=dtype, out_dtype=out_dtype, mode=mode,
        include_last_offset=int(bool(include_last_offset)), variant=variant,
        prefetch_distance=int(prefetch_distance), pinned_rows=int(pinned_rows),
        hot_first=int(pinned_rows > 0), check=check))


class DeployEmbeddingBag(nn.Module):
    """An ``nn.EmbeddingBag`` replacement calling ``torch.ops.dlrm_deploy.embedding_bag``.

    Holds the table in the op's storage form (``weight``: [rows, dim] fp32/fp16/bf16, or uint8
    [rows, row_bytes] for int8) and, when rows were reordered by frequency, ``remap`` (int64 [rows]:
    old row id -> stored row) applied to the ids before the lookup. forward accepts what
    ``nn.EmbeddingBag.forward`` accepts: 1-D ids with offsets, or 2-D [B, L] ids without offsets.
    """

    def __init__(self, weight: torch.Tensor, *, rows: int, dim: int, dtype: str = "fp32", out_dtype: str = "fp32",
                 mode: str = "sum", include_last_offset: bool = False, variant: str = "auto",
                 prefetch_distance: int = 0, pinned_rows: int = 0, check: str = "checked",
                 remap: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("remap", remap)
        self.attrs = table_attributes(rows=rows, dim=dim, dtype=dtype, out_dtype=out_dtype, mode=mode,
                                      include_last_offset=include_last_offset, variant=variant,
                                      prefetch_distance=prefetch_distance, pinned_rows=pinned_rows, check=check)

    def extra_repr(self) -> str:
        a = self.attrs
        return (f"rows={a['table_rows'][0]}, dim={a['dim']}, dtype={a['dtype']}, mode={a['mode']}, "
                f"variant={a['variant']}, pinned_rows={a['pinned_rows']}, remap={self.remap is not None}")

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        attrs = dict(self.attrs)
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2-D")
            b, length = input.shape
            offsets = torch.arange(0, b * length, length, dtype=input.dtype, device=input.device)
            input = input.reshape(-1)
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.reshape(-1)
            attrs["include_last_offset"] = 0
        elif input.dim() != 1 or offsets is None:
            raise ValueError("input must be 1-D with offsets, or 2-D without")
        if offsets.dtype != input.dtype:
            offsets = offsets.to(input.dtype)
        if self.remap is not None:
            # Out-of-range ids pass through unchanged so that the op rejects them with the user's
            # own value (a plain remap Gather would wrap negative ids around, silently).
            rows = self.remap.shape[0]
            valid = (input >= 0) & (input < rows)
            mapped = torch.index_select(self.remap, 0, input.clamp(0, rows - 1)).to(input.dtype)
            input = torch.where(valid, mapped, input)
            if input.dtype != offsets.dtype:
                input = input.to(offsets.dtype)
        if per_sample_weights is not None and per_sample_weights.dtype != torch.float32:
            per_sample_weights = per_sample_weights.to(torch.float32)
        return torch_op()(self.weight, input, offsets, per_sample_weights, *[attrs[f.name] for f in C.FIELDS])


def embedding_bags(model: nn.Module) -> list[tuple[str, nn.EmbeddingBag]]:
    """(qualified name, module) of every nn.EmbeddingBag in model, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.EmbeddingBag)]


def check_supported(name: str, m: nn.EmbeddingBag) -> None:
    """Raises NotImplementedError, naming the module, for options the op does not implement."""
    if m.mode not in C.MODES:
        raise NotImplementedError(f"{name}: mode='{m.mode}' is not supported (only {C.MODES})")
    if m.max_norm is not None:
        raise NotImplementedError(f"{name}: max_norm is not supported at inference export")
    if m.padding_idx is not None:
        raise NotImplementedError(f"{name}: padding_idx is not supported; drop padding ids from the bags or "
                                  "give them per_sample_weights of 0")


def _placeholder(rows: int, dim: int, dtype: str) -> torch.Tensor:
    """An uninitialised table of the stored shape and type: the allocation stays untouched (so it
    takes address space, not memory) while the exporter traces it."""
    info = C.DTYPE_INFO[dtype]
    return torch.empty(rows, C.row_bytes(dtype, dim) // max(info.elem_bytes, 1), dtype=getattr(torch, info.torch))


def _stored_table(w: torch.Tensor, order, dtype: str) -> torch.Tensor:
    """The table in storage form: rows reordered by order (or as they are), converted to dtype."""
    return convert_table(w[torch.from_numpy(order)] if order is not None else w, dtype)


def swap_embedding_bags(model: nn.Module, *, dtype: str = "fp32", variant: str = "auto", prefetch_distance: int = 0,
                        check: str = "checked", pinned_rows: int | dict = 0,
                        hot_plans: dict | None = None, deferred: dict | None = None) -> nn.Module:
    """A deep copy of model with every nn.EmbeddingBag replaced by a ``DeployEmbeddingBag``.

    dtype: table storage (fp32/fp16/bf16/int8); pinned_rows: hot rows per table (an int for all, or
    {module name: int}); hot_plans: {module name: HotRowPlan} to reorder rows by frequency. The
    output dtype stays the original table's dtype (fp32 for most models). Parameters other than the
    tables are copied; the original model is not modified.
    deferred: for the exporter: a dict that receives, for each table whose storage form would be a
    new tensor (converted or reordered), ``{placeholder.data_ptr(): (module name, placeholder, make)}``;
    the module then holds the uninitialised placeholder and ``make()`` returns the real table, so
    the exporter can convert one table at a time while writing instead of all of them up front.
    """
    hot_plans = hot_plans or {}
    memo = {}
    for name, m in embedding_bags(model):
        check_supported(name, m)
        # Rows already in the storage form (a converted TorchRec quantized table) are kept as they are.
        stored = getattr(m, STORED_ROWS, {}).get(dtype)
        w = m.weight.detach() if stored is None else stored
        plan = hot_plans.get(name)
        order = None if plan is None else plan.order
        remap = None if plan is None else torch.from_numpy(plan.remap)
        p = pinned_rows.get(name, 0) if isinstance(pinned_rows, dict) else int(pinned_rows)
        kw = dict(rows=m.num_embeddings, dim=m.embedding_dim, dtype=dtype,
                  out_dtype=C.dtype_of_torch(m.weight.dtype, "fp32"), mode=m.mode,
                  include_last_offset=m.include_last_offset, variant=variant, prefetch_distance=prefetch_distance,
                  pinned_rows=p, check=check)
        try:  # before converting the table: the core's message, named after the module
            table_attributes(**kw)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if stored is not None:
            table = (w[torch.from_numpy(order)] if order is not None else w).contiguous()
        elif deferred is not None and m.num_embeddings > 0 and (order is not None or w.dtype != getattr(torch, C.DTYPE_INFO[dtype].torch)
                                       or not w.is_contiguous()):
            table = _placeholder(m.num_embeddings, m.embedding_dim, dtype)
            deferred[table.data_ptr()] = (name, table, lambda w=w, order=order: _stored_table(w, order, dtype))
        else:
            table = _stored_table(w, order, dtype)
        memo[id(m)] = DeployEmbeddingBag(table, remap=remap, **kw)
    # deepcopy with the replacements pre-seeded in the memo puts them wherever the originals were
    # referenced (ModuleList, attributes, shared modules) without copying the original tables.
    return copy.deepcopy(model, memo)
