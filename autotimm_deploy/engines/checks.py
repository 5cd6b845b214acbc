"""Check engines before loading them (:mod:`autotimm_deploy.engines.load` loads).  An engine is code for the GPU:
nothing is deserialised before it passes every check that does not need the library to parse it.

:func:`check_engine` (no GPU needed), in order:

1. the sidecar ``<engine>.json`` exists and is an autotimm-deploy sidecar;
2. the file's size and SHA-256 equal the sidecar's (truncated or modified files stop here);
3. the file starts with the magic bytes of the library the sidecar names (``vtrt`` TensorRT-RTX,
   ``ftrt`` TensorRT): an ONNX file renamed ``.engine`` or another library's engine stops here;
4. that library is installed, in exactly the sidecar's version.

:func:`engine_runnable` then says whether *this* machine can execute it (a CUDA GPU, and for
TensorRT-RTX a compute capability among the engine's targets; for full TensorRT the same GPU model).
:func:`deserialize` hands the checked bytes to the library (``load.load_engine`` first runs the library's own
validity check).

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

import hashlib
from pathlib import Path
from typing import Dict, Tuple

from ..errors import EngineCorrupt, EngineIncompatible
from .library import ENGINE_MAGIC, TrtLibrary, gpu_info, import_library
from .sidecar import read_sidecar

__all__ = ["check_engine", "engine_runnable", "deserialize"]


def _describe_foreign(head: bytes) -> str:
    if head[:4] in ENGINE_MAGIC.values():
        lib = next(k for k, v in ENGINE_MAGIC.items() if v == head[:4])
        return f"a {lib} engine"
    if head[:1] == b"\x08":  # protobuf field 1 (ModelProto.ir_version) as a varint
        return "probably an ONNX file"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (a PyTorch checkpoint?)"
    return f"unknown content starting with {head[:8]!r}"


def check_engine(path: str | Path) -> Dict:
    """Static checks 1-4 above; returns the sidecar.  Raises :class:`EngineCorrupt` or
    :class:`EngineIncompatible` with what to do."""
    path = Path(path)
    if not path.is_file():
        raise EngineIncompatible(f"{path}: no such engine file")
    sidecar = read_sidecar(path)
    expected = sidecar.get("engine", {})
    data = path.read_bytes()
    if len(data) != expected.get("bytes"):
        raise EngineCorrupt(f"{path}: {len(data)} bytes, the sidecar says {expected.get('bytes')} "
                            f"({'truncated' if len(data) < (expected.get('bytes') or 0) else 'extra bytes'}); re-export it")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.get("sha256"):
        raise EngineCorrupt(f"{path}: SHA-256 {digest[:16]}... does not match the sidecar's "
                            f"{str(expected.get('sha256'))[:16]}...: the file was modified after it was built; re-export it")
    lib_name = sidecar.get("library", {}).get("name")
    magic = ENGINE_MAGIC.get(lib_name)
    if magic is None:
        raise EngineIncompatible(f"{path}: sidecar names an unknown library {lib_name!r}")
    if data[:4] != magic:
        raise EngineCorrupt(f"{path}: not a {lib_name} engine ({_describe_foreign(data[:16])})")
    want = sidecar["library"].get("version")
    lib = import_library(lib_name)
    if lib.version != want:
        raise EngineIncompatible(f"{path}: built with {lib_name} {want}, this machine has {lib.version}; engines load "
                                 f"only in the exact version that built them: rebuild with autotimm-export")
    return sidecar


def engine_runnable(sidecar: Dict) -> Tuple[bool, str]:
    """(True, GPU description) when this machine can execute the engine, else (False, the reason)."""
    gpu = gpu_info()
    if gpu is None:
        return False, "no CUDA GPU on this machine (torch.cuda.is_available() is False)"
    targets = sidecar.get("targets", {})
    ccs = targets.get("compute_capabilities")
    if ccs is not None and gpu["sm"] not in ccs:
        return False, (f"GPU {gpu['name']} has compute capability {gpu['compute_capability']} ({gpu['sm']}), "
                       f"not among the engine's targets {', '.join(ccs)}")
    built_on = targets.get("gpu")
    if built_on is not None and (built_on.get("name"), built_on.get("compute_capability")) != (gpu["name"], gpu["compute_capability"]):
        return False, f"engine was built for {built_on.get('name')}, this GPU is {gpu['name']}"
    return True, f"{gpu['name']} ({gpu['sm']})"


_DIAGNOSTICS = {
    "VERSION_MISMATCH": "the engine's version does not match the runtime",
    "UNSUPPORTED_CC": "the GPU's compute capability is not one the engine was built for",
    "OLD_CUDA_DRIVER": "the CUDA driver is too old",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old",
    "INSUFFICIENT_GPU_MEMORY": "not enough GPU memory",
    "MALFORMED_ENGINE": "the engine is malformed",
    "CUDA_ERROR": "a CUDA error occurred while checking",
}


def deserialize(path: str | Path, sidecar: Dict, allow_host_code: bool) -> Tuple[TrtLibrary, object]:
    """The library's validity check, then ``deserialize_cuda_engine``; typed errors carry the library log."""
    lib = import_library(sidecar["library"]["name"])
    trt = lib.module
    from .build import _Logger

    logger = _Logger.make(trt)
    log = lambda: logger.errors + logger.warnings
    runtime = trt.Runtime(logger)
    if hasattr(runtime, "engine_host_code_allowed"):
        runtime.engine_host_code_allowed = bool(allow_host_code)
    data = Path(path).read_bytes()
    if hasattr(runtime, "get_engine_validity"):
        validity, diag = runtime.get_engine_validity(data)
        if str(validity).endswith("INVALID"):
            flags = [msg for name, msg in _DIAGNOSTICS.items()
                     if int(diag) & int(getattr(trt.EngineInvalidityDiagnostics, name, 0) or 0)]
            exc = EngineIncompatible(f"{path}: {lib.name} says the engine is invalid here: "
                                     f"{'; '.join(flags) or 'no diagnostic'} ({'; '.join(logger.errors[-3:])})", log=log())
            exc.library_checked = True
            raise exc
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        exc = EngineCorrupt(f"{path}: {lib.name} could not deserialise it: {'; '.join(logger.errors[-3:]) or 'no message'}",
                            log=log())
        exc.library_checked = True
        raise exc
    return lib, engine
