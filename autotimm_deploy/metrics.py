"""Task-level metrics: COCO-style mAP (pycocotools' COCOeval) and top-1 accuracy."""

from __future__ import annotations

import contextlib
import io
from typing import Dict, Sequence

import numpy as np

__all__ = ["coco_map", "coco_mask_map", "top1_accuracy"]


def coco_map(
    predictions: Sequence[Dict[str, np.ndarray]],
    ground_truth: Sequence[Dict[str, np.ndarray]],
    num_classes: int,
) -> Dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 with pycocotools' evaluator.

    ``predictions[k]`` has ``boxes`` (n, 4) xyxy, ``scores`` (n,), ``labels`` (n,);
    ``ground_truth[k]`` has ``boxes`` and ``labels`` for the same image.

    >>> gt = [{"boxes": np.array([[0, 0, 10, 10.]]), "labels": np.array([0])}]
    >>> pr = [{"boxes": np.array([[0, 0, 10, 10.]]), "scores": np.array([0.9]), "labels": np.array([0])}]
    >>> coco_map(pr, gt, num_classes=1)["map50"]
    1.0
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} ground-truth images")
    images, anns, dets = [], [], []
    for k, (pr, gt) in enumerate(zip(predictions, ground_truth)):
        images.append({"id": k})
        for b, l in zip(np.asarray(gt["boxes"], dtype=float).reshape(-1, 4), np.asarray(gt["labels"]).reshape(-1)):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": int(l), "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": 0})
        for b, s, l in zip(np.asarray(pr["boxes"], dtype=float).reshape(-1, 4), np.asarray(pr["scores"]).reshape(-1),
                           np.asarray(pr["labels"]).reshape(-1)):
            dets.append({"image_id": k, "category_id": int(l), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "score": float(s)})
    if not anns:
        raise ValueError("ground truth holds no boxes: mAP is undefined")
    gt_api = COCO()
    gt_api.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api.createIndex()
        if not dets:
            return {"map50": 0.0, "map": 0.0}
        dt_api = gt_api.loadRes(dets)
        ev = COCOeval(gt_api, dt_api, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": round(float(max(ev.stats[0], 0.0)), 6), "map50": round(float(max(ev.stats[1], 0.0)), 6)}


def coco_mask_map(predictions: Sequence[Dict[str, np.ndarray]], ground_truth: Sequence[Dict],
                  sizes: Sequence[Sequence[int]], num_classes: int) -> Dict[str, float]:
    """Mask mAP@0.5 and mAP@0.5:0.95 with pycocotools' ``segm`` evaluator.

    ``predictions[k]``: ``masks`` (n, H, W) bool, ``scores``, ``labels``; ``ground_truth[k]``: ``masks`` (COCO
    segmentations: polygons, RLE or bool arrays) and ``labels``; ``sizes[k]``: (H, W) of image k.

    >>> m = np.zeros((1, 8, 8), bool); m[0, 2:6, 2:6] = True
    >>> coco_mask_map([{"masks": m, "scores": np.array([0.9]), "labels": np.array([0])}],
    ...               [{"masks": [[[2, 2, 6, 2, 6, 6, 2, 6]]], "labels": np.array([0])}], [(8, 8)], 1)["map50"]
    1.0
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} ground-truth images")
    images, anns, dets = [], [], []

    def to_rle(seg, h, w):
        if isinstance(seg, np.ndarray):
            r = mask_utils.encode(np.asfortranarray(seg.astype(np.uint8)))
        elif isinstance(seg, list):  # polygons
            r = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            r = mask_utils.frPyObjects(seg, h, w)
        else:
            r = dict(seg, counts=seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"])
        return r

    for k, (pr, gt, (h, w)) in enumerate(zip(predictions, ground_truth, sizes)):
        images.append({"id": k, "height": int(h), "width": int(w)})
        for seg, l in zip(gt["masks"] or [], np.asarray(gt["labels"]).reshape(-1)):
            r = to_rle(seg, h, w)
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": int(l), "segmentation": r,
                         "area": float(mask_utils.area(r)), "bbox": [float(v) for v in mask_utils.toBbox(r)],
                         "iscrowd": 0})
        for m, s, l in zip(pr["masks"], np.asarray(pr["scores"]).reshape(-1), np.asarray(pr["labels"]).reshape(-1)):
            r = to_rle(np.asarray(m, bool), h, w)
            dets.append({"image_id": k, "category_id": int(l), "segmentation": r, "score": float(s)})
    if not anns:
        raise ValueError("ground truth holds no instance masks: mask mAP is undefined")
    gt_api = COCO()
    gt_api.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api.createIndex()
        if not dets:
            return {"map50": 0.0, "map": 0.0}
        ev = COCOeval(gt_api, gt_api.loadRes(dets), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": round(float(max(ev.stats[0], 0.0)), 6), "map50": round(float(max(ev.stats[1], 0.0)), 6)}


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    return float((logits.argmax(axis=1) == labels).mean())
