"""Reference PyTorch modules (spec: shared/seed/heads.md) and model files."""

from .backbone import create_feature_backbone
from .classifier import ImageClassifier
from .decode import BBOX_LOG_CLAMP, DECODING_CONVENTION, anchor_points, batched_nms_postprocess, decode
from .families import FAMILIES
from .family import Family
from .detector import ObjectDetector
from .fpn import FPN
from .heads import ClassificationHead, DetectionHead, group_norm_groups
from .io import LoadedModel, load_model, load_model_file, save_model

__all__ = [
    "ClassificationHead",
    "DetectionHead",
    "FPN",
    "create_feature_backbone",
    "ObjectDetector",
    "ImageClassifier",
    "save_model",
    "load_model",
    "load_model_file",
    "LoadedModel",
    "group_norm_groups",
    "anchor_points",
    "decode",
    "batched_nms_postprocess",
    "BBOX_LOG_CLAMP",
    "DECODING_CONVENTION",
    "Family",
    "FAMILIES",
]
