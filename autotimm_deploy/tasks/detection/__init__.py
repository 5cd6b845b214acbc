"""Object detection: per-level class / distance / centerness maps, decoded into boxes and scores, post-processed
with the family's NMS rule; detections matched at the parity level, COCO mAP as the task metric.

The decoding convention every detector family shares (the family says how l, t, r, b and the scores come from its
raw outputs): the anchor point of cell (i, j) of a level at stride s is ``((j + 0.5) * s, (i + 0.5) * s)``; the box
is ``(px - l, py - t, px + r, py + b)`` clipped to the network input; candidates are flattened level by level (P3
first), row-major within a level.  See :mod:`autotimm_deploy.models.decode` (reference) and :mod:`.graph` (fused).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ExportError
from ..base import Agreement, GraphInfo, Task, TritonTensor

__all__ = ["DetectionTask", "Detections"]

#: Roles with one map per FPN level.
DET_ROLES = ("class_logits", "ltrb", "centerness")
#: Detections labelled in a picture (the others get a thin box): more labels than this hide the image.
MAX_LABELS = 25
_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60)]


@dataclass
class Detections:
    """One image's detections in its own pixels."""

    boxes: np.ndarray  # (n, 4) xyxy in original image pixels
    scores: np.ndarray
    labels: np.ndarray
    class_names: List[str]
    width: int
    height: int

    def to_dict(self) -> Dict:
        return {"width": self.width, "height": self.height,
                "detections": [{"box": [round(float(v), 3) for v in b], "score": round(float(s), 6), "label": int(l),
                                "class_name": n}
                               for b, s, l, n in zip(self.boxes, self.scores, self.labels, self.class_names)]}


def colour(label: int) -> Tuple[int, int, int]:
    return _COLOURS[int(label) % len(_COLOURS)]


class DetectionTask(Task):
    name = "detection"
    roles = (("class_logits", "ltrb"), ("centerness",))
    per_level_roles = DET_ROLES
    decode_modes = ("raw", "activations", "boxes")
    default_decode = "boxes"
    agreement_level = "detection"
    metric_keys = ("map", "map50")
    metric_names = {"map": "mAP@0.5:0.95", "map50": "mAP@0.5"}
    points_field = "map_points"
    results_file = "detections.json"
    annotation_formats = "COCO JSON, per-image JSON or CSV boxes"
    result_type: ClassVar[type] = Detections

    def check_family(self, family) -> None:
        super().check_family(family)
        keys = family.keys
        if not family.score or any(k not in keys for k in family.score):
            raise ExportError(f"family {family.name}: score {family.score} must name outputs among {list(keys)}")

    def convention(self, family) -> Dict[str, Any]:
        fmt = lambda o: (f"{o.activation}(min({o.key}, {o.clamp_max}))" if o.clamp_max is not None  # noqa: E731
                         else f"{o.activation}({o.key})")
        ltrb = family.output("ltrb")
        return {
            "name": family.convention,
            "anchor_point": "((j + 0.5) * stride, (i + 0.5) * stride)",
            "distances": f"{fmt(ltrb)} pixels, order l, t, r, b",
            "box": "xyxy = (px - l, py - t, px + r, py + b) clipped to [0, W] x [0, H]",
            "score": " * ".join(fmt(family.output_by_key(k)) for k in family.score),
            "order": "levels P3..P7, row-major within a level",
            **({"bbox_log_clamp": ltrb.clamp_max} if ltrb.clamp_max is not None else {}),
        }

    def spatial_output(self, family, name: str) -> bool:
        return "_p" in name

    def flatten(self, family, forward) -> Tuple:
        """Per-level outputs one tensor per level, the others (an instance segmentor's mask features) as they are."""
        out: List = []
        for o, group in zip(family.outputs, forward):
            out.extend(group if o.role in self.per_level_roles else [group])
        return tuple(out)

    def check_decode(self, decode: str, topk: Optional[int]) -> None:
        if decode not in self.decode_modes:
            raise ExportError(f"--decode must be one of {', '.join(self.decode_modes)}, got {decode!r}")
        if topk is not None and decode != "boxes":
            raise ExportError(f"--topk needs --decode boxes (got --decode {decode})")

    # -- export ----------------------------------------------------------------------------------
    def fuse(self, raw, decode: str, topk: Optional[int], family, info: GraphInfo):
        from .graph import apply_decode

        return apply_decode(raw, decode, info.strides, info.num_classes, info.static_hw, topk, family)

    def reference(self, model, forward, image_hw, decode: str, topk: Optional[int]):
        import torch

        from ...models.decode import activate, decode_outputs, raw_outputs

        family = model.family
        raw = raw_outputs(family, forward)
        levels = len(model.strides)
        single = OrderedDict((o.key, raw[o.key].numpy()) for o in family.outputs if o.role not in DET_ROLES)
        if decode in ("raw", "activations"):
            act = (lambda o, t: t) if decode == "raw" else activate
            values = [act(o, t).numpy() if o.role in DET_ROLES else raw[o.key].numpy()
                      for o in family.outputs for t in (raw[o.key] if o.role in DET_ROLES else (None,))]
            return OrderedDict(zip(self.output_names(family, levels), values))
        boxes, scores = decode_outputs(family, raw, model.strides, tuple(image_hw))
        if topk is None:
            return OrderedDict(boxes=boxes.numpy(), scores=scores.numpy(), **single)
        k = min(topk, scores.shape[1])
        idx = scores.max(dim=2).values.topk(k, dim=1).indices
        return OrderedDict(
            boxes=torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4)).numpy(),
            scores=torch.gather(scores, 1, idx[..., None].expand(-1, -1, scores.shape[2])).numpy(),
            indices=idx.numpy(), **single,
        )

    # -- runtime ---------------------------------------------------------------------------------
    def detections(self, outputs: Dict[str, np.ndarray], info, size: Tuple[int, int], score_thresh=None,
                   iou_thresh=None, max_detections=None, class_agnostic: bool = False) -> List[Dict[str, np.ndarray]]:
        """Per image, boxes / scores / labels in network-input pixels (the family's rule; thresholds left None
        are the family's)."""
        from ...models.decode import postprocess_outputs

        return postprocess_outputs(outputs, info.decode, info.strides, size, score_thresh, iou_thresh, max_detections,
                                   class_agnostic, family=info.family)

    def postprocess(self, outputs, info, size, letterboxes, score_thresh=None, iou_thresh=None, max_detections=None,
                    class_agnostic: bool = False, **_: Any) -> List[Detections]:
        dets = self.detections(outputs, info, size, score_thresh, iou_thresh, max_detections, class_agnostic)
        out = []
        for d, lb in zip(dets, letterboxes):
            names = [info.class_names[int(l)] for l in d["labels"]]
            out.append(Detections(lb.to_image(d["boxes"].astype(np.float32).reshape(-1, 4)), d["scores"],
                                  d["labels"], names, lb.width, lb.height))
        return out

    def settings(self, family, score_thresh=None, iou_thresh=None, max_detections=None, **_: Any) -> Dict[str, Any]:
        rule = family.postprocess
        return {"candidates": rule.candidates, "pre_nms_top_k": rule.pre_nms_top_k,
                "score_thr": rule.score_thresh if score_thresh is None else score_thresh,
                "iou_thr": rule.iou_thresh if iou_thresh is None else iou_thresh,
                "max_det": rule.max_detections if max_detections is None else max_detections}

    def summary(self, result: Detections) -> Tuple[int, str]:
        return len(result.boxes), ", ".join(f"{n} {s:.2f}" for n, s in zip(result.class_names[:3], result.scores[:3]))

    def draw(self, image, result: Detections, line_width: int, font) -> None:
        """Boxes and labels, weakest first so that a stronger detection's box and label are drawn over a weaker one's;
        only the :data:`MAX_LABELS` best are labelled (a hundred labels cover the picture), the count of the others
        written in a corner."""
        from PIL import ImageDraw

        from ...drawing import draw_labels

        draw = ImageDraw.Draw(image)
        order = np.argsort(np.asarray(result.scores), kind="stable")  # ascending: the strongest last, on top
        labelled = set(order[::-1][:MAX_LABELS].tolist())
        labels = []
        for i in order:
            b, lb = result.boxes[i], result.labels[i]
            draw.rectangle([float(v) for v in b], outline=colour(lb), width=line_width if i in labelled else 1)
            if i in labelled:
                labels.append((f"{result.class_names[i]} {result.scores[i]:.2f}", float(b[0]), float(b[1]), colour(lb)))
        draw_labels(draw, labels, line_width, font)
        if len(order) > MAX_LABELS:
            draw_labels(draw, [(f"+{len(order) - MAX_LABELS} weaker detections, unlabelled (thin boxes)", 0.0,
                                float(image.height), (40, 40, 40))], line_width, font)

    # -- parity ----------------------------------------------------------------------------------
    def agreement(self, ref, out, sizes, info, rule, tolerances) -> Agreement:
        """Detections of both sides with the family's post-processing, matched above the rule's score threshold
        (by class, IoU >= ``rule.iou``, or the same box within the boxes' atol); when the reference has none there,
        its top :data:`~.matching.FALLBACK_TOP_K` candidates per image (any score) instead."""
        from .matching import FALLBACK_TOP_K, match_detections

        box_atol = tolerances.for_output("boxes")[0]

        def both(score_thresh=None, ref_max=None, out_max=None):
            ref_d, out_d = [], []
            for ri, oi, size in zip(ref, out, sizes):
                ref_d += self.detections(dict(ri), info, size, score_thresh, None, ref_max)
                out_d += self.detections(dict(oi), info, size, score_thresh, None, out_max)
            return ref_d, out_d

        kw = dict(iou_thr=rule.iou, min_match=rule.min_match, box_atol=box_atol, score_limit=rule.max_score_diff)
        det = match_detections(*both(), score_thr=rule.score_thresh, **kw)
        if not det.reference:
            # the artifact's best 2K: a candidate that swapped with a near-equal one just below the K-th is found
            det = match_detections(*both(0.0, FALLBACK_TOP_K, 2 * FALLBACK_TOP_K), score_thr=0.0, **kw)
            det.score_thr, det.basis = rule.score_thresh, "top-k"
        return _agreement_of(det, rule)

    def metric(self, predictions: Sequence[Detections], dataset, num_classes: int) -> Dict[str, float]:
        from ...metrics import coco_map

        gts = [{"boxes": s.boxes, "labels": s.labels} for s in dataset.samples]
        preds = [{"boxes": p.boxes, "scores": p.scores, "labels": p.labels} for p in predictions]
        return coco_map(preds, gts, num_classes)

    def read_annotations(self, root, images, labels, annotations=None):
        from .data import read_box_annotations

        return read_box_annotations(root, images, labels, annotations, self.name)

    # -- serving ---------------------------------------------------------------------------------
    def triton_outputs(self, num_classes: int, top_k: int) -> List[TritonTensor]:
        return [TritonTensor("boxes", "float32", (-1, 4)), TritonTensor("scores", "float32", (-1,)),
                TritonTensor("labels", "int32", (-1,), labels=True), TritonTensor("num_detections", "int32", (1,))]

    def triton_arrays(self, results: Sequence[Detections], top_k: int) -> Dict[str, np.ndarray]:
        """Padded to the most detections of any image (boxes 0, scores 0, labels -1), with ``num_detections``."""
        k = max([len(d.scores) for d in results] + [0])
        b = len(results)
        boxes, scores = np.zeros((b, k, 4), np.float32), np.zeros((b, k), np.float32)
        labels, num = np.full((b, k), -1, np.int32), np.zeros((b, 1), np.int32)
        for i, d in enumerate(results):
            n = len(d.scores)
            boxes[i, :n], scores[i, :n], labels[i, :n], num[i, 0] = d.boxes, d.scores, d.labels, n
        return {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": num}

    def from_triton(self, arrays, index, width, height, class_names) -> Detections:
        n = int(arrays["num_detections"][index, 0])
        labels = arrays["labels"][index, :n].astype(np.int64)
        return Detections(arrays["boxes"][index, :n], arrays["scores"][index, :n], labels,
                          [class_names[l] if l < len(class_names) else str(l) for l in labels], width, height)


def _agreement_of(det, rule) -> Agreement:
    """The detection level's verdict and message (one function: the export, autotimm-parity and the gates)."""
    from dataclasses import asdict

    from .matching import FALLBACK_TOP_K

    details = {**asdict(det), "matched_fraction": det.matched_fraction, "rule": asdict(rule)}
    if det.status == "not informative":  # never a pass: said as such, and a failure under --strict
        a = Agreement("detection", "skipped", "not informative: PyTorch gave no detection and no candidate on these "
                                              "inputs: nothing to match", details)
    else:
        what = (f"PyTorch detections (score >= {rule.score_thresh})" if det.basis == "threshold" else
                f"of PyTorch's top candidates (none scored >= {rule.score_thresh}: the best {FALLBACK_TOP_K} per "
                "image)")
        text = (f"{det.matched}/{det.reference} {what} matched by class and IoU >= {rule.iou} "
                f"({det.matched_fraction:.1%}, need {rule.min_match:.0%}); max score difference "
                f"{det.max_score_diff:.3g} (limit {rule.max_score_diff:g})")
        if det.status == "fail" and det.matched < det.reference and det.unmatched_best_iou is not None:
            text += f" — unmatched detections' best same-class IoU: median {det.unmatched_best_iou:.2f}"
        a = Agreement("detection", det.status, text, details)
    a.raw = det  # the DetectionAgreement itself, for the reports' detection fields
    return a
