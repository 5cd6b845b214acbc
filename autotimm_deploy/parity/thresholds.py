"""Parity thresholds per precision, as data: what each level of ``autotimm-parity`` (and the export's parity, FP16
repair and INT8 accuracy gate, which use the same rules) requires, with the defaults and the JSON file / dict that
overrides them.

Comparisons are data: :class:`Tolerances` maps output names to (atol, rtol) with ``""`` as the
default.  An element is out of tolerance when ``|a - r| > atol`` *and* ``|a - r| > rtol * |r|``
(r = PyTorch), the rule of Polygraphy's ``SimpleCompareFunc``.

Default FP32 tolerances (``FP32_TOLERANCES``) and why:

- logits, activations: atol 1e-4, rtol 1e-3.  PyTorch and ONNX Runtime reorder FP32 sums in
  convolutions and normalisation (measured max error 1e-6 to 5e-6 on the demo models and
  resnet50 FCOS), so 1e-4 leaves ~20x headroom while a real export bug (wrong weight, wrong
  stride offset) moves outputs by 1e-2 or more.
- ``boxes`` (pixels): atol 1e-2 px, rtol 1e-4.  exp() turns a 1e-6 log-distance error into a
  relative error of 1e-6, i.e. under 1e-3 px for boxes of up to 1000 px.

FP16 tolerances (``FP16_TOLERANCES``), derived in docs/fp16.md from FP16's unit roundoff
u = 2^-11 = 4.9e-4 and the error growth measured on the demo detector and resnet50 FCOS:

- raw head outputs, logits, activations: atol 5e-2, rtol 1e-2.  Each stored FP16 tensor adds a
  relative error <= u; through the ~60 stored tensors of resnet50 FCOS the measured error is at
  most 22 u x RMS(output) (1.1e-2 abs, 0.9 % relative on elements with |x| > 1).  rtol 1e-2 is
  20 u; atol 5e-2 is 4x the largest measured absolute error.
- ``scores`` = sigmoid(cls) * sigmoid(ctr): sigmoid' <= 1/4, so an error e on both logits moves
  the score by <= e/2; with the measured e <= 1.1e-2 that is 5.5e-3: atol 1e-2, rtol 1e-2.
- ``boxes``: a coordinate moves by distance x (error of bbox_pred), at most 1 % of the distance
  with the measured 9e-3: atol 1 px (a 100 px distance), rtol 1e-2 of the coordinate.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..errors import ParityError

__all__ = ["Tolerances", "FP32_TOLERANCES", "FP16_TOLERANCES", "INT8_TOLERANCES", "DetectionRule", "TaskRule",
           "Thresholds", "DEFAULT_THRESHOLDS", "load_thresholds", "thresholds_for"]


@dataclass
class Tolerances:
    """Per-output (atol, rtol); the key ``""`` is the default for outputs not listed.

    An absolute tolerance must mean something at the scale of the values compared: FP16's 1e-2 on ``scores`` is
    larger than every score of a low-confidence model (about 0.005), so any other model's scores passed.  The
    atol actually applied to an output is therefore at most ``range_fraction`` of the reference's value range
    (max - min over the inputs), but not scaled below ``atol_floor`` (:meth:`effective_atol`).

    Integer outputs (class labels per pixel) are compared by equality: at most ``max_mismatch`` of their elements
    may differ (a label flips where two classes' logits are within the precision's error of each other).
    """

    atol: Dict[str, float] = field(default_factory=lambda: {"": 1e-4})
    rtol: Dict[str, float] = field(default_factory=lambda: {"": 1e-3})
    range_fraction: float = 0.1
    atol_floor: float = 1e-6
    max_mismatch: float = 1e-3

    def for_output(self, name: str) -> Tuple[float, float]:
        return self.atol.get(name, self.atol[""]), self.rtol.get(name, self.rtol[""])

    def effective_atol(self, name: str, value_range: float) -> float:
        """The atol for ``name`` where the reference spans ``value_range``.

        >>> Tolerances(atol={"": 1e-2}).effective_atol("scores", 0.004)  # low-confidence scores
        0.0004
        >>> Tolerances(atol={"": 1.0}).effective_atol("boxes", 128.0)   # pixels: the nominal atol
        1.0
        """
        atol = self.for_output(name)[0]
        if not np.isfinite(value_range):
            return atol
        return float(min(atol, max(self.atol_floor, self.range_fraction * value_range)))


FP32_TOLERANCES = Tolerances(atol={"": 1e-4, "boxes": 1e-2}, rtol={"": 1e-3, "boxes": 1e-4})
FP16_TOLERANCES = Tolerances(atol={"": 5e-2, "scores": 1e-2, "boxes": 1.0}, rtol={"": 1e-2, "scores": 1e-2, "boxes": 1e-2},
                             max_mismatch=1e-2)
#: INT8: reported, never deciding (see parity.thresholds): 8-bit activations move logits by about 1/256 of
#: each tensor's calibrated range per layer, so the errors are in the tenths; the task level decides.
INT8_TOLERANCES = Tolerances(atol={"": 0.5, "scores": 0.1, "boxes": 8.0}, rtol={"": 0.1, "scores": 0.1, "boxes": 0.05},
                             max_mismatch=5e-2)




@dataclass
class DetectionRule:
    """The agreement level's rule (its JSON key stays ``detection``), for each task's agreement:

    - detection (and instance segmentation): references with score >= ``score_thresh`` matched by class and IoU >=
      ``iou``; pass when >= ``min_match`` of them match and no matched pair differs in score by more than
      ``max_score_diff``; instance masks of matched pairs must overlap with IoU >= ``mask_iou`` on average;
    - semantic segmentation (``pixels``): at least ``pixel_agreement`` of the pixels get PyTorch's class."""

    score_thresh: float = 0.3
    iou: float = 0.9
    min_match: float = 0.99
    max_score_diff: float = 1e-3
    pixel_agreement: float = 0.999
    mask_iou: float = 0.98


@dataclass
class TaskRule:
    """Task-level rule, in points (1 point = 0.01 mAP or 1 % accuracy): pass when the artifact's metric
    >= PyTorch's - tolerance; classifiers also need top-1 agreement >= ``min_agreement``."""

    map_points: float = 0.1
    top1_points: float = 0.1
    min_agreement: float = 0.999
    miou_points: float = 0.1
    mask_map_points: float = 0.1
    score_thresh: float = 0.05  # detections kept for mAP (COCO practice: low threshold, NMS, top 100)
    nms_iou: float = 0.6
    max_detections: int = 100


@dataclass
class Thresholds:
    """The rules of one precision.  ``tensor_decides``: whether the tensor level can fail an artifact (INT8: it is
    reported for information, and the detection and task levels decide)."""

    tensor: Tolerances
    detection: DetectionRule
    task: TaskRule
    tensor_decides: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return {"tensor": asdict(self.tensor), "detection": asdict(self.detection), "task": asdict(self.task),
                "tensor_decides": self.tensor_decides}


#: Defaults per precision.  FP32: exports reproduce PyTorch to ~1e-5, so any task-level change beyond
#: score ties is a bug (0.1 point, 99.9 % agreement).  FP16: the issue's 0.2 mAP point; top-1 may flip
#: only where the two best logits are within the FP16 logit error (<= 5e-2): 0.5 point, 99 % agreement.
#: INT8: the tensor level informs only; 90 % of PyTorch's detections must match at IoU 0.5 with no score moved
#: by more than 0.5 (measured on the demo detector: one detection of 156 moves by 0.44 in the symmetric TensorRT
#: form where mAP drops by 0.15 point: a single score near a sigmoid's steep part says little), and the task
#: metric may drop by at most 1 point (``--int8-max-drop``): the task level is what the gate is for.  Segmentation's
#: pixel agreement: FP32 99.9 %, FP16 99 %, INT8 85 % (8-bit activations flip pixels wherever two classes' logits are
#: close: 90.6 % agreed on a random-weight DeepLabV3+ whose mIoU moved by 0.004 point; the mIoU decides).
DEFAULT_THRESHOLDS: Dict[str, Thresholds] = {
    "fp32": Thresholds(FP32_TOLERANCES, DetectionRule(max_score_diff=1e-3), TaskRule(0.1, 0.1, 0.999)),
    "fp16": Thresholds(FP16_TOLERANCES, DetectionRule(max_score_diff=2e-2, pixel_agreement=0.99, mask_iou=0.95),
                       TaskRule(0.2, 0.5, 0.99, miou_points=0.2, mask_map_points=0.2)),
    "int8": Thresholds(INT8_TOLERANCES, DetectionRule(iou=0.5, min_match=0.9, max_score_diff=0.5, pixel_agreement=0.85,
                                                      mask_iou=0.8),
                       TaskRule(1.0, 1.0, 0.9, miou_points=1.0, mask_map_points=1.0), tensor_decides=False),
}


def _merge(obj, updates: Dict[str, Any], where: str):
    names = {f for f in obj.__dataclass_fields__}
    for k, v in updates.items():
        if k not in names:
            raise ParityError(f"{where}: unknown key {k!r}; allowed: {', '.join(sorted(names))}")
        cur = getattr(obj, k)
        if isinstance(cur, dict):
            if not isinstance(v, dict) or not all(isinstance(x, (int, float)) for x in v.values()):
                raise ParityError(f"{where}.{k}: expected an object of output name -> number, got {v!r}")
            cur.update({name: float(x) for name, x in v.items()})
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ParityError(f"{where}.{k}: expected a non-negative number, got {v!r}")
        else:
            setattr(obj, k, type(cur)(v))


def thresholds_for(precision: str) -> Thresholds:
    """The default rules of ``precision`` (fp32, fp16 or int8)."""
    return DEFAULT_THRESHOLDS[precision]


def load_thresholds(path: Optional[str | Path] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Thresholds]:
    """The default thresholds, updated from a JSON file and/or a dict of the same shape::

        {"fp16": {"tensor": {"atol": {"boxes": 2.0}}, "detection": {"min_match": 0.98},
                  "task": {"map_points": 0.5}},
         "fp32": {...}}

    Keys not given keep their defaults; an unknown key is an error naming it.
    """
    out = {k: copy.deepcopy(v) for k, v in DEFAULT_THRESHOLDS.items()}
    layers = []
    if path is not None:
        p = Path(path)
        try:
            layers.append((str(p), json.loads(p.read_text())))
        except FileNotFoundError:
            raise ParityError(f"{p}: tolerances file not found") from None
        except json.JSONDecodeError as exc:
            raise ParityError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if overrides:
        layers.append(("overrides", overrides))
    for where, data in layers:
        if not isinstance(data, dict):
            raise ParityError(f"{where}: expected an object with keys fp32/fp16")
        for prec, levels in data.items():
            if prec not in out:
                raise ParityError(f"{where}: unknown precision {prec!r}; allowed: {', '.join(out)}")
            if not isinstance(levels, dict):
                raise ParityError(f"{where}.{prec}: expected an object with keys tensor/detection/task")
            for level, values in levels.items():
                if level not in ("tensor", "detection", "task"):
                    raise ParityError(f"{where}.{prec}: unknown level {level!r}; allowed: tensor, detection, task")
                if not isinstance(values, dict):
                    raise ParityError(f"{where}.{prec}.{level}: expected an object")
                _merge(getattr(out[prec], level), values, f"{where}.{prec}.{level}")
    return out
