"""Check engines in a child process: a crash or hang of the native library never reaches the caller.

An engine file is code for the GPU and TensorRT parses it in native code.  :func:`probe_engines` runs,
for each file, :func:`~autotimm_deploy.engines.load.check_engine` (sidecar, size, SHA-256, magic,
library version), :func:`~autotimm_deploy.engines.load.engine_runnable` and, where this machine can run
the engine, the library's own validity check and a deserialisation, in **one** child process
(``python -m autotimm_deploy.engines.probe``), reporting one JSON line per file.  If the child dies
(SIGSEGV, abort) or stops answering, that file gets an :class:`~autotimm_deploy.errors.EngineCorrupt`
naming the signal, with the library log lines the child had sent, and a fresh child goes on with the
next file.  :func:`~autotimm_deploy.engines.load.load_engine` probes this way before it deserialises
in-process.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.engine"
>>> _ = p.write_bytes(b"not an engine")
>>> [(r.path.name, r.ok, r.error_type) for r in probe_engines([p])]
[('x.engine', False, 'EngineIncompatible')]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from .. import errors

__all__ = ["ProbeResult", "probe_engines", "probe_engine", "CRASH_FOR_TESTS_ENV"]

#: Positive control for tests: the child kills itself with this signal number before checking a file
#: whose name contains the text after ``:`` (e.g. ``"11:crash-me"``).  Never set it in production.
CRASH_FOR_TESTS_ENV = "AUTOTIMM_DEPLOY_PROBE_CRASH_FOR_TESTS"


@dataclass
class ProbeResult:
    path: Path
    ok: bool
    error_type: Optional[str] = None  # EngineCorrupt | EngineIncompatible | ...
    message: str = ""
    log: List[str] = field(default_factory=list)  # the library's errors and warnings
    crashed: bool = False  # the child died or hung on this file
    library_checked: bool = False  # the library's validity check and deserialisation ran

    def error(self) -> errors.EngineError:
        cls = getattr(errors, self.error_type or "EngineError", errors.EngineError)
        if not (isinstance(cls, type) and issubclass(cls, errors.EngineError)):
            cls = errors.EngineError
        return cls(self.message, log=self.log)


def _check_one(path: Path, allow_host_code: bool) -> dict:
    """In the child: every check, the library's last."""
    from .checks import check_engine, deserialize, engine_runnable

    try:
        sidecar = check_engine(path)
        ok, why = engine_runnable(sidecar)
        if not ok:
            return {"ok": False, "error_type": "EngineIncompatible", "message": f"{path}: cannot run here: {why}"}
        deserialize(path, sidecar, allow_host_code)
        return {"ok": True, "library_checked": True}
    except errors.EngineError as exc:
        return {"ok": False, "error_type": type(exc).__name__, "message": str(exc), "log": list(exc.log),
                "library_checked": getattr(exc, "library_checked", False)}


def _child_main() -> int:
    """Read ``{"path": ..., "allow_host_code": ...}`` lines on stdin, answer one JSON line per file."""
    crash = os.environ.get(CRASH_FOR_TESTS_ENV, "")
    for line in sys.stdin:
        req = json.loads(line)
        path = Path(req["path"])
        print(json.dumps({"start": str(path)}), flush=True)
        if crash and crash.split(":", 1)[1] in path.name:
            os.kill(os.getpid(), int(crash.split(":", 1)[0]))
        try:
            res = _check_one(path, bool(req.get("allow_host_code")))
        except Exception as exc:  # a bug, not the engine: report, keep going
            res = {"ok": False, "error_type": "EngineError", "message": f"{path}: checking failed: "
                                                                         f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"path": str(path), **res}), flush=True)
    return 0


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"exit code {code}"


class _Child:
    def __init__(self) -> None:
        import tempfile

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child can never block on it
        self.proc = subprocess.Popen([sys.executable, "-m", "autotimm_deploy.engines.probe"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.buf = b""

    def _line(self, deadline: float) -> Optional[bytes]:
        """One line of the child's stdout (unbuffered reads, so select() sees every byte), or None."""
        import select

        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def ask(self, path: Path, allow_host_code: bool, timeout: float) -> Optional[dict]:
        """The answer for ``path``, or None if the child died or hung (it is then killed)."""
        try:
            self.proc.stdin.write((json.dumps({"path": str(path), "allow_host_code": allow_host_code}) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc.wait()
            return None
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if line is None:
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()
                return None
            msg = json.loads(line)
            if "start" not in msg:
                return msg

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace")
        self.stderr.close()
        return text


def probe_engines(paths: Sequence[str | Path], allow_host_code: bool = False, timeout: float = 120.0,
                  progress=None) -> List[ProbeResult]:
    """Check every engine of ``paths`` in one child process (restarted after a crash); see the module doc."""
    results: List[ProbeResult] = []
    child: Optional[_Child] = None
    for k, p in enumerate(map(Path, paths)):
        if child is None:
            child = _Child()
        ans = child.ask(p, allow_host_code, timeout)
        if ans is None:
            code = child.proc.returncode
            stderr = child.close()
            hung = code == -signal.SIGKILL
            what = (f"did not finish within {timeout:g} s" if hung else
                    f"crashed the checking process ({_signal_name(code) if code and code < 0 else f'exit code {code}'})")
            log = [ln for ln in stderr.splitlines() if ln.strip()][-5:]
            results.append(ProbeResult(p, False, "EngineCorrupt",
                                       f"{p}: the engine library {what} while checking this file; it was not loaded "
                                       "in this process. Treat the file as damaged or hostile and rebuild it",
                                       log, crashed=True))
            child = None
        else:
            results.append(ProbeResult(p, bool(ans["ok"]), ans.get("error_type"), ans.get("message", ""),
                                       ans.get("log", []), library_checked=bool(ans.get("library_checked"))))
        if progress is not None and (k + 1) % 50 == 0:
            progress(f"checked {k + 1}/{len(paths)} engine files")
    if child is not None:
        child.close()
    return results


def probe_engine(path: str | Path, allow_host_code: bool = False, timeout: float = 120.0) -> None:
    """Raise the typed error :func:`probe_engines` found for ``path`` (nothing if it is fine)."""
    res = probe_engines([path], allow_host_code, timeout)[0]
    if not res.ok:
        raise res.error()


if __name__ == "__main__":
    sys.exit(_child_main())
