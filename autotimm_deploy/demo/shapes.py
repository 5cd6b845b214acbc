"""A deterministic synthetic "shapes" dataset for the demo models and the parity checks.

Each image is a textured, low-saturation background with saturated shapes (rectangles,
ellipses, triangles, crosses) in several colours.  Sample ``k`` of a split is rendered from
the seed ``SPLIT_SEEDS[split] + k``, so the same call gives the same pixels and boxes
everywhere.  Boxes are xyxy in pixels (exclusive right/bottom edge), labels index ``CLASSES``.

>>> img, boxes, labels = render_detection_sample(0, size=128)
>>> img.shape, img.dtype, boxes.shape[1], bool((boxes[:, 2:] > boxes[:, :2]).all())
((128, 128, 3), dtype('uint8'), 4, True)

The same renderer also gives each shape's visible pixels (``render_instance_sample``) and a per-pixel
class map (``render_segmentation_sample``); ``write_segmentation_split`` and ``write_instance_split``
write them in the layouts AutoTimm's ``SegmentationDataModule`` (format ``"png"``) and
``InstanceSegmentationDataModule`` (COCO mode) read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASSES",
    "SPLIT_SEEDS",
    "render_detection_sample",
    "render_classification_sample",
    "render_instance_sample",
    "render_segmentation_sample",
    "detection_split",
    "write_detection_split",
    "write_classification_split",
    "write_segmentation_split",
    "write_instance_split",
    "SEGMENTATION_CLASSES",
]

CLASSES = ("rectangle", "ellipse", "triangle", "cross")
#: Semantic segmentation classes: pixel value ``k`` of a mask is ``SEGMENTATION_CLASSES[k]``
#: (0 = background, ``1 + i`` = ``CLASSES[i]``), so a segmentation model has 5 classes.
SEGMENTATION_CLASSES = ("background",) + CLASSES
SPLIT_SEEDS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
_PALETTE = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 90, 240], [245, 210, 30], [220, 60, 220], [30, 210, 220], [250, 130, 20]],
    dtype=np.uint8,
)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour gradient + stripes + pixel noise, kept low in saturation."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(70, 170)
    tint = rng.uniform(-15, 15, size=3)
    gx, gy = rng.uniform(-40, 40, size=2)
    img = base + gx * xx + gy * yy
    freq, angle = rng.uniform(4, 14), rng.uniform(0, np.pi)
    stripes = 12 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    img = img + stripes
    out = img[..., None] + tint[None, None, :] + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw_shape(
    draw: ImageDraw.ImageDraw, label: int, box: Tuple[int, int, int, int], color: Tuple[int, ...] | int
) -> None:
    """Fill one shape.  ``draw`` may be on an RGB image (``color`` an RGB tuple) or on an ``"L"`` id canvas
    (``color`` an int): PIL rasterises the same primitives to the same pixels in every mode."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if label == 0:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
    elif label == 1:
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
    elif label == 2:
        draw.polygon([(x1 + w / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=color)
    else:
        tx, ty = max(2, w // 3), max(2, h // 3)
        draw.rectangle([x1 + (w - tx) // 2, y1, x1 + (w - tx) // 2 + tx - 1, y2 - 1], fill=color)
        draw.rectangle([x1, y1 + (h - ty) // 2, x2 - 1, y1 + (h - ty) // 2 + ty - 1], fill=color)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _render(
    seed: int, size: int, max_objects: int, min_size: int, max_size: int, with_ids: bool
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The detection renderer.  With ``with_ids`` each shape is also drawn, with the same primitives and in
    the same order, onto an ``"L"`` canvas as its index + 1, so the canvas holds, per pixel, the shape
    whose colour the image shows there (0: background).  Drawing consumes no random numbers, so the
    image and boxes are the same either way."""
    if with_ids and max_objects > 254:
        raise ValueError("at most 254 shapes fit an 8-bit id canvas")
    rng = np.random.default_rng(seed)
    bg = _background(rng, size)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    ids = Image.new("L", (size, size), 0) if with_ids else None
    id_draw = ImageDraw.Draw(ids) if with_ids else None
    boxes: List[np.ndarray] = []
    labels: List[int] = []
    n = int(rng.integers(1, max_objects + 1))
    max_size = min(max_size, size)
    for _ in range(n * 10):
        if len(boxes) == n:
            break
        w = int(rng.integers(min_size, max_size + 1))
        h = int(np.clip(w * rng.uniform(0.7, 1.4), min_size, max_size))
        x1 = int(rng.integers(0, size - w + 1))
        y1 = int(rng.integers(0, size - h + 1))
        box = np.array([x1, y1, x1 + w, y1 + h], dtype=np.float32)
        if any(_iou(box, b) > 0.15 for b in boxes):
            continue
        label = int(rng.integers(0, len(CLASSES)))
        color = tuple(int(c) for c in _PALETTE[rng.integers(0, len(_PALETTE))])
        _draw_shape(draw, label, (x1, y1, x1 + w, y1 + h), color)
        if id_draw is not None:
            _draw_shape(id_draw, label, (x1, y1, x1 + w, y1 + h), len(boxes) + 1)
        boxes.append(box)
        labels.append(label)
    return (
        np.asarray(img, dtype=np.uint8),
        np.stack(boxes).astype(np.float32),
        np.asarray(labels, dtype=np.int64),
        np.asarray(ids, dtype=np.uint8) if ids is not None else None,
    )


def render_detection_sample(
    seed: int, size: int = 128, max_objects: int = 4, min_size: int = 14, max_size: int = 64
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one detection image: (H, W, 3) uint8, boxes (n, 4) float32 xyxy, labels (n,) int64."""
    img, boxes, labels, _ = _render(seed, size, max_objects, min_size, max_size, with_ids=False)
    return img, boxes, labels


def render_instance_sample(
    seed: int, size: int = 128, max_objects: int = 4, min_size: int = 14, max_size: int = 64
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``render_detection_sample(seed, size)`` plus each shape's visible pixels.

    Returns the same image (H, W, 3) uint8, boxes (n, 4) float32 xyxy and labels (n,) int64 as
    ``render_detection_sample``, and masks (n, H, W) bool: ``masks[i]`` is the set of pixels drawn for
    shape ``i`` that no later shape painted over (shapes are drawn in box order, later ones on top), so the
    masks are disjoint, each lies inside its box, and the image shows the shape's colour exactly there.
    A shape fully covered by a later one (rare: the boxes overlap by IoU <= 0.15, but a small box can lie
    inside a large one) has an empty mask.

    >>> img, boxes, labels, masks = render_instance_sample(0)
    >>> masks.shape == (len(boxes), 128, 128), masks.dtype, int(masks.sum(axis=0).max())
    (True, dtype('bool'), 1)
    """
    img, boxes, labels, ids = _render(seed, size, max_objects, min_size, max_size, with_ids=True)
    masks = ids[None, :, :] == np.arange(1, len(boxes) + 1, dtype=np.uint8)[:, None, None]
    return img, boxes, labels, masks


def render_segmentation_sample(seed: int, size: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """``render_detection_sample(seed, size)``'s image and its class map (H, W) uint8.

    Convention (AutoTimm's png masks: pixel = class id, 255 = ignore, unused here): 0 is background and
    ``CLASSES[i]`` is ``i + 1`` (see ``SEGMENTATION_CLASSES``), so a model needs ``num_classes=5``.

    >>> img, mask = render_segmentation_sample(0)
    >>> present = sorted({int(label) + 1 for label in render_detection_sample(0)[2]})
    >>> mask.shape, mask.dtype, sorted(set(mask.ravel().tolist())) == [0] + present
    ((128, 128), dtype('uint8'), True)
    """
    img, _, labels, ids = _render(seed, size, 4, 14, 64, with_ids=True)
    lut = np.zeros(256, dtype=np.uint8)
    lut[1 : len(labels) + 1] = labels + 1
    return img, lut[ids]


def render_classification_sample(seed: int, size: int = 64) -> Tuple[np.ndarray, int]:
    """Render one classification image with a single shape: (H, W, 3) uint8 and its label."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(_background(rng, size))
    label = int(rng.integers(0, len(CLASSES)))
    w = int(rng.integers(size // 3, int(size * 0.85)))
    h = int(np.clip(w * rng.uniform(0.7, 1.4), size // 4, size - 2))
    x1 = int(rng.integers(0, size - w + 1))
    y1 = int(rng.integers(0, size - h + 1))
    color = tuple(int(c) for c in _PALETTE[rng.integers(0, len(_PALETTE))])
    _draw_shape(ImageDraw.Draw(img), label, (x1, y1, x1 + w, y1 + h), color)
    return np.asarray(img, dtype=np.uint8), label


def detection_split(split: str, count: int, size: int = 128) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The first ``count`` samples of ``split`` ("train", "val" or "test")."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    base = SPLIT_SEEDS[split]
    return [render_detection_sample(base + k, size=size) for k in range(count)]


def write_detection_split(out_dir: str | os.PathLike, split: str, count: int, size: int = 128) -> Path:
    """Write ``count`` PNG images and a COCO-format ``annotations.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    coco: Dict[str, list] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)],
    }
    for k, (img, boxes, labels) in enumerate(detection_split(split, count, size)):
        name = f"{split}_{k:05d}.png"
        Image.fromarray(img).save(out / name)
        coco["images"].append({"id": k, "file_name": name, "width": size, "height": size})
        for b, l in zip(boxes.tolist(), labels.tolist()):
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": k,
                    "category_id": int(l),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                    "iscrowd": 0,
                }
            )
    (out / "annotations.json").write_text(json.dumps(coco))
    return out


def write_classification_split(out_dir: str | os.PathLike, split: str, count: int, size: int = 64) -> Path:
    """Write ``count`` PNG images and ``annotations.csv`` (``file,label`` with class names) into ``out_dir``."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["file,label"]
    for k in range(count):
        img, label = render_classification_sample(SPLIT_SEEDS[split] + k, size=size)
        name = f"{split}_{k:05d}.png"
        Image.fromarray(img).save(out / name)
        rows.append(f"{name},{CLASSES[label]}")
    (out / "annotations.csv").write_text("\n".join(rows) + "\n")
    return out


def _check_split(split: str) -> int:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    return SPLIT_SEEDS[split]


def write_segmentation_split(out_dir: str | os.PathLike, split: str, count: int, size: int = 128) -> Path:
    """Write ``count`` samples of ``split`` in AutoTimm's semantic segmentation ``png`` layout; returns ``out_dir``.

    Files: ``<out_dir>/<split>/images/NNNNN.png`` (RGB) and ``<out_dir>/<split>/masks/NNNNN.png`` (8-bit
    greyscale, the ``render_segmentation_sample`` class map: 0 background, 1..4 = ``CLASSES``), ``NNNNN`` the
    sample index.  The returned root is what ``SegmentationDataModule(data_dir=..., format="png")`` and
    ``SemanticSegmentationDataset(data_dir=..., split=split)`` take.
    """
    base = _check_split(split)
    root = Path(out_dir)
    images, masks = root / split / "images", root / split / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        img, mask = render_segmentation_sample(base + k, size=size)
        Image.fromarray(img).save(images / f"{k:05d}.png")
        Image.fromarray(mask).save(masks / f"{k:05d}.png")
    return root


def write_instance_split(out_dir: str | os.PathLike, split: str, count: int, size: int = 128) -> Path:
    """Write ``count`` samples of ``split`` in AutoTimm's COCO instance segmentation layout; returns ``out_dir``.

    Files: ``<out_dir>/<split>/NNNNN.png`` and ``<out_dir>/annotations/instances_<split>.json``, which is
    what ``COCOInstanceDataset(data_dir=out_dir, split=split)`` / ``InstanceSegmentationDataModule(
    data_dir=out_dir)`` read (it tries ``<split>2017`` first, then ``<split>``) and what pycocotools'
    ``COCO`` loads.  The JSON has ``images`` (``id`` = sample index, ``file_name`` ``NNNNN.png``,
    ``width``/``height``), ``categories`` (``id`` = index in ``CLASSES``, as ``write_detection_split``;
    AutoTimm maps the sorted ids to contiguous labels, so label = id) and per visible shape an annotation:
    ``id`` from 1, ``bbox`` the shape's box as xywh (the same box as the detection split), ``segmentation``
    the shape's ``render_instance_sample`` mask as compressed RLE (pycocotools ``mask.encode``, ``counts``
    as an ASCII str; exact, where polygons from a contour would not be), ``area`` the mask's pixel count and
    ``iscrowd`` 0 (AutoTimm skips crowd annotations; pycocotools reads RLE for non-crowd ones too).
    Shapes completely hidden by a later shape (empty mask) are left out.
    """
    from pycocotools import mask as mask_utils  # only this writer needs it

    base = _check_split(split)
    root = Path(out_dir)
    images = root / split
    images.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    coco: Dict[str, list] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }
    for k in range(count):
        img, boxes, labels, masks = render_instance_sample(base + k, size=size)
        name = f"{k:05d}.png"
        Image.fromarray(img).save(images / name)
        coco["images"].append({"id": k, "file_name": name, "width": size, "height": size})
        for b, l, m in zip(boxes.tolist(), labels.tolist(), masks):
            area = int(m.sum())
            if area == 0:
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": k,
                    "category_id": int(l),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": area,
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "iscrowd": 0,
                }
            )
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root
