"""autotimm-deploy: timm-backbone classifiers and FCOS detectors to verified ONNX and TensorRT engines."""

__version__ = "0.1.0"

from .errors import AutotimmError, ExportError, ModelFileError, ParityError
from ._lazy import lazy_namespace

#: the model classes and file functions live in .models (torch, timm): imported on first use (PEP 562),
#: so that ``import autotimm_deploy`` and the CLIs' ``--help`` stay fast
_MODELS = ("FPN", "ClassificationHead", "DetectionHead", "ImageClassifier", "ObjectDetector", "create_feature_backbone",
           "load_model", "load_model_file", "save_model")
__getattr__, __dir__ = lazy_namespace(__name__, dict.fromkeys(_MODELS, "models"), globals())

__all__ = [
    "__version__",
    "ClassificationHead",
    "DetectionHead",
    "FPN",
    "create_feature_backbone",
    "ObjectDetector",
    "ImageClassifier",
    "save_model",
    "load_model",
    "load_model_file",
    "AutotimmError",
    "ModelFileError",
    "ExportError",
    "ParityError",
]
