"""Which TensorRT library builds and runs engines: full TensorRT (``tensorrt``) or TensorRT-RTX
(``tensorrt_rtx``).  Both have the same builder/parser/runtime API; they differ in:

- precision: TensorRT 10 takes an FP32 network plus the FP16 builder flag (with FP32 islands pinned
  by layer precision constraints); TensorRT 11 and TensorRT-RTX are strongly typed: FP16 engines
  come from the FP16-typed ONNX of :mod:`autotimm_deploy.exporters.fp16`;
- GPU: full TensorRT builds on (and for) the GPU it runs on; TensorRT-RTX builds ahead of time on any
  machine, for the compute capabilities it is given (SM75/80/86/89/120/121; no SM90 such as H100/H200).

This module (and the rest of :mod:`autotimm_deploy.engines`) is the only place that imports them,
and only when called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, Optional, Tuple

from ..errors import EngineError

__all__ = ["TrtLibrary", "import_library", "select_library", "gpu_info", "LIBRARIES", "ENGINE_CHOICES",
           "RTX_TARGETS"]

LIBRARIES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}  # name -> module
ENGINE_CHOICES = ("auto", "tensorrt", "tensorrt-rtx", "none")
# TensorRT-RTX ComputeCapability targets (tensorrt_rtx 1.7); "CURRENT" is resolved to one of these
RTX_TARGETS = ("SM75", "SM80", "SM86", "SM89", "SM120", "SM121")
# First bytes of a serialized engine, as written by each library (observed; used to spot foreign files)
ENGINE_MAGIC = {"tensorrt": b"ftrt", "tensorrt-rtx": b"vtrt"}


@dataclass
class TrtLibrary:
    """An imported TensorRT flavour."""

    name: str  # "tensorrt" or "tensorrt-rtx"
    module: ModuleType
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def strongly_typed(self) -> bool:
        """Types come from the network (no FP16 builder flag): TensorRT >= 11 and TensorRT-RTX."""
        return self.name == "tensorrt-rtx" or self.major >= 11

    @property
    def ahead_of_time(self) -> bool:
        """Builds without a GPU, for compute-capability targets."""
        return self.name == "tensorrt-rtx"

    def describe(self) -> Dict[str, str]:
        return {"name": self.name, "module": self.module.__name__, "version": self.version}


def import_library(name: str) -> TrtLibrary:
    """Import ``"tensorrt"`` or ``"tensorrt-rtx"``; a clear :class:`EngineError` says how to install it."""
    if name not in LIBRARIES:
        raise EngineError(f"unknown engine library {name!r}; choose one of {', '.join(LIBRARIES)}")
    try:
        mod = importlib.import_module(LIBRARIES[name])
        version = str(mod.__version__)
    except Exception as exc:  # the PyPI `tensorrt` stub raises at import when its download failed
        how = ("pip install tensorrt-rtx" if name == "tensorrt-rtx" else
               "pip install tensorrt --extra-index-url https://pypi.nvidia.com (full TensorRT is on NVIDIA's index only)")
        raise EngineError(f"{name} is not usable here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                          f"install it with `{how}`, or choose --engine tensorrt-rtx / none") from None
    return TrtLibrary(name, mod, version)


def gpu_info() -> Optional[Dict[str, object]]:
    """The CUDA GPU this process would use, or None (through PyTorch, already a dependency)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
                "sm": f"SM{major}{minor}", "cuda_runtime": torch.version.cuda}
    except Exception:
        return None


def select_library(choice: str = "auto") -> Tuple[Optional[TrtLibrary], str]:
    """Resolve ``--engine`` to a library and a sentence saying why.

    ``auto``: full TensorRT when it imports and a CUDA GPU is present (it builds on the GPU);
    otherwise TensorRT-RTX, which builds ahead of time anywhere.  ``none`` returns ``(None, reason)``.
    """
    if choice not in ENGINE_CHOICES:
        raise EngineError(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {choice!r}")
    if choice == "none":
        return None, "--engine none: no engine built"
    if choice != "auto":
        return import_library(choice), f"--engine {choice}"
    gpu = gpu_info()
    try:
        full = import_library("tensorrt")
    except EngineError:
        full = None
    if full is not None and gpu is not None:
        return full, f"auto: tensorrt {full.version} imports and a GPU is present ({gpu['name']})"
    why = ("tensorrt is not installed" if full is None else "tensorrt imports but no CUDA GPU is present to build on")
    rtx = import_library("tensorrt-rtx")
    return rtx, f"auto: {why}; TensorRT-RTX {rtx.version} builds ahead of time without one"
