"""Check and load engines.  An engine is code for the GPU: nothing is deserialised before it passes
every check that does not need the library to parse it.

:func:`check_engine` (no GPU needed), in order:

1. the sidecar ``<engine>.json`` exists and is an autotimm-deploy sidecar;
2. the file's size and SHA-256 equal the sidecar's (truncated or modified files stop here);
3. the file starts with the magic bytes of the library the sidecar names (``vtrt`` TensorRT-RTX,
   ``ftrt`` TensorRT): an ONNX file renamed ``.engine`` or another library's engine stops here;
4. that library is installed, in exactly the sidecar's version.

:func:`engine_runnable` then says whether *this* machine can execute it (a CUDA GPU, and for
TensorRT-RTX a compute capability among the engine's targets; for full TensorRT the same GPU model).
:func:`load_engine` runs the library's own validity check (``IRuntime.get_engine_validity``, which
needs a GPU) and deserialises, with engine host code disallowed unless ``allow_host_code=True``.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.engine"
>>> _ = p.write_bytes(b"not an engine")
>>> try:
...     check_engine(p)
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
