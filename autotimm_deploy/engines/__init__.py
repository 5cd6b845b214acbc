"""Engines: build, check and run TensorRT / TensorRT-RTX engines.

This subpackage is the only place that imports ``tensorrt`` or ``tensorrt_rtx``, and only inside the
functions that need them: importing it is cheap.  See :mod:`.library` (which library and why),
:mod:`.build` (builder, profiles, targets, cache), :mod:`.sidecar` (sidecar JSON and cache key),
:mod:`.load` (checks before deserialising), :mod:`.backends` (ONNX Runtime, PyTorch, engine
backends with one ``infer`` contract), :mod:`.predictor` (``load(path).predict(images)``) and
:mod:`.runner` (Polygraphy runner on CUDA).
"""

from .build import BuildConfig, build_engine, engine_from_onnx, static_profile
from .library import ENGINE_CHOICES, RTX_TARGETS, TrtLibrary, import_library, select_library
from .load import check_engine, engine_runnable, load_engine
from .predictor import Classification, Detections, Predictor, load
from .sidecar import EngineCache, read_sidecar

__all__ = ["BuildConfig", "build_engine", "engine_from_onnx", "static_profile", "ENGINE_CHOICES", "RTX_TARGETS",
           "TrtLibrary", "import_library", "select_library", "check_engine", "engine_runnable", "load_engine",
           "EngineCache", "read_sidecar", "load", "Predictor", "Detections", "Classification"]
