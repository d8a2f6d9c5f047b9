"""Triton model repositories (runtime/triton.py): every config parses with Triton's own schema
(tritonclient's model_config_pb2) and matches the ONNX file, for both backends. CPU only; Triton
itself is not run."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlrm_deploy import contract as C
from dlrm_deploy.runtime import triton as T
from dlrm_deploy.runtime import triton_repo as R

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
REPO = pathlib.Path(__file__).resolve().parent.parent

TABLE_ROWS = [10, 20, 30]
DIM = 4
N_DENSE = 5


def fake_dlrm(path, *, index_type=TensorProto.INT64, include_last_offset=0, external=False,
              per_table=False, dense_type=TensorProto.FLOAT, with_psw=False):
    """An ONNX file with the exported DLRM's structure: dense [B, 5], indices [N], offsets [T*B(+1)]
    into one dlrm_deploy::EmbeddingBag (packed tables as an initializer), output [B, 1]. per_table:
    two EmbeddingBag nodes with their own inputs, the second through a Cast."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("dense", dense_type, ["B", N_DENSE])]
    groups = [TABLE_ROWS[:2], TABLE_ROWS[2:]] if per_table else [TABLE_ROWS]
    emb_outs = []
    for g, rows in enumerate(groups):
        sfx = f"_{g}" if per_table else ""
        w = numpy_helper.from_array(rng.standard_normal((sum(rows), DIM)).astype(np.float32), f"weights{sfx}")
        inits.append(w)
        idx_in = f"indices{sfx}"
        inputs.append(helper.make_tensor_value_info(idx_in, index_type, [f"N{sfx}"]))
        inputs.append(helper.make_tensor_value_info(f"offsets{sfx}", index_type, [f"O{sfx}"]))
        idx = idx_in
        if per_table and g == 1:  # an exporter may cast; the role survives pass-through ops
            nodes.append(helper.make_node("Cast", [idx_in], [idx_in + "_c"], to=index_type))
            idx = idx_in + "_c"
        eb_inputs = [w.name, idx, f"offsets{sfx}"]
        if with_psw:
            inputs.append(helper.make_tensor_value_info(f"psw{sfx}", TensorProto.FLOAT, [f"N{sfx}"]))
            eb_inputs.append(f"psw{sfx}")
        nodes.append(helper.make_node(C.OP_TYPE, eb_inputs, [f"emb{sfx}"], domain=C.DOMAIN,
                                      table_rows=rows, dim=DIM, include_last_offset=include_last_offset))
        emb_outs.append(f"emb{sfx}")
    dense = "dense"
    if dense_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["dense"], ["dense_f"], to=TensorProto.FLOAT))
        dense = "dense_f"
    nodes.append(helper.make_node("Concat", [dense] + emb_outs, ["z"], axis=1))
    width = N_DENSE + len(TABLE_ROWS) * DIM
    inits.append(numpy_helper.from_array(rng.standard_normal((width, 1)).astype(np.float32), "top"))
    nodes.append(helper.make_node("MatMul", ["z", "top"], ["logit"]))
    nodes.append(helper.make_node("Sigmoid", ["logit"], ["prob"]))
    graph = helper.make_graph(nodes, "fake_dlrm", inputs,
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["B", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(C.DOMAIN, 1)])
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=pathlib.Path(path).name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def plain_batchable(path):
    """A model without EmbeddingBag whose inputs and output all start with the batch dim."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def lib(tmp_path):
    """Stand-ins for the built libraries (repository generation only copies them)."""
    d = tmp_path / "lib"
    d.mkdir()
    for n in (T.ORT_LIBRARY, T.TRT_LIBRARY):
        (d / n).write_bytes(b"\x7fELF stand-in")
    (d / "build_info.json").write_text('{"cuda": {"built": true}, "ort": {"built": true, "providers": "CPU + CUDA"}}')
    return d


def parse(model_dir):
    from google.protobuf import text_format

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


# ---- onnxruntime backend ------------------------------------------------------------------------

def test_onnxruntime_repo_matches_model(tmp_path, lib):
    onnx_path = fake_dlrm(tmp_path / "m.onnx")
    md = T.triton_repo(onnx_path, tmp_path / "repo", backend="onnxruntime", name="dlrm",
                       library=lib / T.ORT_LIBRARY, instances=2, gpus=[0, 1], validate=True)
    assert md == tmp_path / "repo" / "dlrm"
    cfg = parse(md)
    assert cfg.name == "dlrm" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        ("dense", "TYPE_FP32", [-1, N_DENSE]), ("indices", "TYPE_INT64", [-1]), ("offsets", "TYPE_INT64", [-1])]
    assert [(o.name, pb.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output] == [("prob", "TYPE_FP32", [-1, 1])]
    (group,) = cfg.instance_group
    assert group.kind == pb.ModelInstanceGroup.KIND_GPU and group.count == 2 and list(group.gpus) == [0, 1]
    (op_lib,) = cfg.model_operations.op_library_filename
    assert op_lib == f"/models/dlrm/{T.ORT_LIBRARY}"  # the container's usual mount point by default
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "cuda" and dict(acc.parameters) == T.DEFAULT_CUDA_OPTIONS
    assert (md / T.ORT_LIBRARY).read_bytes() == (lib / T.ORT_LIBRARY).read_bytes()
    assert (md / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    readme = (md / "README.md").read_text()
    assert "tritonserver --model-repository=" in readme and "--disable-auto-complete-config" in readme
    assert "perf_analyzer -m dlrm" in readme and "max_batch_size: 0" in readme
    T.validate_repo(md)  # against the copy in the repository too


def test_cpu_only_library_refused_for_gpu_instances(tmp_path, lib):
    """A KIND_GPU repository with an op library built without CUDA: a one-line error; KIND_CPU is fine."""
    import json
    import shutil

    cpu = tmp_path / "cpu_lib"
    cpu.mkdir()
    shutil.copy(lib / T.ORT_LIBRARY, cpu / T.ORT_LIBRARY)
    (cpu / "build_info.json").write_text(json.dumps({"cuda": {"built": False, "reason": "no CUDA compiler found"},
                                                      "ort": {"built": True, "providers": "CPU"}}))
    model = fake_dlrm(tmp_path / "m.onnx")
    for backend in ("onnxruntime", "python"):
        with pytest.raises(ValueError, match="built without CUDA .no CUDA compiler found.: a KIND_GPU repository"):
            T.triton_repo(model, tmp_path / f"repo_{backend}", backend=backend, library=cpu / T.ORT_LIBRARY)
    T.triton_repo(model, tmp_path / "repo_cpu", library=cpu / T.ORT_LIBRARY, kind="cpu")
    (cpu / "build_info.json").unlink()  # a library without its build record: a warning, not an error
    with pytest.warns(UserWarning, match="cannot tell whether it has CUDA kernels"):
        T.triton_repo(model, tmp_path / "repo_unknown", library=cpu / T.ORT_LIBRARY)


def test_local_serve_root(tmp_path, lib):
    md = T.triton_repo(fake_dlrm(tmp_path / "m.onnx"), tmp_path / "repo", library=lib / T.ORT_LIBRARY,
                       serve_root=str((tmp_path / "repo").resolve()), kind="cpu")
    (op_lib,) = parse(md).model_operations.op_library_filename
    assert op_lib == str((tmp_path / "repo").resolve() / "dlrm" / T.ORT_LIBRARY)


def test_serve_root_and_cpu_instances(tmp_path, lib):
    md = T.triton_repo(fake_dlrm(tmp_path / "m.onnx"), tmp_path / "repo", library=lib / T.ORT_LIBRARY,
                       serve_root="/models", kind="cpu", name="ctr")
    cfg = parse(md)
    assert list(cfg.model_operations.op_library_filename) == [f"/models/ctr/{T.ORT_LIBRARY}"]
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert not cfg.optimization.HasField("execution_accelerators")
    assert "--model-repository=/models " in (md / "README.md").read_text()


def test_external_data_is_copied(tmp_path, lib):
    src = tmp_path / "src"
    src.mkdir()
    onnx_path = fake_dlrm(src / "big.onnx", external=True)
    assert (src / "big.onnx.data").exists()
    md = T.triton_repo(onnx_path, tmp_path / "repo", library=lib / T.ORT_LIBRARY)
    assert (md / "1" / "big.onnx.data").read_bytes() == (src / "big.onnx.data").read_bytes()
    loaded = onnx.load(str(md / "1" / "model.onnx"))  # external data resolves beside the copy
    assert numpy_helper.to_array(loaded.graph.initializer[0]).shape == (sum(TABLE_ROWS), DIM)


@pytest.mark.parametrize("kw", [dict(index_type=TensorProto.INT32, include_last_offset=1),
                                dict(per_table=True, with_psw=True),
                                dict(dense_type=TensorProto.FLOAT16)])
def test_variants_types_and_roles(tmp_path, lib, kw):
    onnx_path = fake_dlrm(tmp_path / "m.onnx", **kw)
    md = T.triton_repo(onnx_path, tmp_path / "repo", library=lib / T.ORT_LIBRARY)
    cfg = parse(md)
    io = T.describe_onnx(onnx_path)
    assert [i.name for i in cfg.input] == [t.name for t in io.inputs]
    assert [pb.DataType.Name(i.data_type) for i in cfg.input] == [T.triton_dtype(t.elem_type) for t in io.inputs]
    roles = {t.name: t.role for t in io.inputs}
    assert roles["dense"] == "dense"
    assert {r for n, r in roles.items() if n.startswith("indices")} == {"indices"}
    assert {r for n, r in roles.items() if n.startswith("offsets")} == {"offsets"}
    # perf_data.json is a valid request: ids inside each table, offsets table-major
    data = json.loads((md / "perf_data.json").read_text())["data"][0]
    assert set(data) == set(roles)
    ilo = kw.get("include_last_offset", 0)
    for bag_i, bag in enumerate(io.bags):
        idx = next(t for t in io.inputs if t.role == "indices" and t.bag == bag_i)
        off = next(t for t in io.inputs if t.role == "offsets" and t.bag == bag_i)
        ids, offs = np.array(data[idx.name]["content"]), np.array(data[off.name]["content"])
        b = data["dense"]["shape"][0]
        assert len(offs) == len(bag["table_rows"]) * b + ilo
        for t, rows in enumerate(bag["table_rows"]):
            seg = ids[offs[t * b]: (offs[(t + 1) * b] if (t + 1) * b < len(offs) else len(ids))]
            assert seg.min() >= 0 and seg.max() < rows


def test_missing_library_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DLRM_DEPLOY_LIB_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(R, "_find_library", lambda backend: (_ for _ in ()).throw(
        FileNotFoundError("libdlrm_deploy_ort.so not found: was it built? (`make build`)")))
    with pytest.raises(FileNotFoundError, match="make build"):
        T.triton_repo(fake_dlrm(tmp_path / "m.onnx"), tmp_path / "repo")
    with pytest.raises(FileNotFoundError, match="library"):
        T.triton_repo(fake_dlrm(tmp_path / "m.onnx"), tmp_path / "repo2", library=tmp_path / "no.so")


# ---- tensorrt backend ---------------------------------------------------------------------------

def test_tensorrt_repo_without_plan_writes_build_script(tmp_path, lib):
    onnx_path = fake_dlrm(tmp_path / "m.onnx", external=True)
    md = T.triton_repo(onnx_path, tmp_path / "repo", backend="tensorrt", library=lib / T.TRT_LIBRARY,
                       max_batch_size=64, opt_batch_size=32, pooling=2, trtexec_args=["--fp16"], validate=True)
    cfg = parse(md)
    assert cfg.backend == "tensorrt" and cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 0
    assert cfg.default_model_filename == "model.plan" and not cfg.model_operations.op_library_filename
    assert [list(i.dims) for i in cfg.input] == [[-1, N_DENSE], [-1], [-1]]
    assert (md / "1").is_dir() and not (md / "1" / "model.plan").exists()
    assert (md / "onnx" / "model.onnx").exists() and (md / "onnx" / "m.onnx.data").exists()
    script = md / "build_plan.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert f"--staticPlugins=\"$HERE/{T.TRT_LIBRARY}\"" in text and "--fp16" in text
    T3 = len(TABLE_ROWS)
    assert f"--minShapes=dense:1x{N_DENSE},indices:1,offsets:{T3}" in text
    assert f"--optShapes=dense:32x{N_DENSE},indices:{T3 * 32 * 2},offsets:{T3 * 32}" in text
    assert f"--maxShapes=dense:64x{N_DENSE},indices:{T3 * 64 * 2},offsets:{T3 * 64}" in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    readme = (md / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=" in readme and "LD_PRELOAD=" in readme
    assert "build_plan.sh" in readme and "perf_analyzer -m dlrm" in readme


def test_build_script_runs_trtexec_with_those_flags(tmp_path, lib):
    md = T.triton_repo(fake_dlrm(tmp_path / "m.onnx"), tmp_path / "repo", backend="tensorrt",
                       library=lib / T.TRT_LIBRARY, max_batch_size=8)
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\n'
                    'for a; do case $a in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    subprocess.run([str(md / "build_plan.sh"), "--verbose"], check=True, env={**os.environ, "TRTEXEC": str(fake)},
                   capture_output=True)
    args = (tmp_path / "args").read_text().split("\n")
    assert f"--onnx={md}/onnx/model.onnx" in args and "--verbose" in args
    assert (md / "1" / "model.plan").read_text() == "plan\n"
    T.validate_repo(md)


def test_tensorrt_repo_with_plan(tmp_path, lib):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"engine")
    onnx_path = fake_dlrm(tmp_path / "m.onnx")
    md = T.triton_repo(onnx_path, tmp_path / "repo", backend="tensorrt", library=lib / T.TRT_LIBRARY, plan=plan)
    assert (md / "1" / "model.plan").read_bytes() == b"engine"
    assert not (md / "build_plan.sh").exists() and not (md / "onnx").exists()
    assert (md / T.TRT_LIBRARY).exists()
    T.validate_repo(md, onnx_path)


# ---- batching -----------------------------------------------------------------------------------

def test_dynamic_batching_refused_for_ragged_inputs(tmp_path, lib):
    with pytest.raises(ValueError, match="ragged"):
        T.triton_repo(fake_dlrm(tmp_path / "m.onnx"), tmp_path / "repo", library=lib / T.ORT_LIBRARY,
                      batching="dynamic")


def test_batchable_model_gets_dynamic_batching(tmp_path, lib):
    md = T.triton_repo(plain_batchable(tmp_path / "p.onnx"), tmp_path / "repo", library=lib / T.ORT_LIBRARY,
                       max_batch_size=16, preferred_batch_sizes=[4, 8], max_queue_delay_us=50)
    cfg = parse(md)
    assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 50
    assert [list(i.dims) for i in cfg.input] == [[3]] and [list(o.dims) for o in cfg.output] == [[3]]
    data = json.loads((md / "perf_data.json").read_text())["data"][0]
    assert data["x"]["shape"] == [3]
    md2 = T.triton_repo(tmp_path / "p.onnx", tmp_path / "repo", library=lib / T.ORT_LIBRARY, name="p0",
                        batching="none")
    assert parse(md2).max_batch_size == 0 and [list(i.dims) for i in parse(md2).input] == [[-1, 3]]


# ---- validation catches mismatches ---------------------------------------------------------------

@pytest.mark.parametrize("edit,msg", [
    (("TYPE_INT64", "TYPE_INT32"), "data_type"),
    (("dims: [ -1, 5 ]", "dims: [ -1, 6 ]"), "dims"),
    (('name: "offsets"', 'name: "offs"'), "inputs"),
    (("max_batch_size: 0", "max_batch_size: 8"), "max_batch_size"),
    (("kind: KIND_GPU", "kind: KIND_WRONG"), "KIND_WRONG"),
])
def test_validation_catches_mismatch(tmp_path, lib, edit, msg):
    md = T.triton_repo(fake_dlrm(tmp_path / "m.onnx"), tmp_path / "repo", library=lib / T.ORT_LIBRARY)
    cfg = md / "config.pbtxt"
    assert edit[0] in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(edit[0], edit[1], 1))
    with pytest.raises(Exception, match=msg):
        T.validate_repo(md)


def test_dtype_map_covers_triton_types():
    names = set(pb.DataType.keys()) - {"TYPE_INVALID"}
    from dlrm_deploy.runtime.triton_config import _ONNX_TO_TRITON

    mapped = {T.triton_dtype(e) for e in _ONNX_TO_TRITON}
    assert mapped == names
    assert T.triton_dtype(TensorProto.FLOAT) == "TYPE_FP32" and T.triton_dtype(TensorProto.BFLOAT16) == "TYPE_BF16"
    with pytest.raises(ValueError):
        T.triton_dtype(TensorProto.COMPLEX64)


def test_existing_repo_needs_force(tmp_path, lib):
    onnx_path = fake_dlrm(tmp_path / "m.onnx")
    T.triton_repo(onnx_path, tmp_path / "repo", library=lib / T.ORT_LIBRARY)
    with pytest.raises(FileExistsError):
        T.triton_repo(onnx_path, tmp_path / "repo", library=lib / T.ORT_LIBRARY)
    T.triton_repo(onnx_path, tmp_path / "repo", library=lib / T.ORT_LIBRARY, overwrite=True)


# ---- command line and client --------------------------------------------------------------------

def test_cli(tmp_path, lib, capsys):
    from dlrm_deploy.cli import main

    onnx_path = fake_dlrm(tmp_path / "m.onnx")
    rc = main(["triton-repo", str(onnx_path), "--backend", "tensorrt", "--out", str(tmp_path / "repo"),
               "--name", "ctr", "--max-batch-size", "128", "--instances", "2", "--library", str(lib / T.TRT_LIBRARY),
               "--shape", "indices=1:100:1000", "--trtexec-arg=--fp16"])
    assert rc == 0
    assert "ctr/config.pbtxt" in capsys.readouterr().out
    assert "indices:1000" in (tmp_path / "repo" / "ctr" / "build_plan.sh").read_text()
    assert parse(tmp_path / "repo" / "ctr").instance_group[0].count == 2
    rc = main(["triton-repo", str(onnx_path), "--out", str(tmp_path / "repo2"), "--dynamic-batching",
               "--library", str(lib / T.ORT_LIBRARY)])
    assert rc == 2 and "ragged" in capsys.readouterr().err


def test_client_builds_requests_offline(tmp_path):
    pytest.importorskip("tritonclient.http")
    onnx_path = fake_dlrm(tmp_path / "m.onnx", index_type=TensorProto.INT32)
    inputs = T.sample_inputs(onnx_path, batch=4, pooling=1)
    assert inputs["dense"].shape == (4, N_DENSE) and inputs["indices"].dtype == np.int32
    for proto in ("http", "grpc"):
        reqs = T.make_infer_inputs(inputs, proto)
        assert [(r.name(), r.datatype(), r.shape()) for r in reqs] == [
            ("dense", "FP32", [4, N_DENSE]), ("indices", "INT32", [12]), ("offsets", "INT32", [12])]
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "triton_client.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--protocol" in out


def test_repo_from_real_export(tmp_path, lib):
    """The exporter's small DLRM: per-table indices_t / offsets_t inputs (offsets share the batch
    symbol with dense), so the roles come from its metadata; both backends; the sample request
    is valid for the PyTorch model."""
    export = pytest.importorskip("dlrm_deploy.export")
    if not all(hasattr(export, n) for n in ("export_onnx", "DLRM", "make_inputs")):
        pytest.skip("dlrm_deploy.export is not complete yet")
    import torch

    model = export.DLRM("small")
    onnx_path = tmp_path / "dlrm.onnx"
    export.export_onnx(model, export.make_inputs("small", batch=4), onnx_path)
    io = T.describe_onnx(onnx_path)
    rows = export.get_config("small").table_rows
    assert sorted(t.role for t in io.inputs) == sorted(["dense"] + ["indices", "offsets"] * len(rows))
    assert io.batch_dim is None  # ragged lookups: never batched by Triton
    for backend, libname in (("onnxruntime", T.ORT_LIBRARY), ("tensorrt", T.TRT_LIBRARY)):
        md = T.triton_repo(onnx_path, tmp_path / "repo", backend=backend, name=backend, library=lib / libname,
                           max_batch_size=16, validate=True)
        cfg = parse(md)
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        assert [i.name for i in cfg.input] == [t.name for t in io.inputs]
    text = (tmp_path / "repo" / "tensorrt" / "build_plan.sh").read_text()
    assert f"dense:16x{export.get_config('small').num_dense}" in text and "offsets_3:16" in text
    data = json.loads((tmp_path / "repo" / "onnxruntime" / "perf_data.json").read_text())["data"][0]
    arr = {k: torch.tensor(v["content"]).reshape(v["shape"]) for k, v in data.items()}
    n = len(rows)
    with torch.no_grad():  # nn.EmbeddingBag rejects out-of-range ids and bad offsets
        out = model(arr["dense"].float(), [arr[f"indices_{t}"] for t in range(n)], [arr[f"offsets_{t}"] for t in range(n)])
    assert out.shape == (16, 1)


def test_static_shapes(tmp_path, lib):
    """A model exported with fixed shapes: fixed dims in the config, no TensorRT profile."""
    onnx_path = fake_dlrm(tmp_path / "m.onnx")
    m = onnx.load(str(onnx_path))
    b = 4
    fixed = {"dense": [b, N_DENSE], "indices": [len(TABLE_ROWS) * b], "offsets": [len(TABLE_ROWS) * b], "prob": [b, 1]}
    for vi in list(m.graph.input) + list(m.graph.output):
        for d, v in zip(vi.type.tensor_type.shape.dim, fixed[vi.name]):
            d.dim_value = v
    onnx.save(m, str(onnx_path))
    md = T.triton_repo(onnx_path, tmp_path / "repo", backend="tensorrt", library=lib / T.TRT_LIBRARY)
    assert [list(i.dims) for i in parse(md).input] == [[b, N_DENSE], [12], [12]]
    assert "Shapes=" not in (md / "build_plan.sh").read_text()
    assert json.loads((md / "perf_data.json").read_text())["data"][0]["indices"]["shape"] == [12]


def test_with_built_libraries(tmp_path):
    """Where `make build` produced the libraries, triton_repo finds them by itself."""
    onnx_path = fake_dlrm(tmp_path / "m.onnx")
    for backend in ("onnxruntime", "tensorrt"):
        try:
            lib_path = R._find_library(backend)
        except (FileNotFoundError, ImportError) as e:
            pytest.skip(f"library not built: {e}")
        md = T.triton_repo(onnx_path, tmp_path / "repo", backend=backend, name=backend, validate=True)
        assert (md / lib_path.name).stat().st_size == lib_path.stat().st_size
