"""The reference decoder and post-processing, for every family: what the fused graph and every runtime
must reproduce.  A :class:`~autotimm_deploy.models.family.Family` says what each raw output means; this
module applies it.

For a feature map of size (H_l, W_l) at stride s, cell (i, j) has the anchor point
``px = (j + 0.5) * s``, ``py = (i + 0.5) * s`` in input pixels.  Each raw output goes through its
family's activation (after its ``clamp_max``); the ``ltrb`` output then holds pixel distances and the box
is ``(px - l, py - t, px + r, py + b)`` clipped to ``[0, W] x [0, H]`` of the network input; the class
scores are the product of the activated outputs the family names in ``score`` (the seed's FCOS:
``sigmoid(cls) * sigmoid(ctr)`` with ``exp(min(bbox, 10))`` distances).

Candidates are flattened level by level (P3 first), each level in row-major (i, j) order, so
candidate ``n`` of level ``l`` is ``offset_l + i * W_l + j``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .families.seed import BBOX_LOG_CLAMP, SEED_FCOS
from .family import LEVELS, PER_LEVEL_ROLES, Family, RawOutput

__all__ = [
    "BBOX_LOG_CLAMP",
    "DECODING_CONVENTION",
    "anchor_points",
    "activate",
    "raw_outputs",
    "decode_outputs",
    "decode_activated",
    "decode",
    "batched_nms_postprocess",
    "postprocess_outputs",
]

#: The seed's convention (kept for callers of the first releases); every family has its own, which its task
#: describes: ``tasks.task_of(family).convention(family)``.
DECODING_CONVENTION = {
    "name": SEED_FCOS.convention,
    "anchor_point": "((j + 0.5) * stride, (i + 0.5) * stride)",
    "distances": f"exp(min(bbox, {BBOX_LOG_CLAMP})) pixels, order l, t, r, b",
    "box": "xyxy = (px - l, py - t, px + r, py + b) clipped to [0, W] x [0, H]",
    "score": "sigmoid(cls) * sigmoid(ctr)",
    "order": "levels P3..P7, row-major within a level",
    "bbox_log_clamp": BBOX_LOG_CLAMP,
}


def anchor_points(height: int, width: int, stride: int, *, device=None, dtype=torch.float32) -> Tensor:
    """(height * width, 2) tensor of (px, py) anchor points in row-major order.

    >>> anchor_points(2, 3, 8).tolist()
    [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [4.0, 12.0], [12.0, 12.0], [20.0, 12.0]]
    """
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def activate(output: RawOutput, x: Tensor) -> Tensor:
    """An output's declared activation: probabilities (``sigmoid``, ``softmax`` over classes) or pixel
    distances (``exp`` of log-distances, ``identity``), after ``min(x, clamp_max)`` when declared.

    >>> from autotimm_deploy.models.families import SEED_FCOS
    >>> activate(SEED_FCOS.output("ltrb"), torch.tensor([0.0, 200.0])).tolist()
    [1.0, 22026.46484375]
    """
    x = x.float()
    if output.clamp_max is not None:
        x = torch.clamp(x, max=output.clamp_max)
    if output.activation == "sigmoid":
        return torch.sigmoid(x)
    if output.activation == "exp":
        return torch.exp(x)
    if output.activation == "softmax":
        return torch.softmax(x, dim=1)
    return x


def _levelled(family: Family):
    """The family's per-level outputs (an instance segmentor's ``mask_features`` is one tensor, not decoded here)."""
    return [o for o in family.outputs if o.role in PER_LEVEL_ROLES]


def raw_outputs(family: Family, network_output) -> Dict[str, List[Tensor]]:
    """A detector's forward result (one list per output key, in the family's order; single-tensor outputs as they
    are) as {key: levels}."""
    groups = tuple(network_output)
    if len(groups) != len(family.outputs):
        raise ValueError(f"family {family.name} declares {len(family.outputs)} outputs {list(family.keys)}, "
                         f"the network returned {len(groups)}")
    return dict(zip(family.keys, groups))


def decode_activated(family: Family, acts: Dict[str, Sequence[Tensor]], strides: Sequence[int],
                     image_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """Boxes (B, N, 4) xyxy and scores (B, N, C) from activated per-level outputs ({key: [levels]})."""
    ltrb = family.output("ltrb").key
    keys = [o.key for o in _levelled(family)]
    if any(len(acts[k]) != len(strides) for k in keys):
        raise ValueError(f"decode needs one map per stride for each of {keys}")
    height, width = int(image_size[0]), int(image_size[1])
    all_boxes, all_scores = [], []
    for lv, stride in enumerate(strides):
        dist = acts[ltrb][lv].float()
        b, _, h, w = dist.shape
        pts = anchor_points(h, w, stride, device=dist.device, dtype=torch.float32)
        dist = dist.flatten(2).transpose(1, 2)  # (B, HW, 4)
        x1 = (pts[:, 0] - dist[..., 0]).clamp(0, width)
        y1 = (pts[:, 1] - dist[..., 1]).clamp(0, height)
        x2 = (pts[:, 0] + dist[..., 2]).clamp(0, width)
        y2 = (pts[:, 1] + dist[..., 3]).clamp(0, height)
        all_boxes.append(torch.stack([x1, y1, x2, y2], dim=-1))
        score = acts[family.score[0]][lv].float()
        for k in family.score[1:]:
            score = score * acts[k][lv].float()
        all_scores.append(score.flatten(2).transpose(1, 2))  # (B, HW, C)
    return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)


def decode_outputs(family: Family, raw: Dict[str, Sequence[Tensor]], strides: Sequence[int],
                   image_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """Decode raw per-level outputs ({key: [levels]}) into ``boxes`` (B, N, 4) and ``scores`` (B, N, C)."""
    acts = {o.key: [activate(o, t) for t in raw[o.key]] for o in _levelled(family)}
    return decode_activated(family, acts, strides, image_size)


def decode(cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], centernesses: Sequence[Tensor],
           strides: Sequence[int], image_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """The seed's decode: ``boxes`` (B, N, 4) xyxy and ``scores`` (B, N, C) from its three output lists.
    ``image_size`` is (H, W) of the network input; boxes are clipped to it."""
    if not (len(cls_scores) == len(bbox_preds) == len(centernesses) == len(strides)):
        raise ValueError("decode needs one cls, bbox and centerness map per stride")
    return decode_outputs(SEED_FCOS, {"cls": cls_scores, "bbox": bbox_preds, "ctr": centernesses}, strides,
                          image_size)


def batched_nms_postprocess(
    boxes: Tensor,
    scores: Tensor,
    score_thresh: float = 0.05,
    iou_thresh: float = 0.6,
    max_detections: int = 100,
    pre_nms_top_k: Optional[int] = 1000,
    agnostic: bool = False,
    candidates: str = "per_class",
) -> List[Dict[str, Tensor]]:
    """NMS on decoded candidates; returns one dict per image with boxes, scores, labels.

    Per image: ``candidates="per_class"`` takes every (box, class) pair with score > ``score_thresh``;
    ``"argmax"`` takes each box's best class if its score > ``score_thresh`` (AutoTimm's rule).  Then the
    ``pre_nms_top_k`` best (``None``: all), greedy NMS per class (IoU > ``iou_thresh`` suppresses; across
    classes with ``agnostic``), sorted by score, at most ``max_detections``.  The C++ runtime (cpp/)
    implements the same rule.
    """
    from torchvision.ops import batched_nms, nms

    results = []
    num_classes = scores.shape[-1]
    for bx, sc in zip(boxes, scores):
        if candidates == "argmax":
            best, label = sc.max(dim=-1)
            keep = torch.nonzero(best > score_thresh).squeeze(1)
            flat, box_of, label_of = best, keep, label[keep]
        else:
            flat = sc.reshape(-1)
            keep = torch.nonzero(flat > score_thresh).squeeze(1)
            box_of, label_of = keep // num_classes, keep % num_classes
        if pre_nms_top_k is not None and keep.numel() > pre_nms_top_k:
            top = flat[keep].topk(pre_nms_top_k).indices
            keep, box_of, label_of = keep[top], box_of[top], label_of[top]
        cand_scores, cand_boxes, cand_labels = flat[keep], bx[box_of], label_of
        if agnostic:
            kept = nms(cand_boxes, cand_scores, iou_thresh)[:max_detections]
        else:
            kept = batched_nms(cand_boxes, cand_scores, cand_labels, iou_thresh)[:max_detections]
        results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cand_labels[kept]})
    return results


def _by_level(t: Dict[str, Tensor], family: Family, num_levels: int) -> Dict[str, List[Tensor]]:
    return {o.key: [t[f"{o.key}_{lv}"] for lv in LEVELS[:num_levels]] for o in _levelled(family)}


def postprocess_outputs(outputs: Dict[str, np.ndarray], decode_mode: str, strides: Sequence[int],
                        image_size: Tuple[int, int], score_thresh: Optional[float] = None,
                        iou_thresh: Optional[float] = None, max_detections: Optional[int] = None,
                        class_agnostic: bool = False, family: Optional[Family] = None) -> List[Dict[str, np.ndarray]]:
    """Decode whatever an export did not (``decode_mode`` "raw", "activations" or "boxes", with or
    without top-k) and run NMS with the family's post-processing (thresholds left ``None`` take the
    family's defaults): one dict of numpy ``boxes``/``scores``/``labels`` per image.

    This is the post-processing of every runtime, so all backends share one implementation.
    """
    family = family or SEED_FCOS
    rule = family.postprocess
    t = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32) if v.dtype != np.int64 else v)
         for k, v in outputs.items()}
    if decode_mode == "raw":
        boxes, scores = decode_outputs(family, _by_level(t, family, len(strides)), strides, image_size)
    elif decode_mode == "activations":
        boxes, scores = decode_activated(family, _by_level(t, family, len(strides)), strides, image_size)
    else:
        boxes, scores = t["boxes"], t["scores"]
    res = batched_nms_postprocess(
        boxes, scores,
        rule.score_thresh if score_thresh is None else score_thresh,
        rule.iou_thresh if iou_thresh is None else iou_thresh,
        rule.max_detections if max_detections is None else max_detections,
        rule.pre_nms_top_k, agnostic=class_agnostic,
        candidates="argmax" if class_agnostic else rule.candidates)
    return [{k: v.numpy() for k, v in r.items()} for r in res]
