"""The op contract, written once: domain, op type, inputs, outputs and attributes of the
table-batched EmbeddingBag op.

Everything else derives from this module: ``scripts/gen_contract.py`` writes the C field table the
core library exposes through ``dd_fields()`` (which the ONNX Runtime op and the TensorRT plugin
iterate over) and the Markdown table in ``docs/op_contract.md``; the exporter and the ONNX shape
inference read it directly. A test checks that the generated files are current.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAIN = "dlrm_deploy"
OP_TYPE = "EmbeddingBag"
OP_VERSION = 1

INT, STRING, INTS = 0, 1, 2

DTYPES = ("fp32", "fp16", "bf16", "int8")
OUT_DTYPES = ("fp32", "fp16", "bf16")
MODES = ("sum", "mean")
VARIANTS = ("auto", "baseline", "occupancy", "prefetch", "l2pin", "combined")
CHECKS = ("unchecked", "checked", "deferred")
INDEX_TYPES = ("int32", "int64")


@dataclass(frozen=True)
class Field:
    """One attribute of the op (ONNX attribute = TensorRT plugin field = config member)."""

    name: str
    kind: int  # INT, STRING or INTS
    default: str  # as text; "" means required
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("table_rows", INTS, "", "rows of each table, in table order; its length is the number of tables T"),
    Field("dim", INT, "", "embedding dimension D of every table (columns)"),
    Field("dtype", STRING, "fp32", "table storage: " + "|".join(DTYPES) + " (int8 = row-wise, fp32 scale and bias per row)"),
    Field("out_dtype", STRING, "fp32", "output element type: " + "|".join(OUT_DTYPES)),
    Field("mode", STRING, "sum", "pooling: " + "|".join(MODES)),
    Field("include_last_offset", INT, "0", "1: each table's offsets end with the end of its last bag (B+1 entries; packed form: T*B+1)"),
    Field("variant", STRING, "auto", "kernel: " + "|".join(VARIANTS)),
    Field("prefetch_distance", INT, "0", "lookups in flight per thread for prefetch/combined (0 = default)"),
    Field("pinned_rows", INT, "0", "hot rows per table kept in L2 (a prefix after frequency reordering)"),
    Field("hot_first", INT, "0", "1: every table's hot prefix is stored first in the packed weights"),
    Field("check", STRING, "checked", "bounds checking: " + "|".join(CHECKS)),
    Field("overlap", INT, "0", "1: on the CUDA provider the lookups run on the op's own stream, concurrently with the "
          "graph's other nodes, until the dlrm_deploy::Join node that reads the output (ONNX Runtime only)"),
)

FIELD_BY_NAME = {f.name: f for f in FIELDS}

# Inputs and outputs, in order (name, element types, doc). Two forms of the lookups: per-table
# (what the exporter writes; T = 1 is both forms) and packed (FBGEMM-style concatenation).
INPUTS = (
    ("weights", "float|float16|bfloat16|uint8", "packed tables: [total_rows, D], or [total_rows, row_bytes] uint8 for int8"),
    ("indices", "int32|int64", "per-table form: table 0's [N_0] ids; packed form: [N] ids of every table, table-major"),
    ("lookups", "variadic: int32|int64 (as indices), then float",
     "per-table form: indices of tables 1..T-1, offsets of tables 0..T-1 ([B], or [B+1] with include_last_offset), "
     "optionally per_sample_weights of tables 0..T-1 ([N_t] each); packed form: offsets [T*B] or [T*B+1], "
     "optionally per_sample_weights [N]"),
)
# The companion op of overlap=1: Concat along `axis` of its inputs with the overlapped EmbeddingBag
# output (its first input) placed at `position`, after the op's stream has finished.
JOIN_OP_TYPE = "Join"
JOIN_INPUTS = (("lookups", "float|float16|bfloat16", "the output of an EmbeddingBag node with overlap=1"),
               ("others", "variadic, the same type", "the other tensors of the concatenation, in order"))
OUTPUTS = (("output", "float|float16|bfloat16 (out_dtype)", "[B, T*D] pooled bags, table t in columns t*D..t*D+D-1"),)


def int8_row_bytes(dim: int) -> int:
    """Bytes of one int8 row-wise row: dim codes + fp32 scale + fp32 bias, padded to 16 bytes."""
    return (dim + 8 + 15) // 16 * 16


def validate_attributes(attrs: dict) -> dict:
    """Returns attrs with defaults filled in; raises ValueError naming the bad attribute."""
    out = {}
    for f in FIELDS:
        if f.name in attrs:
            v = attrs[f.name]
        elif f.default == "":
            raise ValueError(f"attribute '{f.name}' is required ({f.doc})")
        else:
            v = int(f.default) if f.kind == INT else f.default
        if f.kind == INTS:
            v = [int(x) for x in v]
        elif f.kind == INT:
            v = int(v)
        else:
            v = str(v)
        out[f.name] = v
    unknown = set(attrs) - set(FIELD_BY_NAME)
    if unknown:
        raise ValueError(f"unknown attribute(s) {sorted(unknown)}; known: {[f.name for f in FIELDS]}")
    choices = {"dtype": DTYPES, "out_dtype": OUT_DTYPES, "mode": MODES, "variant": VARIANTS, "check": CHECKS}
    for name, allowed in choices.items():
        if out[name] not in allowed:
            raise ValueError(f"attribute '{name}'='{out[name]}' is not one of {allowed}")
    if not out["table_rows"] or any(r <= 0 for r in out["table_rows"]):
        raise ValueError("attribute 'table_rows' must list at least one positive row count")
    if out["dim"] <= 0:
        raise ValueError("attribute 'dim' must be positive")
    return out
