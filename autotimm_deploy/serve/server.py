"""A local ``tritonserver`` for tests, benchmarks and trying a repository: the real binary and Python backend that the
``nvidia-pytriton`` wheel bundles (``scripts/setup.sh`` installs it into ``.venv/triton``; its numpy pin would
otherwise downgrade the project's numpy).

The bundled server is Triton 2.51, whose Python-backend stub was built with a pybind11 that predates numpy 2: with
numpy 2 in the stub a TYPE_STRING input arrives as garbage and the stub dies (measured).  ``scripts/setup.sh``
therefore also installs numpy 1.26 into ``.venv/triton/numpy1``.  The stub ignores ``PYTHONPATH`` and takes its
``sys.prefix`` from the first ``python3`` on ``PATH``, so the server gets a small virtual environment of its own
(made at start, no packages) whose ``.pth`` puts ``numpy1`` and then this interpreter's site-packages on the path:
the project's code, ONNX Runtime and torch run with numpy 1.26 unchanged.

``LocalTriton(repo)`` starts the server in its own process group on free localhost ports, waits until it is ready
and stops the whole group on ``stop()`` / leaving the ``with`` block (also when the block raised).  The Python
backend's stub finds this interpreter's packages because this interpreter's ``bin`` comes first on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import AutotimmError

__all__ = ["TritonInstall", "find_tritonserver", "LocalTriton", "free_port", "group_processes"]


@dataclass
class TritonInstall:
    binary: Path
    libs: Optional[Path]  # the wheel's bundled shared libraries
    python_backend: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python version
    numpy1: Optional[Path] = None  # numpy < 2 for the stubs (see LocalTriton)


def _candidates() -> List[Path]:
    out = []
    if os.environ.get("AUTOTIMM_TRITON_HOME"):  # a folder holding pytriton/ (pip install --target DIR nvidia-pytriton)
        out.append(Path(os.environ["AUTOTIMM_TRITON_HOME"]))
    out.append(Path(sys.prefix) / "triton")
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec and spec.origin:
            out.append(Path(spec.origin).parent.parent)
    except (ImportError, ValueError):
        pass
    return out


def find_tritonserver() -> TritonInstall:
    """The bundled ``tritonserver`` (``$AUTOTIMM_TRITON_HOME``, ``<venv>/triton`` or an installed ``pytriton``)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for root in _candidates():
        ts = root / "pytriton" / "tritonserver"
        if (ts / "bin" / "tritonserver").exists():
            stub = ts / "python_backend_stubs" / version / "triton_python_backend_stub"
            if not stub.exists():
                raise AutotimmError(f"{ts}: no Python backend stub for Python {version}")
            libs = root / "nvidia_pytriton.libs"
            return TritonInstall(ts / "bin" / "tritonserver", libs if libs.is_dir() else None,
                                 ts / "backends" / "python", stub, root / "numpy1" if (root / "numpy1").is_dir() else None)
    raise AutotimmError("no tritonserver found: run scripts/setup.sh (installs the nvidia-pytriton wheel's server into "
                        ".venv/triton) or set AUTOTIMM_TRITON_HOME to a folder holding pytriton/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process before exec: SIGTERM when the process that started it dies (a test runner killed with
    SIGKILL leaves no server behind; Linux's PR_SET_PDEATHSIG, a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def group_processes(pgid: int) -> List[int]:
    """The live (not zombie) processes of process group ``pgid``, from ``/proc``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
                out.append(int(d.name))
    return out


class LocalTriton:
    """``tritonserver`` on ``repo`` (explicit model control, ``models`` loaded at start: all by default).  Its working
    folder (log, backend copy, the stubs' environment) is removed by :meth:`stop` unless ``keep_log`` or the start
    failed, whose error message names the log."""

    def __init__(self, repo: str | Path, models: Sequence[str] = ("*",), startup_timeout: float = 180.0,
                 extra_args: Sequence[str] = (), log_verbose: int = 0, keep_log: bool = False,
                 progress: Optional[Callable[[str], None]] = None) -> None:
        self.repo = Path(repo).resolve()
        self.models, self.startup_timeout = list(models), startup_timeout
        self.extra_args, self.log_verbose, self.keep_log = list(extra_args), log_verbose, keep_log
        self.progress = progress  # a line every ~10 s while the server is not ready yet
        self.proc: Optional[subprocess.Popen] = None
        self.workdir: Optional[Path] = None
        self.http_port = self.grpc_port = self.metrics_port = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return ""

    def log_errors(self, lines: int = 30) -> str:
        """The log's error lines and models that failed to load (else its tail)."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, TypeError):
            return ""
        bad = [l for l in text if l[:1] == "E" and l[1:2].isdigit() and "CudaDriverHelper" not in l
               or "UNAVAILABLE" in l or l.startswith("error:") or "Failed to" in l and "NVML" not in l]
        return "\n".join(bad[-lines:]) if bad else self.log_tail(lines)

    def _backend_dir(self, inst: TritonInstall) -> Path:
        bdir = self.workdir / "backends" / "python"
        bdir.mkdir(parents=True)
        for f in inst.python_backend.iterdir():
            if f.is_file():
                shutil.copy2(f, bdir / f.name)
        shutil.copy2(inst.stub, bdir / inst.stub.name)
        return bdir.parent

    def _stub_env(self, inst: TritonInstall) -> Path:
        """The ``bin`` folder whose ``python3`` the Python-backend stubs take their packages from."""
        if inst.numpy1 is None:
            return Path(sys.executable).parent
        import sysconfig
        import venv

        env = self.workdir / "stub-env"
        venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
        purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
        here = sysconfig.get_path("purelib")
        (purelib / "autotimm_deploy_stub.pth").write_text(f"{inst.numpy1}\nimport site; site.addsitedir({here!r})\n")
        return env / "bin"

    def start(self) -> "LocalTriton":
        inst = find_tritonserver()
        self.workdir = Path(tempfile.mkdtemp(prefix="autotimm-triton-"))
        backends = self._backend_dir(inst)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        env = dict(os.environ)
        env["PATH"] = f"{self._stub_env(inst)}{os.pathsep}{env.get('PATH', '')}"
        if inst.libs:
            env["LD_LIBRARY_PATH"] = f"{inst.libs}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
        cmd = [str(inst.binary), f"--model-repository={self.repo}", f"--backend-directory={backends}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
               "--model-control-mode=explicit", *[f"--load-model={m}" for m in self.models],
               "--backend-config=python,stub-timeout-seconds=120", f"--log-verbose={self.log_verbose}",
               "--exit-on-error=true", "--exit-timeout-secs=2", *self.extra_args]
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        self._started(self.proc)
        try:
            self._wait_ready()
        except BaseException:
            self.keep_log = True
            self.stop()
            raise
        return self

    def _started(self, proc: subprocess.Popen) -> None:
        """Called with the server's process as soon as it runs (a hook for tests and supervisors)."""

    def load_failures(self) -> List[str]:
        """The log's lines saying a model failed to load (Triton then never gets ready, or exits): the start stops
        at the first one instead of waiting for the timeout."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, TypeError):
            return []
        return [l for l in text if "failed to load '" in l or "Failed to initialize Python stub" in l
                or "failed to initialize" in l.lower() and "python" in l.lower()]

    def _wait_ready(self) -> None:
        start = time.monotonic()
        deadline, said = start + self.startup_timeout, start
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AutotimmError(f"tritonserver exited with code {self.proc.returncode} while starting "
                                    f"({self.log_path}):\n{self.log_errors()}")
            failed = self.load_failures()
            if failed:
                raise AutotimmError(f"tritonserver could not load a model ({self.log_path}):\n" + "\n".join(failed[-5:]))
            now = time.monotonic()
            if self.progress is not None and now - said >= 10.0:
                said = now
                last = (self.log_tail(1) or "(no log line yet)").strip()[:200]
                self.progress(f"tritonserver: not ready after {now - start:.0f} s; last log line: {last}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        raise AutotimmError(f"tritonserver not ready after {self.startup_timeout:.0f}s ({self.log_path}):\n"
                            f"{self.log_errors()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the server (it unloads its models and stops their Python stubs), then SIGKILL to its whole
        process group (the server, if it outlived ``timeout``, and any stub left behind)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        deadline = time.monotonic() + 10.0
        while group_processes(proc.pid) and time.monotonic() < deadline:  # killed stubs take a moment to go
            time.sleep(0.05)
        if self.keep_log:  # a failed start keeps its log (the error message names it)
            for sub in ("stub-env", "backends"):
                shutil.rmtree(self.workdir / sub, ignore_errors=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
