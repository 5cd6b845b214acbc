"""The model families autotimm-deploy deploys, each declared once (see :mod:`..family`), and the registry that
knows them by name.

- :data:`SEED_FCOS`, :data:`CLASSIFIER`: the seed's modules (``shared/seed/heads.md``): FCOS head with
  exp log-distances, max-pool P6/P7; ``ImageClassifier`` with softmax.
- :data:`AUTOTIMM_FCOS`, :data:`AUTOTIMM_YOLOX`, :data:`AUTOTIMM_CLASSIFIER`, :data:`AUTOTIMM_MULTILABEL`:
  ``ObjectDetector`` and ``ImageClassifier`` as the ``autotimm`` package builds them (conv P6/P7, ReLU·scale pixel
  distances, YOLOX head without centerness, AutoTimm's post-processing and eval preprocessing): :mod:`.autotimm`;
- :data:`AUTOTIMM_YOLOX_DETECTOR`: AutoTimm's ``YOLOXDetector`` (CSPDarknet + PAFPN): :mod:`.yolox_detector`;
- :data:`AUTOTIMM_SEGMENTOR`: AutoTimm's ``SemanticSegmentor`` (DeepLabV3+ / FCN heads): :mod:`.segmentation`;
- :data:`AUTOTIMM_INSTANCE`: AutoTimm's ``InstanceSegmentor`` (FCOS + RoIAlign mask head): :mod:`.instance`.

Adding a family means one new module here that declares its :class:`~..family.Family` and its layers, and its
line in ``_MODULES`` (and, when AutoTimm checkpoints of it are read, its ``AUTOTIMM_CLASS`` and its line in
:data:`AUTOTIMM_CLASSES`); nothing in ``exporters/``, ``engines/``, ``parity/``, ``cli/`` or ``cpp/`` asks for a
family's name (docs/architecture.md).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Dict, Tuple

from ...errors import AutotimmError
from ..family import Family
from .seed import BBOX_LOG_CLAMP, CLASSIFIER, SEED_FCOS

if TYPE_CHECKING:  # pragma: no cover
    from ..hparams import AutotimmClass

__all__ = ["SEED_FCOS", "CLASSIFIER", "AUTOTIMM_FCOS", "AUTOTIMM_YOLOX", "AUTOTIMM_CLASSIFIER", "AUTOTIMM_MULTILABEL",
           "AUTOTIMM_YOLOX_DETECTOR", "AUTOTIMM_SEGMENTOR", "AUTOTIMM_INSTANCE", "BBOX_LOG_CLAMP", "FAMILIES",
           "family_from_metadata", "AUTOTIMM_CLASSES", "autotimm_classes"]

#: Declarations that live beside their layers (torch, timm): name -> submodule, resolved on first use, so that
#: reading an artifact's family (a runtime, a Triton pre-processing step) imports neither.
_MODULES = {
    "AUTOTIMM_CLASSIFIER": "autotimm", "AUTOTIMM_FCOS": "autotimm", "AUTOTIMM_MULTILABEL": "autotimm",
    "AUTOTIMM_YOLOX": "autotimm", "AUTOTIMM_YOLOX_DETECTOR": "yolox_detector", "AUTOTIMM_SEGMENTOR": "segmentation",
    "AUTOTIMM_INSTANCE": "instance",
}

#: The submodules whose ``AUTOTIMM_CLASS`` (an :class:`~..hparams.AutotimmClass`, or a tuple of them) an AutoTimm
#: checkpoint is matched against, in this order (the first class that matches reads it): InstanceSegmentor before
#: ObjectDetector (both have an FPN), the other tasks before ObjectDetector and ImageClassifier (autotimm.py).
AUTOTIMM_CLASSES = ("instance", "segmentation", "yolox_detector", "autotimm")


def autotimm_classes() -> "Tuple[AutotimmClass, ...]":
    """Every AutoTimm class a checkpoint may hold, in matching order (imports the modules of
    :data:`AUTOTIMM_CLASSES`: torch and timm)."""
    import importlib

    found = []
    for module in AUTOTIMM_CLASSES:
        declared = importlib.import_module(f".{module}", __name__).AUTOTIMM_CLASS
        found.extend(declared if isinstance(declared, tuple) else (declared,))
    return tuple(found)


def __getattr__(name: str):
    import importlib

    if name == "FAMILIES":  #: every declared family, by name (documentation and tests; artifacts carry their own)
        families = {f.name: f for f in [SEED_FCOS, CLASSIFIER] + [__getattr__(n) for n in _MODULES]}
        globals()["FAMILIES"] = families
        return families
    if name in _MODULES:
        value = getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES) | {"FAMILIES"})


def family_from_metadata(meta: Dict[str, str]) -> Family:
    """The family an artifact's metadata declares (``family``); exports written before families existed
    carry none and are the seed's (FCOS with exp distances, or a softmax classifier)."""
    if "family" in meta:
        try:
            return Family.from_dict(json.loads(meta["family"]))
        except ValueError as exc:  # JSONDecodeError
            raise AutotimmError(f"the artifact's family metadata is not valid JSON: {exc}") from None
    return SEED_FCOS if meta.get("task") == "detection" else CLASSIFIER
