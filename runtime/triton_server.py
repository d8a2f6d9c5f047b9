"""A real Triton Inference Server for local development and tests (``dlrm-deploy triton-serve``).

The server is the ``tritonserver`` binary inside the ``nvidia-pytriton`` wheel (0.7.0: Triton 2.51
with only the python backend; our native backend ``dlrm_deploy`` is linked in beside it where it
was built), installed without its dependencies
(``pip install --no-deps nvidia-pytriton==0.7.0``: they would pin numpy < 2 in this environment).
The python backend's stub is an embedded Python that needs:

- the stub binary for this Python version, copied into a backend folder of our own
  (``<workdir>/backends/python/``, beside links to the wheel's backend library and utilities);
- ``LD_LIBRARY_PATH`` with libpython's folder and the wheel's ``nvidia_pytriton.libs``;
- numpy < 2 (numpy 2 makes it return empty outputs) and onnxruntime. The stub's interpreter ignores
  ``PYTHONPATH``; it finds its executable by searching ``PATH`` for ``python3``, so ``<workdir>/bin``
  comes first on the server's ``PATH`` with a ``python3`` link and a ``python3._pth`` file beside it,
  which sets the stub's module path exactly: the standard library, the *stub environment* (a folder
  holding numpy < 2: ``python -m pip install --target <dir> "numpy<2"``), this process's PYTHONPATH
  and this environment's site-packages (onnxruntime).

Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request

from .triton_config import NATIVE_BACKEND

PYTRITON_SPEC = "nvidia-pytriton==0.7.0"
STUB_ENV_VAR = "DLRM_DEPLOY_TRITON_STUB_ENV"
PROFILE_VAR = "DLRM_DEPLOY_TRITON_PROFILE"  # read by model.py: a folder for its per-execute timing log


def default_stub_env() -> pathlib.Path:
    """Where the stub environment is looked for: $DLRM_DEPLOY_TRITON_STUB_ENV, else
    ``<this environment's prefix>/triton-stub-env`` (what ``make venv`` creates)."""
    return pathlib.Path(os.environ.get(STUB_ENV_VAR) or pathlib.Path(sys.prefix) / "triton-stub-env")


@dataclasses.dataclass
class TritonInstall:
    """Paths inside the installed nvidia-pytriton wheel."""

    server: pathlib.Path  # tritonserver binary
    python_backend: pathlib.Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stub: pathlib.Path  # triton_python_backend_stub for this Python version
    libs: pathlib.Path  # nvidia_pytriton.libs (libtritonserver and its dependencies)


def find_install() -> TritonInstall:
    """Locates tritonserver in the installed nvidia-pytriton (without importing pytriton, whose
    dependencies are not installed). ImportError with the install command when it is missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"nvidia-pytriton is not installed: `pip install --no-deps {PYTRITON_SPEC}` "
                          "(it ships tritonserver with the python backend)")
    root = pathlib.Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    inst = TritonInstall(root / "bin" / "tritonserver", root / "backends" / "python",
                         root / "python_backend_stubs" / ver / "triton_python_backend_stub",
                         root.parent.parent / "nvidia_pytriton.libs")
    for what, p in (("tritonserver", inst.server), ("python backend", inst.python_backend / "libtriton_python.so"),
                    (f"python {ver} backend stub", inst.stub), ("server libraries", inst.libs)):
        if not p.exists():
            raise ImportError(f"nvidia-pytriton is incomplete: no {what} at {p} (reinstall {PYTRITON_SPEC})")
    if not os.access(inst.server, os.X_OK):
        inst.server.chmod(inst.server.stat().st_mode | 0o111)
    return inst


def check_stub_env(path: pathlib.Path) -> pathlib.Path:
    """The stub environment folder if it holds numpy < 2; FileNotFoundError / ValueError saying how
    to make it otherwise."""
    make = f'{sys.executable} -m pip install --target {path} "numpy<2"'
    dists = sorted(path.glob("numpy-*.dist-info")) if path.is_dir() else []
    if not dists:
        raise FileNotFoundError(f"no python-backend stub environment (numpy<2) at {path}: create it with `{make}` "
                                f"or pass --stub-env / set {STUB_ENV_VAR}")
    version = dists[0].name.split("-")[1]
    if int(version.split(".")[0]) >= 2:
        raise ValueError(f"the stub environment {path} has numpy {version}; the python backend needs numpy<2 ({make})")
    return path


def _module_path(stub_env: pathlib.Path) -> list[str]:
    """The stub's sys.path: standard library, stub environment (numpy<2 first), this process's
    PYTHONPATH entries, this environment's site-packages."""
    base = {k: sys.base_prefix for k in ("base", "platbase", "installed_base", "installed_platbase")}
    std = sysconfig.get_paths(vars=base)
    here = sysconfig.get_paths()
    zipped = pathlib.Path(sysconfig.get_config_var("LIBDIR") or "") / f"python{sys.version_info.major}{sys.version_info.minor}.zip"
    from_env = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]  # e.g. a staged onnxruntime-gpu
    paths = [str(zipped), std["stdlib"], str(pathlib.Path(std["platstdlib"]) / "lib-dynload"), str(stub_env),
             *from_env, here["purelib"], here["platlib"]]
    return list(dict.fromkeys(paths))


def native_backend_library() -> pathlib.Path | None:
    """Our Triton backend (libtriton_dlrm_deploy.so) where it was built, else None."""
    from dlrm_deploy.libraries import library_path

    try:
        return pathlib.Path(library_path("triton")).resolve()  # the link in the work folder must be absolute
    except FileNotFoundError:
        return None


def repo_backends(repo: pathlib.Path) -> set[str]:
    """The backends the repository's configs name (``backend: "..."`` lines of */config.pbtxt)."""
    names = set()
    for cfg in repo.glob("*/config.pbtxt"):
        for line in cfg.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "backend":
                names.add(value.strip().strip('"'))
    return names


def prepare_workdir(workdir: pathlib.Path, inst: TritonInstall, stub_env: pathlib.Path | None) -> dict[str, str]:
    """Writes the backend folders (python, with the stub's interpreter path file, where a stub
    environment is given; dlrm_deploy, our backend, where it was built) into `workdir`; returns the
    server's environment."""
    native = native_backend_library()
    if native is not None:
        folder = workdir / "backends" / NATIVE_BACKEND
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / native.name).exists():
            (folder / native.name).symlink_to(native)
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(inst.libs), env.get("LD_LIBRARY_PATH")) if p)
    if stub_env is None:
        return env
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for f in inst.python_backend.iterdir():
        if f.is_file() and not (backend / f.name).exists():
            (backend / f.name).symlink_to(f)
    shutil.copy2(inst.stub, backend / inst.stub.name)
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "python3").exists():
        (bindir / "python3").symlink_to(sys.executable)
    (bindir / "python3._pth").write_text("\n".join(_module_path(stub_env)) + "\n")
    env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver serving `repo` on 127.0.0.1; a context manager that always stops it.

    Ports 0 pick free ones. ``start()`` waits until the server reports ready (``timeout_s``) and
    raises RuntimeError with the server's error lines if it exits or does not get ready."""

    def __init__(self, repo, *, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 stub_env=None, log_path=None, timeout_s: float = 120.0, extra_args: list[str] | None = None,
                 profile_dir=None):
        self.repo = pathlib.Path(repo).resolve()
        if not self.repo.is_dir():
            raise FileNotFoundError(f"model repository {repo} not found")
        self.ports = {k: p or free_port() for k, p in (("http", http_port), ("grpc", grpc_port),
                                                        ("metrics", metrics_port))}
        backends = repo_backends(self.repo)
        # The python backend's stub environment: needed unless every model uses our native backend.
        self.stub_env = None
        if backends != {NATIVE_BACKEND}:
            self.stub_env = check_stub_env(pathlib.Path(stub_env) if stub_env else default_stub_env())
        if NATIVE_BACKEND in backends and native_backend_library() is None:
            raise FileNotFoundError(f"the repository uses the {NATIVE_BACKEND} backend, but libtriton_dlrm_deploy.so "
                                    "was not built (`make build`; `dlrm-deploy info` says why)")
        self.install = find_install()
        self.timeout_s = timeout_s
        self.extra_args = list(extra_args or [])
        self.profile_dir = pathlib.Path(profile_dir).resolve() if profile_dir else None
        self._tmp = tempfile.TemporaryDirectory(prefix="dlrm-triton-")
        self.workdir = pathlib.Path(self._tmp.name)
        self.log_path = pathlib.Path(log_path) if log_path else self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        """host:port of the HTTP endpoint."""
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        """URL of the Prometheus metrics."""
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def command(self) -> list[str]:
        """The tritonserver command line."""
        p = self.ports
        return [str(self.install.server), f"--model-repository={self.repo}",
                f"--backend-directory={self.workdir / 'backends'}", "--disable-auto-complete-config",
                "--http-address=127.0.0.1", f"--http-port={p['http']}", "--grpc-address=127.0.0.1",
                f"--grpc-port={p['grpc']}", "--metrics-address=127.0.0.1", f"--metrics-port={p['metrics']}",
                "--allow-gpu-metrics=false", *self.extra_args]

    def start(self) -> "TritonServer":
        """Starts the server and waits until it is ready."""
        env = prepare_workdir(self.workdir, self.install, self.stub_env)
        if self.profile_dir is not None:  # model.py times each step of execute() (triton_bench.profile_summary)
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            env[PROFILE_VAR] = str(self.profile_dir)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"tritonserver exited with status {self.proc.returncode}: {self.errors()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver was not ready within {self.timeout_s:.0f} s: {self.errors()}")

    def ready(self) -> bool:
        """True when the server answers ready on HTTP (all models loaded)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def errors(self, last: int = 3) -> str:
        """The server log's last error lines, joined into one line (or its last line)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errs = [ln for ln in lines if ln.startswith("E") or "error:" in ln.lower()]
        picked = (errs or lines[-1:])[-last:]
        return " | ".join(" ".join(ln.replace("\\n", " ").split()) for ln in picked) + f" (log: {self.log_path})"

    def stop(self, grace_s: float = 15.0) -> None:
        """Stops the server (SIGTERM to its process group, SIGKILL after `grace_s`)."""
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stops the server and removes its work folder (the log too, unless log_path was given)."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dlrm-deploy triton-serve``."""
    p.add_argument("repo", help="model repository (dlrm-deploy triton-repo --backend python --out REPO)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000; 0: a free one)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0: a free one)")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (default 8002; 0: a free one)")
    p.add_argument("--stub-env", help=f"folder with numpy<2 for the python backend's stub (default: ${STUB_ENV_VAR} "
                                      "or <prefix>/triton-stub-env)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until ready (default 120)")
    p.add_argument("--log", help="server log file (default: a temporary file)")
    p.add_argument("--profile", metavar="DIR",
                   help="python-backend models write a timing line per execution into DIR (fetch, parse, merge, "
                        "run, split, respond; see docs/triton.md)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra tritonserver flag, e.g. --server-arg=--log-verbose=1 (repeatable)")


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM/SIGHUP stop the server like Ctrl-C (it runs in its own session)


def main(args: argparse.Namespace) -> int:
    """Runs ``dlrm-deploy triton-serve``: starts the server, prints its URLs, serves until Ctrl-C,
    SIGTERM or SIGHUP, and always stops it (tritonserver runs in a session of its own, so it would
    outlive this process otherwise)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    server = TritonServer(args.repo, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, stub_env=args.stub_env, log_path=args.log,
                          timeout_s=args.timeout, extra_args=args.server_arg, profile_dir=args.profile)
    try:
        server.start()
        print(f"tritonserver ready (pid {server.proc.pid}), repository {server.repo}")
        print(f"  HTTP     {server.http_url}\n  gRPC     {server.grpc_url}\n  metrics  {server.metrics_url}")
        print(f"  log      {server.log_path}\nCtrl-C stops it.", flush=True)
        while server.proc.poll() is None:
            time.sleep(0.5)
        print(f"dlrm-deploy triton-serve: error: tritonserver exited ({server.proc.returncode}): {server.errors()}",
              file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"dlrm-deploy triton-serve: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping tritonserver", file=sys.stderr)
        return 0
    finally:
        server.close()
