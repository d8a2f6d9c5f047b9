"""External data: initializers written to a ``.data`` file beside the ``.onnx`` (protobuf cannot hold
a message over 2 GB), and the save that puts the remaining big initializers after them."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of initializers above which weights go to a .data file
# Location of a held table (see HeldTables): the traced proto refers to it, no file holds it yet.
HELD_LOCATION = "dlrm_deploy-held-table"


class HeldTables(dict):
    """The op tables kept out of the traced proto: initializer name -> the exporter's own array of it
    (zero-copy views of the swapped model's tensors) or a function making it (a table converted to
    its storage form only when it is written, one at a time). The proto's initializer for each is an external
    reference to HELD_LOCATION with the right type, dims and length, so nothing holds a second copy of
    the tables: table batching reads the rows from here and streams them packed into the data file,
    and ``write_held`` writes the ones still referenced (unbatched tables) where they end up."""

    def rows(self, t: TensorProto) -> np.ndarray | None:
        """The held table of initializer t as uint8 [rows, row bytes], or None. A held value is an
        array (a view of the model's tensor) or a function making it (a table converted on demand)."""
        a = self.get(t.name) if is_held(t) else None
        if callable(a):
            a = a()
        return None if a is None else a.view(np.uint8).reshape(int(t.dims[0]), -1)


def is_held(t: TensorProto) -> bool:
    """Whether initializer t refers to a held table (see HeldTables)."""
    return t.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == HELD_LOCATION for e in t.external_data)


def write_held(proto: onnx.ModelProto, held: HeldTables, writer: "ExternalDataWriter | None") -> None:
    """Replaces every initializer still referring to a held table by its data: appended to the
    external data file by writer, else inline."""
    inits = proto.graph.initializer
    for k, t in enumerate(inits):
        rows = held.rows(t)
        if rows is None:
            continue
        if writer is not None:
            new = writer.add_parts(t.name, t.data_type, list(t.dims), [rows])
        else:
            new = TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims), raw_data=rows.tobytes())
        inits[k].CopyFrom(new)


class ExternalDataWriter:
    """Writes big initializers straight into the external data file (protobuf cannot hold or copy
    a message over 2 GB, e.g. the paper config's packed fp32 tables) and returns tensors that refer
    to it; ``onnx.save_model(save_as_external_data=True)`` appends the remaining ones after them."""

    ALIGN = 4096  # bytes; page-aligned tensors can be memory-mapped

    def __init__(self, data_path: str, location: str):
        self.data_path = data_path
        self.location = location
        if os.path.exists(data_path):
            os.remove(data_path)  # onnx appends to an existing file

    def add_parts(self, name: str, data_type: int, shape: list[int], parts) -> TensorProto:
        """Appends the bytes of each array in parts (any iterable: a generator keeps one part in
        memory at a time) as one tensor of shape; returns the TensorProto referring to them."""
        length = 0
        with open(self.data_path, "ab") as f:
            offset = f.tell()
            pad = -offset % self.ALIGN
            f.write(b"\0" * pad)
            offset += pad
            for part in parts:
                mv = memoryview(np.ascontiguousarray(part)).cast("B")
                for start in range(0, len(mv), 1 << 28):
                    f.write(mv[start:start + (1 << 28)])
                length += len(mv)
        t = TensorProto(name=name, data_type=data_type, dims=[int(d) for d in shape])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=k, value=v)
        return t


def tensor_bytes(t: TensorProto) -> int:
    """Bytes of an initializer's data, inline or in the external data file."""
    if t.data_location == TensorProto.EXTERNAL:
        return int(next((e.value for e in t.external_data if e.key == "length"), 0))
    return len(t.raw_data)


def save_model(proto: onnx.ModelProto, path: str, data_name: str | None) -> None:
    """Writes proto to path; with data_name, initializers of 1 KiB or more go to that file beside it
    (appended after what the table-batching writer put there)."""
    if data_name is None:
        onnx.save_model(onnx.shape_inference.infer_shapes(proto, strict_mode=False), path)
        return
    data_path = os.path.join(os.path.dirname(path), data_name)
    if not os.path.exists(data_path):
        open(data_path, "wb").close()
    # Marked by hand: onnx.save_model(save_as_external_data=True) refuses a location that exists
    # relative to the *current* folder, e.g. when exporting into it.
    for t in proto.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL and t.HasField("raw_data") and len(t.raw_data) >= 1024:
            external_data_helper.set_external_data(t, data_name)
    onnx.save_model(proto, path)
