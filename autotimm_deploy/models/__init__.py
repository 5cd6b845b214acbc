"""Reference PyTorch modules (spec: shared/seed/heads.md) and model files.

Names resolve on first use (PEP 562): ``autotimm_deploy.models.overrides`` and the family declarations
import without torch."""

from .._lazy import lazy_namespace

_EXPORTS = {
    "create_feature_backbone": "backbone", "ImageClassifier": "classifier", "BBOX_LOG_CLAMP": "decode",
    "DECODING_CONVENTION": "decode", "anchor_points": "decode", "batched_nms_postprocess": "decode", "decode": "decode",
    "FAMILIES": "families", "Family": "family", "ObjectDetector": "detector", "FPN": "fpn",
    "ClassificationHead": "heads", "DetectionHead": "heads", "group_norm_groups": "heads",
    "LoadedModel": "loaded", "load_model": "readers", "load_model_file": "readers", "Reader": "readers",
    "register_reader": "readers", "save_model": "io", "ModelOverrides": "overrides",
}
__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, globals())
