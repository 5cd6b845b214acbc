"""Load an engine: :func:`load_engine` runs the checks of :mod:`autotimm_deploy.engines.checks` (sidecar, size and
SHA-256, magic bytes, library version: no GPU needed, nothing deserialised before they pass), then the library's
own validity check (``IRuntime.get_engine_validity``, which needs a GPU) and deserialises, with engine host code
disallowed unless ``allow_host_code=True``.  ``check_engine`` and ``engine_runnable`` are re-exported here.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.engine"
>>> _ = p.write_bytes(b"not an engine")
>>> try:
...     load_engine(p)
... except Exception as e:
...     print(type(e).__name__)
EngineIncompatible
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

from ..errors import EngineIncompatible
from .checks import check_engine, deserialize, engine_runnable
from .library import TrtLibrary

__all__ = ["check_engine", "engine_runnable", "load_engine"]

_deserialize = deserialize  # the name the probe's child used


def load_engine(path: str | Path, allow_host_code: bool = False, isolate: bool = True) -> Tuple[TrtLibrary, object, Dict]:
    """Check, validate and deserialise ``path``: returns (library, ICudaEngine, sidecar).  Needs a GPU.

    With ``isolate`` (default) the library first validates and deserialises the file in a child process
    (:func:`~autotimm_deploy.engines.probe.probe_engine`): a file that crashes or hangs the native library
    fails there with :class:`EngineCorrupt` and is never loaded here.  Engine host code stays disallowed
    unless ``allow_host_code=True`` (only for engines you built or trust: host code runs on the CPU).
    """
    sidecar = check_engine(path)
    ok, why = engine_runnable(sidecar)
    if not ok:
        raise EngineIncompatible(f"{path}: cannot run here: {why}")
    if isolate:
        from .probe import probe_engine

        probe_engine(path, allow_host_code)
    lib, engine = deserialize(path, sidecar, allow_host_code)
    return lib, engine, sidecar
