"""Training of the small demo models on the synthetic shapes dataset (CPU, minutes).

The detector is trained with the FCOS losses (sigmoid focal loss, GIoU on decoded boxes
weighted by the centerness target, BCE on centerness) using exactly the decoding convention
of :mod:`autotimm_deploy.models.decode`, so the exported graph decodes what was trained.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.decode import BBOX_LOG_CLAMP, anchor_points
from ..models.detector import ObjectDetector
from ..models.classifier import ImageClassifier
from .shapes import CLASSES, SPLIT_SEEDS, render_classification_sample, render_detection_sample

__all__ = ["DetectorTrainConfig", "ClassifierTrainConfig", "fcos_targets", "fcos_loss", "train_detector",
           "train_classifier", "to_tensor", "evaluate_detector", "evaluate_classifier"]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_tensor(images: Sequence[np.ndarray], mean=MEAN, std=STD) -> Tensor:
    """uint8 (H, W, 3) images -> normalised float (B, 3, H, W)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


@dataclass
class DetectorTrainConfig:
    backbone: str = "test_resnet"
    fpn_channels: int = 64
    num_convs: int = 2
    image_size: int = 128
    batch_size: int = 32
    steps: int = 2000
    lr: float = 2e-3
    weight_decay: float = 1e-4
    #: FCOS size ranges on max(l, t, r, b) per level, scaled to the 128-pixel demo images
    size_ranges: Tuple[Tuple[float, float], ...] = ((0, 24), (24, 48), (48, 96), (96, 192), (192, 1e8))
    center_radius: float = 1.5
    seed: int = 0
    time_limit_s: float = 12 * 60


def fcos_targets(
    points: Tensor, strides: Tensor, ranges: Tensor, gt_boxes: Tensor, gt_labels: Tensor, radius: float
) -> Tuple[Tensor, Tensor]:
    """Per-point class target (-1 = background) and box target (N, 4) for one image."""
    n = points.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long), torch.zeros(n, 4)
    px, py = points[:, 0:1], points[:, 1:2]
    l = px - gt_boxes[None, :, 0]
    t = py - gt_boxes[None, :, 1]
    r = gt_boxes[None, :, 2] - px
    b = gt_boxes[None, :, 3] - py
    ltrb = torch.stack([l, t, r, b], dim=-1)  # (N, G, 4)
    inside = ltrb.min(dim=-1).values > 0
    cx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
    cy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    rad = strides[:, None] * radius
    in_center = ((px - cx[None]).abs() < rad) & ((py - cy[None]).abs() < rad)
    max_d = ltrb.max(dim=-1).values
    in_range = (max_d >= ranges[:, 0:1]) & (max_d <= ranges[:, 1:2])
    area = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand(n, -1).clone()
    area[~(inside & in_center & in_range)] = float("inf")
    best_area, best = area.min(dim=1)
    cls_t = gt_labels[best].clone()
    cls_t[torch.isinf(best_area)] = -1
    box_t = ltrb[torch.arange(n), best]
    return cls_t, box_t


def _flatten(maps: List[Tensor]) -> Tensor:
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # (B, N, C)


def fcos_loss(outputs, targets: List[Tuple[Tensor, Tensor]], points: Tensor, num_classes: int) -> Dict[str, Tensor]:
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    cls_scores, bbox_preds, centernesses = outputs
    cls = _flatten(cls_scores)
    box = _flatten(bbox_preds)
    ctr = _flatten(centernesses)[..., 0]
    cls_t = torch.stack([t[0] for t in targets])
    box_t = torch.stack([t[1] for t in targets])
    pos = cls_t >= 0
    num_pos = max(float(pos.sum()), 1.0)
    onehot = torch.zeros_like(cls)
    onehot[pos, cls_t[pos]] = 1.0
    loss_cls = sigmoid_focal_loss(cls, onehot, alpha=0.25, gamma=2.0, reduction="sum") / num_pos
    if not pos.any():
        zero = box.sum() * 0
        return {"cls": loss_cls, "box": zero, "ctr": zero + ctr.sum() * 0}
    bt = box_t[pos]
    lr_, tb_ = bt[:, [0, 2]], bt[:, [1, 3]]
    ctr_t = torch.sqrt((lr_.min(1).values / lr_.max(1).values) * (tb_.min(1).values / tb_.max(1).values))
    p = points.unsqueeze(0).expand(cls.shape[0], -1, -1)[pos]
    d = torch.exp(torch.clamp(box[pos], max=BBOX_LOG_CLAMP))
    pred_boxes = torch.stack([p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], 1)
    gt_boxes = torch.stack([p[:, 0] - bt[:, 0], p[:, 1] - bt[:, 1], p[:, 0] + bt[:, 2], p[:, 1] + bt[:, 3]], 1)
    giou = generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="none")
    loss_box = (giou * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos], ctr_t, reduction="sum") / num_pos
    return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr}


def _level_grid(model: ObjectDetector, size: int, ranges) -> Tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        cls, _, _ = model(torch.zeros(1, 3, size, size))
    pts, strides, rngs = [], [], []
    for m, s, rg in zip(cls, model.strides, ranges):
        h, w = m.shape[-2:]
        pts.append(anchor_points(h, w, s))
        strides.append(torch.full((h * w,), float(s)))
        rngs.append(torch.tensor(rg, dtype=torch.float32).expand(h * w, 2))
    return torch.cat(pts), torch.cat(strides), torch.cat(rngs)


def _lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_detector(cfg: DetectorTrainConfig, log: Optional[Callable[[str], None]] = print) -> ObjectDetector:
    torch.manual_seed(cfg.seed)
    model = ObjectDetector(cfg.backbone, num_classes=len(CLASSES), fpn_channels=cfg.fpn_channels,
                           num_convs=cfg.num_convs)
    model.eval()
    points, strides, ranges = _level_grid(model, cfg.image_size, cfg.size_ranges)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.time()
    sample = SPLIT_SEEDS["train"]
    for step in range(cfg.steps):
        batch = [render_detection_sample(sample + k, size=cfg.image_size) for k in range(cfg.batch_size)]
        sample += cfg.batch_size
        images = to_tensor([b[0] for b in batch])
        targets = [fcos_targets(points, strides, ranges, torch.from_numpy(b[1]), torch.from_numpy(b[2]),
                                cfg.center_radius) for b in batch]
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        losses = fcos_loss(model(images), targets, points, len(CLASSES))
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        if log and (step % 100 == 0 or step == cfg.steps - 1):
            log(f"step {step:5d}/{cfg.steps} loss {loss.item():.3f} "
                + " ".join(f"{k}={v.item():.3f}" for k, v in losses.items())
                + f" {time.time() - start:.0f}s")
        if time.time() - start > cfg.time_limit_s:
            if log:
                log(f"time limit reached at step {step}")
            break
    return model.eval()


@torch.no_grad()
def evaluate_detector(model: ObjectDetector, split: str = "val", count: int = 500, size: int = 128,
                      batch_size: int = 50, score_thresh: float = 0.05) -> Dict[str, float]:
    """COCO-style mAP of ``model`` on ``count`` images of a synthetic split."""
    from ..metrics import coco_map
    from .shapes import detection_split

    data = detection_split(split, count, size)
    preds, gts = [], []
    for i in range(0, count, batch_size):
        chunk = data[i : i + batch_size]
        out = model.predict(to_tensor([c[0] for c in chunk]), score_thresh=score_thresh)
        for o, c in zip(out, chunk):
            preds.append({k: v.numpy() for k, v in o.items()})
            gts.append({"boxes": c[1], "labels": c[2]})
    return coco_map(preds, gts, num_classes=len(CLASSES))


@dataclass
class ClassifierTrainConfig:
    backbone: str = "test_resnet"
    image_size: int = 64
    batch_size: int = 64
    steps: int = 600
    lr: float = 2e-3
    seed: int = 0
    time_limit_s: float = 5 * 60


def train_classifier(cfg: ClassifierTrainConfig, log: Optional[Callable[[str], None]] = print) -> ImageClassifier:
    torch.manual_seed(cfg.seed)
    model = ImageClassifier(cfg.backbone, num_classes=len(CLASSES)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    start = time.time()
    sample = SPLIT_SEEDS["train"]
    for step in range(cfg.steps):
        batch = [render_classification_sample(sample + k, cfg.image_size) for k in range(cfg.batch_size)]
        sample += cfg.batch_size
        x = to_tensor([b[0] for b in batch])
        y = torch.tensor([b[1] for b in batch])
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.steps, cfg.lr, warmup=50)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 100 == 0 or step == cfg.steps - 1):
            log(f"step {step:5d}/{cfg.steps} loss {loss.item():.3f} {time.time() - start:.0f}s")
        if time.time() - start > cfg.time_limit_s:
            break
    return model.eval()


@torch.no_grad()
def evaluate_classifier(model: ImageClassifier, split: str = "val", count: int = 1000, size: int = 64) -> float:
    from ..metrics import top1_accuracy

    base = SPLIT_SEEDS[split]
    samples = [render_classification_sample(base + k, size) for k in range(count)]
    logits = torch.cat([model(to_tensor([s[0] for s in samples[i : i + 200]])) for i in range(0, count, 200)])
    return top1_accuracy(logits.numpy(), np.array([s[1] for s in samples]))
