"""The op contract, written once: domain, op type, inputs, outputs and attributes of the
table-batched EmbeddingBag op.

Everything else derives from this module: ``scripts/gen_contract.py`` writes the public C header
``cpp/include/dlrm_deploy/contract.h`` (enums, ``dd_config``, ranges), the core's field table
``cpp/src/contract_fields.inc`` (names, kinds, defaults, ranges, offsets, name tables), the ctypes
mirror ``runtime/_contract_ctypes.py`` and the Markdown tables of ``docs/op_contract.md``; the
exporter and the ONNX shape inference read it directly. A test checks that the generated files are
current. Validation itself lives once, in the core (``dd_config_set_*``, ``dd_config_validate``):
Python calls it through ``dlrm_deploy.runtime._core``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

DOMAIN = "dlrm_deploy"
OP_TYPE = "EmbeddingBag"
OP_VERSION = 1

INT, STRING, INTS = 0, 1, 2  # field kinds (DD_KIND_INT, DD_KIND_STRING, DD_KIND_INTS)

MAX_TABLES = 256  # T of one node
MSG_LEN = 512  # bytes of the core's error messages


@dataclass(frozen=True)
class DtypeInfo:
    """One table storage type and what every layer calls it.

    onnx: ONNX TensorProto element type of the stored weights (int8 rows are uint8 bytes);
    onnx_type: ONNX Runtime's type string of that element type; torch / numpy: the dtype
    attribute names (bf16 has no numpy type: its bits travel as uint16); elem_bytes: bytes per
    element, 0 for the row-wise int8/int4 rows (see ``row_bytes``); output: may also be ``out_dtype``.
    """

    name: str
    enum: int  # dd_dtype
    onnx: int
    onnx_type: str
    torch: str
    numpy: str
    elem_bytes: int
    output: bool


DTYPE_INFO: dict[str, DtypeInfo] = {d.name: d for d in (
    DtypeInfo("fp32", 0, 1, "tensor(float)", "float32", "float32", 4, True),
    DtypeInfo("fp16", 1, 10, "tensor(float16)", "float16", "float16", 2, True),
    DtypeInfo("bf16", 2, 16, "tensor(bfloat16)", "bfloat16", "uint16", 2, True),
    DtypeInfo("int8", 3, 2, "tensor(uint8)", "uint8", "uint8", 0, False),
    DtypeInfo("int4", 4, 2, "tensor(uint8)", "uint8", "uint8", 0, False),
)}
# Row-wise quantized dtypes: rows of codes with an fp32 scale and bias each (row_bytes), stored as uint8.
ROWWISE = ("int8", "int4")
# dim of a row-wise table must be a multiple of this: int8 keeps the scale 4-byte aligned behind the
# dim codes; int4 packs 8 codes per 32-bit word (dim/2 bytes, again a multiple of 4).
ROWWISE_DIM_MULTIPLE = {"int8": 4, "int4": 8}

DTYPES = tuple(DTYPE_INFO)
OUT_DTYPES = tuple(d for d, i in DTYPE_INFO.items() if i.output)
MODES = ("sum", "mean")
VARIANTS = ("auto", "baseline", "occupancy", "prefetch", "l2pin", "combined")
CHECKS = ("unchecked", "checked", "deferred")
INDEX_TYPES = ("int32", "int64")

# The enums of the C ABI, in value order, with what each value means (the generated header's comments).
ENUMS = {
    "dtype": ("dd_dtype", "DD_", (("fp32", ""), ("fp16", ""), ("bf16", ""), ("int8", "row-wise: codes, fp32 scale and bias"),
                                 ("int4", "row-wise: 4-bit codes, two per byte, fp32 scale and bias"))),
    "mode": ("dd_mode", "DD_", (("sum", ""), ("mean", "an empty bag gives zeros"))),
    "index_type": ("dd_index_type", "DD_", (("int32", ""), ("int64", ""))),
    "variant": ("dd_variant", "DD_", (
        ("auto", "fastest correct kernel for GPU, dtype and shape"),
        ("baseline", "PyTorch's EmbeddingBag forward structure: thread per feature, 32x8 blocks"),
        ("occupancy", "baseline with the per-architecture register cap"),
        ("prefetch", "baseline with register prefetch of the next prefetch_distance lookups"),
        ("l2pin", "baseline with hot rows kept in L2"),
        ("combined", "occupancy + prefetch + l2pin"))),
    "check": ("dd_check", "DD_", (("unchecked", ""), ("checked", ""), ("deferred", ""))),
}
assert tuple(n for n, _ in ENUMS["dtype"][2]) == DTYPES
assert tuple(n for n, _ in ENUMS["variant"][2]) == VARIANTS
# The string attributes and the names they accept (a prefix of the enum's names for out_dtype).
CHOICES = {"dtype": DTYPES, "out_dtype": OUT_DTYPES, "mode": MODES, "variant": VARIANTS, "check": CHECKS}
# Variants that keep hot rows in persisting L2 (when pinned_rows > 0).
L2_VARIANTS = ("auto", "l2pin", "combined")
# prefetch_distance values the prefetch kernels are compiled for (0 = the variant's default, 8).
PREFETCH_DISTANCES = (0, 4, 8, 16)


@dataclass(frozen=True)
class Field:
    """One attribute of the op (ONNX attribute = TensorRT plugin field = config member)."""

    name: str
    kind: int  # INT, STRING or INTS
    default: str  # as text; "" means required
    doc: str
    range: tuple[int, int] | None = None  # INT: inclusive bounds; INTS: bounds of each entry
    values: tuple[int, ...] | None = None  # INT: the only values accepted, when not every one in range


# The members of dd_config in order (name, C type, count; count > 1 is an array). The attributes
# set the members of the same name; index_type comes from the indices' element type and
# num_tables from the length of table_rows.
CONFIG_MEMBERS = (
    ("num_tables", "int32_t", 1, "T, 1..DD_MAX_TABLES"),
    ("dim", "int32_t", 1, "D, embedding columns of every table"),
    ("table_rows", "int64_t", MAX_TABLES, "rows of each table"),
    ("dtype", "int32_t", 1, "dd_dtype of the table storage"),
    ("out_dtype", "int32_t", 1, "DD_FP32, DD_FP16 or DD_BF16"),
    ("mode", "int32_t", 1, "dd_mode"),
    ("index_type", "int32_t", 1, "dd_index_type of indices and offsets"),
    ("include_last_offset", "int32_t", 1, "1: offsets has T*B+1 entries"),
    ("variant", "int32_t", 1, "dd_variant"),
    ("prefetch_distance", "int32_t", 1, "lookups in flight per thread; 0 = the variant's default"),
    ("pinned_rows", "int64_t", 1, "hottest rows per table (a hot prefix after reordering)"),
    ("hot_first", "int32_t", 1, "1: all tables' hot prefixes stored first (see below)"),
    ("check", "int32_t", 1, "dd_check"),
    ("overlap", "int32_t", 1, "1, 2: the adapter runs the lookups on a stream of its own (2: launched by the joining node)"),
    ("split_scales", "int32_t", 1, "1: int8 codes of every row first, then every row's scale and bias (see below)"),
)


FIELDS: tuple[Field, ...] = (
    Field("table_rows", INTS, "", "rows of each table, in table order; its length is the number of tables T",
          (1, 2**63 - 1)),
    Field("dim", INT, "", "embedding dimension D of every table (columns); int8: a multiple of 4, int4: of 8", (1, 1 << 20)),
    Field("dtype", STRING, "fp32", "table storage: " + "|".join(DTYPES) + " (int8/int4 = row-wise, fp32 scale and bias per row)"),
    Field("out_dtype", STRING, "fp32", "output element type: " + "|".join(OUT_DTYPES)),
    Field("mode", STRING, "sum", "pooling: " + "|".join(MODES)),
    Field("include_last_offset", INT, "0", "1: each table's offsets end with the end of its last bag (B+1 entries; packed form: T*B+1)",
          (0, 1)),
    Field("variant", STRING, "auto", "kernel: " + "|".join(VARIANTS)),
    Field("prefetch_distance", INT, "0", "lookups in flight per thread for prefetch/combined: "
          + "|".join(map(str, PREFETCH_DISTANCES)) + " (0 = default)", (0, max(PREFETCH_DISTANCES)), PREFETCH_DISTANCES),
    Field("pinned_rows", INT, "0", "hot rows per table kept in L2 (a prefix after frequency reordering); "
          "with hot_first at most every table's rows", (0, 2**63 - 1)),
    Field("hot_first", INT, "0", "1: every table's hot prefix is stored first in the packed weights", (0, 1)),
    Field("check", STRING, "checked", "bounds checking: " + "|".join(CHECKS)),
    Field("overlap", INT, "0", "1: on the CUDA provider the lookups run on the op's own stream, concurrently with the "
          "graph's other nodes, until the dlrm_deploy::Join node that reads the output (ONNX Runtime only); 2: the "
          "same, with the lookups launched when that node runs (after the nodes before it, e.g. a bottom MLP with "
          "beside=1, were launched)", (0, 2)),
    Field("split_scales", INT, "0", "int8 only, dim a multiple of 8: 1 = weights [total_rows, dim + 8] hold every row's "
          "codes first (row r at byte r*dim), then every row's fp32 scale and bias (at total_rows*dim + 8r), so a "
          "row's codes are whole 32-byte sectors; 0 = each row's codes, scale, bias and padding together", (0, 1)),
)

FIELD_BY_NAME = {f.name: f for f in FIELDS}

# Inputs and outputs, in order (name, element types, doc). Two forms of the lookups: per-table
# (what the exporter writes; T = 1 is both forms) and packed (FBGEMM-style concatenation).
INPUTS = (
    ("weights", "float|float16|bfloat16|uint8", "packed tables: [total_rows, D], or [total_rows, row_bytes] uint8 for int8/int4"),
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
# DLRM's dot interaction in one node (export's fuse_interaction pass, export/interaction.py):
# output row b = [input `prefix`'s row b (prefix >= 0)] + [dot(v_i, v_j) for (i, j) = divmod(p, n),
# p in pairs], v_0..v_{n-1} the dim-wide vectors of the inputs' rows side by side.
INTERACTION_OP_TYPE = "DotInteraction"
INTERACTION_INPUTS = (("parts", "variadic float", "[B, k_i * dim] each: the vectors of every sample, side by side"),)
INTERACTION_ATTRIBUTES = (("dim", "int", "floats per vector"),
                          ("pairs", "ints", "flat indices i * n + j of the dot products kept, in output order"),
                          ("prefix", "int", "the input copied in front of the dots, or -1 (default)"))
# A chain of Linear layers in one node (export's fuse_mlp pass, export/mlp.py):
# Y = act_L(... act_1(X W_1^T + b_1) ...), fp32 accumulation; W_i in nn.Linear's [out, in] layout.
MLP_OP_TYPE = "Mlp"
MLP_INPUTS = (("inputs", "variadic float",
               "X [B, K0], then W_i [N_i, K_i] and b_i [N_i] of every layer i = 1..L (K_1 = K0, K_i+1 = N_i)"),)
MLP_ACTIVATIONS = {"none": 0, "relu": 1, "sigmoid": 2}
MLP_ATTRIBUTES = (("activations", "ints", "one code per layer: "
                   + ", ".join(f"{v} = {k}" for k, v in MLP_ACTIVATIONS.items())),
                  ("beside", "int", "0 (default) or 1: the chain runs beside the lookups (export's overlap marks the "
                   "bottom MLP); on the CUDA provider its blocks then hold a quarter of the SMs, each looping over "
                   "groups of 16 rows, and the lookups take the rest (small batches: the usual grid). Same output"))
MLP_MAX_WIDTH = 4096  # every width (K0 and each N_i) of a node
MLP_MAX_LAYERS = 16  # L of a node (DD_MLP_MAX_LAYERS, cpp/include/dlrm_deploy/mlp.h)
OUTPUTS = (("output", "float|float16|bfloat16 (out_dtype)", "[B, T*D] pooled bags, table t in columns t*D..t*D+D-1"),)


def int8_row_bytes(dim: int) -> int:
    """Bytes of one int8 row-wise row: dim codes + fp32 scale + fp32 bias, padded to 16 bytes."""
    return (dim + 8 + 15) // 16 * 16


def int4_row_bytes(dim: int) -> int:
    """Bytes of one int4 row-wise row: dim/2 bytes of codes (two per byte, the even column in the low
    nibble) + fp32 scale + fp32 bias, padded to 16 bytes."""
    return (dim // 2 + 8 + 15) // 16 * 16


def row_bytes(dtype: str, dim: int, split_scales: bool = False) -> int:
    """Bytes of one stored row of a ``dim``-wide table in ``dtype`` (a DTYPE_INFO key): the weights'
    second dim (int8 with split_scales: dim + 8, the codes and the scale and bias stored apart)."""
    info = DTYPE_INFO[dtype]
    if info.elem_bytes:
        return info.elem_bytes * dim
    if split_scales and dtype == "int8":
        return dim + 8
    return int4_row_bytes(dim) if dtype == "int4" else int8_row_bytes(dim)


def dtype_of_torch(torch_dtype, default: str | None = None) -> str | None:
    """The contract name of a float torch dtype that can be an output type (``torch.float16`` ->
    "fp16"); default for any other."""
    name = str(torch_dtype).rsplit(".", 1)[-1]
    return next((d for d, i in DTYPE_INFO.items() if i.output and i.torch == name), default)


def validate_attributes(attrs: dict) -> dict:
    """Returns attrs with defaults filled in and values as their kinds (int, str, list of int).

    Raises ValueError naming the bad attribute: unknown or missing names here, every value through
    the core's own validator (``dd_config_set_*`` and ``dd_config_validate``), so the message is
    the one ONNX Runtime and TensorRT give when they load the node.
    """
    unknown = set(attrs) - set(FIELD_BY_NAME)
    if unknown:
        raise ValueError(f"unknown attribute(s) {sorted(unknown)}; known: {[f.name for f in FIELDS]}")
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
    _core_validate(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in out.items()))
    return out


@functools.lru_cache(maxsize=4096)
def _core_validate(items: tuple) -> None:
    """The core's verdict on one attribute set (cached: the torch op validates on every call)."""
    from dlrm_deploy.runtime import _core

    try:
        _core.make_config(dict(items))
    except _core.CoreError as e:
        raise ValueError(str(e)) from None
