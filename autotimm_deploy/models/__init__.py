"""Reference PyTorch modules (spec: shared/seed/heads.md) and model files.

Names resolve on first use (PEP 562): ``autotimm_deploy.models.overrides`` and the family declarations
import without torch."""

import importlib

_EXPORTS = {
    "create_feature_backbone": "backbone", "ImageClassifier": "classifier", "BBOX_LOG_CLAMP": "decode",
    "DECODING_CONVENTION": "decode", "anchor_points": "decode", "batched_nms_postprocess": "decode", "decode": "decode",
    "FAMILIES": "families", "Family": "family", "ObjectDetector": "detector", "FPN": "fpn",
    "ClassificationHead": "heads", "DetectionHead": "heads", "group_norm_groups": "heads", "LoadedModel": "io",
    "load_model": "io", "load_model_file": "io", "save_model": "io", "ModelOverrides": "overrides",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
