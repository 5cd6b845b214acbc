"""autotimm-deploy: timm-backbone classifiers and FCOS detectors to verified ONNX and TensorRT engines."""

__version__ = "0.1.0"

from .errors import AutotimmError, ExportError, ModelFileError, ParityError
from .models import (
    FPN,
    ClassificationHead,
    DetectionHead,
    ImageClassifier,
    ObjectDetector,
    create_feature_backbone,
    load_model,
    load_model_file,
    save_model,
)

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
