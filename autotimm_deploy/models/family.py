"""Model families: one declaration per kind of model, read by every stage.

A :class:`Family` says what a model's raw outputs are and how they decode, and nothing else in the
toolkit needs to know which model it is: the reference decoder (:mod:`.decode`), the graph surgery,
the FP16 pass, the parity suite, the Python and C++ runtimes and the ONNX metadata all read this
declaration (serialised into the ONNX metadata as ``family``, and from there into engine sidecars and
the manifest).  The declarations themselves live with their modules: :mod:`.families`.

Decoding, for every detector family: the anchor point of cell (i, j) of a level at stride s is
``((j + 0.5) * s, (i + 0.5) * s)``; each raw output goes through its declared ``activation`` (after an
optional ``clamp_max``); the ``ltrb`` output gives pixel distances (l, t, r, b) and the box is
``(px - l, py - t, px + r, py + b)`` clipped to the network input; the class scores are the product
of the activated outputs named in ``score``.  Candidates are flattened level by level (P3 first),
row-major within a level.

>>> from autotimm_deploy.models.families import SEED_FCOS
>>> SEED_FCOS.output_names(2)
['cls_p3', 'cls_p4', 'bbox_p3', 'bbox_p4', 'ctr_p3', 'ctr_p4']
>>> Family.from_dict(SEED_FCOS.to_dict()) == SEED_FCOS
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

from ..errors import AutotimmError

__all__ = ["RawOutput", "Postprocess", "Preprocess", "MaskSpec", "Family", "ACTIVATIONS", "LEVELS", "PER_LEVEL_ROLES"]

#: Names of the FPN levels, in output order.
LEVELS = ("p3", "p4", "p5", "p6", "p7")
#: What an activation may be: ``sigmoid`` (probabilities), ``exp`` (log-distances to pixels), ``identity``
#: (already pixels), ``softmax`` / ``sigmoid`` for classifier logits.  Each stage implements these few.
ACTIVATIONS = ("identity", "sigmoid", "exp", "softmax")
#: Roles with one output per FPN level (``<key>_p3``..); every other output is one tensor named by its key.
PER_LEVEL_ROLES = ("class_logits", "ltrb", "centerness")
_CANDIDATES = ("per_class", "argmax")


@dataclass(frozen=True)
class RawOutput:
    """One raw output of the network (per level for detectors: ``<key>_p3`` ..).

    ``channels``: ``"num_classes"``, a fixed count, or ``"features"`` (the model's feature width).  ``role``: what
    the output is to its task (:mod:`autotimm_deploy.tasks` checks that a family has the roles its task needs):
    ``class_logits``, ``ltrb`` (the four distances), ``centerness``, ``logits`` (classifiers), ``pixel_logits``
    (semantic segmentation), ``mask_features`` (instance segmentation).  ``activation`` (after ``min(x, clamp_max)``
    when ``clamp_max`` is set) turns the value into a probability or a pixel distance."""

    key: str
    role: str
    channels: str
    activation: str
    clamp_max: Optional[float] = None
    meaning: str = ""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.role or not self.key:
            raise ValueError("a raw output needs a key and a role")


@dataclass(frozen=True)
class Postprocess:
    """The default post-processing of a detector family (every runtime applies it; callers may override
    the thresholds).  ``candidates``: ``per_class`` keeps every (location, class) pair above the score
    threshold; ``argmax`` keeps one class per location, the best, if its score is above the threshold.
    ``pre_nms_top_k``: the best K candidates go to NMS (``None``: all).  NMS is class-aware, greedy,
    IoU > ``iou_thresh`` suppresses; the first ``max_detections`` by score are kept."""

    candidates: str = "per_class"
    pre_nms_top_k: Optional[int] = 1000
    score_thresh: float = 0.05
    iou_thresh: float = 0.6
    max_detections: int = 100

    def __post_init__(self) -> None:
        if self.candidates not in _CANDIDATES:
            raise ValueError(f"candidates must be one of {_CANDIDATES}, got {self.candidates!r}")
        if self.pre_nms_top_k is not None and self.pre_nms_top_k < 1:
            raise ValueError(f"pre_nms_top_k must be >= 1 or None, got {self.pre_nms_top_k}")
        if not 0.0 <= self.score_thresh <= 1.0 or not 0.0 < self.iou_thresh <= 1.0 or self.max_detections < 1:
            raise ValueError(f"bad thresholds: score {self.score_thresh}, IoU {self.iou_thresh}, "
                             f"max detections {self.max_detections}")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network input.  ``resize``: ``letterbox`` (scale to fit, aspect kept, then
    pad; AutoTimm's LongestMaxSize + PadIfNeeded for square inputs), ``resize_crop`` (the shorter side
    to ``input / crop_fraction``, then a centre crop: AutoTimm's classifier eval transform) or ``stretch``
    (both sides to the input size, aspect not kept: AutoTimm's segmentation eval ``A.Resize``).  ``align``:
    where a letterboxed image goes (``top-left`` or ``center``).  ``fill``: the padding colour in 0-255,
    or ``None`` for the mean colour (which normalises to 0)."""

    resize: str = "letterbox"
    align: str = "top-left"
    fill: Optional[Tuple[int, int, int]] = None
    crop_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.resize not in ("letterbox", "resize_crop", "stretch") or self.align not in ("top-left", "center"):
            raise ValueError(f"resize must be letterbox/resize_crop/stretch and align top-left/center, got "
                             f"{self.resize!r}, {self.align!r}")
        if self.fill is not None:
            object.__setattr__(self, "fill", tuple(int(v) for v in self.fill))
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")


@dataclass(frozen=True)
class MaskSpec:
    """Instance masks (AutoTimm's ``InstanceSegmentor.predict``): for each final detection, RoIAlign of the
    ``mask_features`` output (stride ``feature_stride``) over its box to ``roi_size`` x ``roi_size``
    (``aligned``: half-pixel box coordinates; ``sampling_ratio`` 0: adaptive, torchvision's -1), the mask head to
    ``mask_size`` x ``mask_size`` logits per class, the detection's class channel, sigmoid; the mask is pasted into
    its box (bilinear resize to the box's pixel extent: floor of x1, y1 and ceil of x2, y2, clipped to the image)
    and a pixel belongs to the instance where the probability is > ``threshold``."""

    feature_stride: int = 8
    roi_size: int = 14
    mask_size: int = 28
    sampling_ratio: int = 0
    aligned: bool = True
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.feature_stride < 1 or self.roi_size < 1 or self.mask_size < 1 or self.sampling_ratio < 0:
            raise ValueError(f"bad mask declaration: {self}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"mask threshold must be in [0, 1), got {self.threshold}")


@dataclass(frozen=True)
class Family:
    """A model family's declaration: see the module docstring."""

    name: str
    task: str  # a registered task: detection, classification, segmentation, instance_segmentation
    convention: str  # versioned name of the decoding convention, e.g. fcos-ltrb-exp-v1
    outputs: Tuple[RawOutput, ...]
    score: Tuple[str, ...] = ()  # detectors: the output keys whose activations multiply into class scores
    postprocess: Postprocess = field(default_factory=Postprocess)
    preprocess: Preprocess = field(default_factory=Preprocess)
    description: str = ""
    masks: Optional[MaskSpec] = None  # instance segmentation: how masks come from mask_features
    fp32_nodes: Tuple[str, ...] = ()  # ONNX node-name globs FP16 exports keep in FP32 (measured sensitive layers)

    def __post_init__(self) -> None:
        keys = [o.key for o in self.outputs]
        if not self.task or not self.outputs or len(set(keys)) != len(keys):
            raise ValueError(f"family {self.name}: needs a task and outputs with distinct keys, got {keys}")
        if any(k not in keys for k in self.score):
            raise ValueError(f"family {self.name}: score {self.score} must name outputs among {keys}")

    # -- outputs ---------------------------------------------------------------------------------
    def output(self, role: str) -> RawOutput:
        return next(o for o in self.outputs if o.role == role)

    def has_role(self, role: str) -> bool:
        return any(o.role == role for o in self.outputs)

    def output_by_key(self, key: str) -> RawOutput:
        return next(o for o in self.outputs if o.key == key)

    @property
    def keys(self) -> Tuple[str, ...]:
        return tuple(o.key for o in self.outputs)

    def output_names(self, num_levels: int = 5) -> List[str]:
        """The raw-output contract: per-level outputs ``<key>_p3..`` per key in order, the others by their key
        (a classifier's ``logits``, an instance segmentor's ``mask_features`` last)."""
        return [f"{o.key}_{lv}" if o.role in PER_LEVEL_ROLES else o.key
                for o in self.outputs for lv in (LEVELS[:num_levels] if o.role in PER_LEVEL_ROLES else ("",))]

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["outputs"] = [asdict(o) for o in self.outputs]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Family":
        try:
            pre = dict(d.get("preprocess") or {})
            if pre.get("fill") is not None:
                pre["fill"] = tuple(pre["fill"])
            return cls(name=d["name"], task=d["task"], convention=d["convention"],
                       outputs=tuple(RawOutput(**_known(RawOutput, o)) for o in d["outputs"]),
                       score=tuple(d.get("score") or ()),
                       postprocess=Postprocess(**_known(Postprocess, d.get("postprocess") or {})),
                       preprocess=Preprocess(**_known(Preprocess, pre)), description=d.get("description", ""),
                       masks=MaskSpec(**_known(MaskSpec, d["masks"])) if d.get("masks") else None,
                       fp32_nodes=tuple(d.get("fp32_nodes") or ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise AutotimmError(f"malformed model-family declaration in the artifact's metadata: {exc}") from None

    def with_postprocess(self, **changes: Any) -> "Family":
        """A copy with some post-processing defaults changed (e.g. thresholds recorded by a checkpoint)."""
        from dataclasses import replace

        return replace(self, postprocess=replace(self.postprocess, **changes))


def _known(kind, d: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in fields(kind)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} field(s) {unknown}")
    return dict(d)
