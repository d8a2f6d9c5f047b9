"""A DLRM in plain PyTorch (as in facebookresearch/dlrm) and random inputs for it.

Dense features go through the bottom MLP; each sparse feature is pooled by its own
``nn.EmbeddingBag(mode="sum")`` from ``(indices, offsets)``; the bottom-MLP output and the pooled
embeddings interact by pairwise dot products (each pair once, no self-pairs); the top MLP maps the
bottom-MLP output concatenated with those dot products to one logit, then a sigmoid.

The model uses stock ``nn.EmbeddingBag`` modules, so ``export_onnx`` swaps them like in any user model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .index_sources import IndexSource, parse_index_source, read_trace  # noqa: F401 - the package's names


@dataclass(frozen=True)
class DLRMConfig:
    """Shape of a DLRM. Sizes are counts (rows, columns, features), not bytes."""

    name: str
    table_rows: tuple[int, ...]  # rows of each embedding table
    dim: int  # embedding dimension D (= bottom MLP output width)
    num_dense: int  # dense input features
    bottom_mlp: tuple[int, ...]  # widths of the bottom MLP layers; the last must equal dim
    top_mlp: tuple[int, ...]  # widths of the top MLP layers; the last is 1 (the logit)
    pooling: int  # lookups per bag (bag length) of the default inputs
    batch: int  # default batch size (samples)
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def num_tables(self) -> int:
        """Number of embedding tables T."""
        return len(self.table_rows)

    @property
    def num_pairs(self) -> int:
        """Dot-product features of the interaction: (T+1)*T/2 pairs of T+1 vectors."""
        n = self.num_tables + 1
        return n * (n - 1) // 2

    def table_bytes(self, bytes_per_element: float = 4.0) -> int:
        """Bytes of all tables at the given element size (4 = fp32)."""
        return int(sum(self.table_rows) * self.dim * bytes_per_element)


CONFIGS: dict[str, DLRMConfig] = {
    # The MICRO 2024 paper's model: 12 tables x 500K rows x 128, pooling 150, batch 2048.
    "paper": DLRMConfig("paper", (500_000,) * 12, 128, 256, (128, 128), (128, 64, 1), 150, 2048),
    # A CPU-test-sized model with tables of different sizes (exercises per-table row counts).
    "small": DLRMConfig("small", (1000, 2000, 3000, 4000), 16, 13, (32, 16), (32, 16, 1), 8, 32),
}


def get_config(name: str, **overrides) -> DLRMConfig:
    """A named config ("paper", "small"), optionally with fields replaced, e.g. ``dim=64``.

    ``num_tables=N`` and ``rows=R`` are accepted as shorthands for ``table_rows``; changing ``dim``
    also sets the bottom MLP's last width to it.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown config '{name}'; known: {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    rows = list(cfg.table_rows)
    if "num_tables" in overrides:
        n = int(overrides.pop("num_tables"))
        rows = (rows * ((n + len(rows) - 1) // len(rows)))[:n]
    if "rows" in overrides:
        rows = [int(overrides.pop("rows"))] * len(rows)
    overrides.setdefault("table_rows", tuple(rows))
    if "dim" in overrides:
        overrides.setdefault("bottom_mlp", tuple(cfg.bottom_mlp[:-1]) + (int(overrides["dim"]),))
    return dataclasses.replace(cfg, **overrides)


def _mlp(widths: list[int], last_sigmoid: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        # The reference DLRM's initialisation: normal weights scaled by fan-in + fan-out.
        nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / (widths[i] + widths[i + 1])))
        nn.init.normal_(lin.bias, 0.0, math.sqrt(1.0 / widths[i + 1]))
        layers.append(lin)
        last = i == len(widths) - 2
        layers.append(nn.Sigmoid() if (last and last_sigmoid) else nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """DLRM: bottom MLP, one ``nn.EmbeddingBag`` per table, dot interaction, top MLP, sigmoid.

    ``forward(dense, indices, offsets)``: dense is float [B, num_dense]; indices and offsets are
    lists with one 1-D tensor per table (indices: row ids; offsets: B bag starts, or B+1 with
    ``include_last_offset``). Returns the click probability [B, 1].
    """

    def __init__(self, config: DLRMConfig | str = "small", *, include_last_offset: bool = False,
                 seed: int | None = 0):
        super().__init__()
        cfg = get_config(config) if isinstance(config, str) else config
        if cfg.bottom_mlp[-1] != cfg.dim:
            raise ValueError(f"bottom MLP must end at the embedding dim {cfg.dim}, got {cfg.bottom_mlp}")
        self.config = cfg
        gen_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        try:
            self.bottom = _mlp([cfg.num_dense, *cfg.bottom_mlp], last_sigmoid=False)
            self.embeddings = nn.ModuleList()
            for rows in cfg.table_rows:
                eb = nn.EmbeddingBag(rows, cfg.dim, mode="sum", include_last_offset=include_last_offset)
                bound = math.sqrt(1.0 / rows)
                nn.init.uniform_(eb.weight, -bound, bound)
                self.embeddings.append(eb)
            self.top = _mlp([cfg.dim + cfg.num_pairs, *cfg.top_mlp], last_sigmoid=True)
        finally:
            if seed is not None:
                torch.random.set_rng_state(gen_state)
        n = cfg.num_tables + 1
        # Strictly-lower-triangle pairs (i > j) of the (T+1)x(T+1) Gram matrix, flattened: the
        # reference DLRM's order.
        pairs = [i * n + j for i in range(n) for j in range(i)]
        self.register_buffer("pair_index", torch.tensor(pairs, dtype=torch.int64), persistent=False)

    def interact(self, x: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        """Dot interaction: [B, D] and T x [B, D] -> [B, D + num_pairs]."""
        b, d = x.shape
        t = torch.cat([x, *pooled], dim=1).view(b, -1, d)
        z = torch.bmm(t, t.transpose(1, 2)).flatten(1)
        return torch.cat([x, torch.index_select(z, 1, self.pair_index)], dim=1)

    def forward(self, dense: torch.Tensor, indices: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottom(dense)
        pooled = [emb(i, o) for emb, i, o in zip(self.embeddings, indices, offsets)]
        return self.top(self.interact(x, pooled))


# ---------------------------------------------------------------------------------------------
# Inputs


def make_indices(table_rows, batch: int, *, pooling: int | str = 8, source: str = "uniform",
                 seed: int = 0, index_dtype: torch.dtype = torch.int64,
                 include_last_offset: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random bags for each table: (indices list, offsets list), one 1-D tensor per table.

    pooling: lookups per bag (int, fixed), or ``"var:L"`` for lengths uniform in [0, 2L]
    (empty bags included). source: ``uniform``, ``zipf:<alpha>`` or ``trace:<file>``.
    offsets hold B bag starts (B+1 with include_last_offset, the last = number of indices).
    """
    ids_of = IndexSource(source, np.random.default_rng(seed))
    rng = ids_of.rng
    indices, offsets = [], []
    top = torch.iinfo(index_dtype).max if not index_dtype.is_floating_point else 0
    for rows in table_rows:
        if rows - 1 > top:  # an id the dtype cannot hold would wrap around silently
            raise ValueError(f"a table of {rows} rows needs ids wider than {index_dtype}")
        if isinstance(pooling, str):
            if not pooling.startswith("var:"):
                raise ValueError(f"pooling must be an int or 'var:L', got {pooling!r}")
            mean = int(pooling[4:])
            lengths = rng.integers(0, 2 * mean + 1, size=batch)
        else:
            lengths = np.full(batch, int(pooling))
        ids = ids_of.take(int(lengths.sum()), rows)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        if starts[-1] > top:
            raise ValueError(f"{int(starts[-1])} ids in one table need offsets wider than {index_dtype}")
        if not include_last_offset:
            starts = starts[:-1]
        indices.append(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(index_dtype))
        offsets.append(torch.from_numpy(starts.astype(np.int64)).to(index_dtype))
    return indices, offsets


def make_inputs(config: DLRMConfig | str, batch: int | None = None, *, pooling: int | str | None = None,
                source: str = "uniform", seed: int = 0, index_dtype: torch.dtype = torch.int64,
                include_last_offset: bool = False):
    """Random inputs ``(dense, indices, offsets)`` for a DLRM config.

    dense: float32 [batch, num_dense] standard normal; indices/offsets: as ``make_indices`` with the
    config's table rows. batch and pooling default to the config's.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    batch = cfg.batch if batch is None else int(batch)
    pooling = cfg.pooling if pooling is None else pooling
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, cfg.num_dense, generator=gen)
    indices, offsets = make_indices(cfg.table_rows, batch, pooling=pooling, source=source, seed=seed + 1,
                                    index_dtype=index_dtype, include_last_offset=include_last_offset)
    return dense, indices, offsets
