"""Engines: build, check and run TensorRT / TensorRT-RTX engines.

This subpackage is the only place that imports ``tensorrt`` or ``tensorrt_rtx``, and only inside the
functions that need them: importing it is cheap.  See :mod:`.library` (which library and why),
:mod:`.build` (builder, profiles, targets, cache), :mod:`.sidecar` (sidecar JSON and cache key),
:mod:`.load` (checks before deserialising), :mod:`.backends` (ONNX Runtime, PyTorch, engine
backends with one ``infer`` contract), :mod:`.predictor` (``load(path).predict(images)``) and
:mod:`.runner` (Polygraphy runner on CUDA).
"""

from .._lazy import lazy_namespace

#: public name -> submodule; resolved on first use (PEP 562) so that importing the subpackage, e.g. for
#: ``ENGINE_CHOICES`` in a CLI's ``--help``, loads neither torch nor ONNX Runtime
_EXPORTS = {
    **dict.fromkeys(["BuildConfig", "build_engine", "engine_from_onnx", "static_profile"], "build"),
    **dict.fromkeys(["ENGINE_CHOICES", "RTX_TARGETS", "TrtLibrary", "import_library", "select_library"], "library"),
    **dict.fromkeys(["check_engine", "engine_runnable", "load_engine"], "load"),
    **dict.fromkeys(["Classification", "Detections", "Predictor", "load"], "predictor"),
    **dict.fromkeys(["EngineCache", "read_sidecar"], "sidecar"),
}
__all__ = list(_EXPORTS)

# The submodule .load shares its name with the public function load (predictor.load): import the (light)
# submodule now and drop the attribute the import system sets, so that `engines.load` is always the function,
# whichever is imported first.
from . import load as _load_module  # noqa: E402,F401

del globals()["load"]


__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, globals())
