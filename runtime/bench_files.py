"""The end-to-end benchmark's ONNX files beside our export: the model exported by torch.onnx
without our op (the stock row), and copies of our export with other op attributes."""

from __future__ import annotations

from dlrm_deploy import contract as C


def export_stock(model, example, path: str) -> None:
    """The model exported by torch.onnx without our op (dynamic batch and bag lengths)."""
    import logging
    import warnings

    import torch

    auto = torch.export.Dim.AUTO
    ds = torch.utils._pytree.tree_map(lambda t: {0: auto}, tuple(example))
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(model, tuple(example), dynamo=True, dynamic_shapes=ds, opset_version=18,
                                     verbose=False)
            prog.save(path, external_data=True)
    finally:
        quiet.setLevel(level)


def with_variant(src: str, dst: str, variant: str, prefetch_distance: int | None = None,
                 check: str | None = None, overlap: bool = False, fuse: bool | None = None,
                 fuse_mlp: bool | None = None) -> None:
    """Copies the ONNX file src to dst with every op node's variant (and prefetch distance, bounds
    check mode) set, with overlap the lookups beside the dense layers (export's overlap pass), with
    fuse=True the dot interaction as one node (export's fuse_interaction pass; ValueError where the
    model has none) and with fuse=False as standard ops, likewise fuse_mlp for the Linear chains
    (export's fuse_mlp pass; None, the default, leaves them as src has them); external data stays
    where it is (dst must be in src's folder)."""
    import onnx

    from dlrm_deploy.export.interaction import OP_TYPE, fuse_interaction, unfuse_interaction
    from dlrm_deploy.export.mlp import OP_TYPE as MLP_OP_TYPE
    from dlrm_deploy.export.mlp import fuse_mlp as fuse_linear_chains
    from dlrm_deploy.export.mlp import unfuse_mlp
    from dlrm_deploy.export.overlap import apply_overlap

    m = onnx.load(src, load_external_data=False)
    for n in m.graph.node:
        if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE:
            for a in n.attribute:
                if a.name == "variant":
                    a.s = variant.encode()
                elif a.name == "prefetch_distance" and prefetch_distance is not None:
                    a.i = int(prefetch_distance)
            if check is not None:
                for a in [a for a in n.attribute if a.name == "check"]:
                    n.attribute.remove(a)
                n.attribute.append(onnx.helper.make_attribute("check", check))
    if fuse is False:
        unfuse_interaction(m)
    if overlap:
        apply_overlap(m)
    if fuse and not fuse_interaction(m) and not any(n.op_type == OP_TYPE for n in m.graph.node):
        raise ValueError(f"{src}: no dot interaction to fuse")
    if fuse_mlp is False:
        unfuse_mlp(m)
    elif fuse_mlp and not fuse_linear_chains(m) and not any(n.op_type == MLP_OP_TYPE for n in m.graph.node):
        raise ValueError(f"{src}: no chain of Linear layers to fuse")
    onnx.save(m, dst)


# ------------------------------------------------------------------------------------------------
# Child processes: our export (its own peak memory) and the stock row (under a wall-clock budget)
