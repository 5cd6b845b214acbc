"""Image folders for parity checks, with or without annotations.

A folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.ppm``, ``.webp``, searched recursively)
is read in sorted order.  Annotations are optional and come in one of these formats:

- **COCO JSON** (detection): ``annotations.json`` (or ``--annotations FILE``) with ``images``
  (``id``, ``file_name`` relative to the folder), ``annotations`` (``image_id``, ``category_id``,
  ``bbox`` = [x, y, w, h] in pixels) and ``categories`` (``id``, ``name``).  Categories map to the
  model's classes by name when every name is a class name, otherwise by id (ids must then be
  0..num_classes-1).  Images of the file that are not on disk are an error; images on disk that
  the file does not list are skipped.
- **Per-image JSON**: ``photo.png`` + ``photo.json`` with ``{"boxes": [[x1, y1, x2, y2], ...],
  "labels": [...]}`` (detection) or ``{"label": ...}`` (classification).
- **CSV**: ``annotations.csv`` with a header, ``file,x1,y1,x2,y2,label`` (one row per box; a row with
  only ``file`` is an image without objects) or ``file,label`` (classification).
- **Class folders** (classification): ``root/<class name>/*.png``.

Labels may be class names or integer indices.  Any malformed entry raises :class:`DatasetError`
naming the file and the entry.

>>> import tempfile, json, numpy as np
>>> from PIL import Image
>>> root = tempfile.mkdtemp()
>>> Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(f"{root}/a.png")
>>> _ = open(f"{root}/a.json", "w").write(json.dumps({"boxes": [[1, 2, 11, 12]], "labels": ["cat"]}))
>>> ds = load_dataset(root, class_names=["dog", "cat"], task="detection")
>>> ds.format, ds.annotated, ds.samples[0].boxes.tolist(), ds.samples[0].labels.tolist()
('json', True, [[1.0, 2.0, 11.0, 12.0]], [1])
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import AutotimmError

__all__ = ["DatasetError", "Sample", "Dataset", "load_dataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


class DatasetError(AutotimmError):
    """An image folder or its annotations cannot be used (the message names the file and entry)."""


@dataclass
class Sample:
    path: Path
    boxes: Optional[np.ndarray] = None  # (n, 4) float32 xyxy, detection
    labels: Optional[np.ndarray] = None  # (n,) int64, detection
    label: Optional[int] = None  # classification


@dataclass
class Dataset:
    root: Path
    samples: List[Sample]
    format: str  # coco | json | csv | folders | none
    annotation_file: Optional[Path] = None
    skipped: List[str] = field(default_factory=list)  # images on disk without annotations (COCO)

    @property
    def annotated(self) -> bool:
        return self.format != "none"

    def describe(self) -> str:
        what = {"coco": "COCO JSON", "json": "per-image JSON", "csv": "CSV", "folders": "class folders",
                "none": "no annotations"}[self.format]
        src = f" ({self.annotation_file.name})" if self.annotation_file else ""
        return f"{len(self.samples)} images in {self.root}, {what}{src}"


def _images(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


class _Labels:
    """Class names or integer indices -> index, with errors that say where."""

    def __init__(self, class_names: Sequence[str]):
        self.names = list(class_names)
        self.index = {n: i for i, n in enumerate(self.names)}

    def __call__(self, value: Any, where: str) -> int:
        if isinstance(value, bool):
            value = None  # never a label
        if isinstance(value, str):
            if value in self.index:
                return self.index[value]
            if value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise DatasetError(f"{where}: unknown class {value!r}; the model's classes are {self.names}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise DatasetError(f"{where}: label must be a class name or an index, got {value!r}")
        if not 0 <= value < len(self.names):
            raise DatasetError(f"{where}: label {value} is out of range for {len(self.names)} classes")
        return value


def _box(values: Any, where: str, xywh: bool = False) -> List[float]:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise DatasetError(f"{where}: a box must be 4 numbers {'[x, y, w, h]' if xywh else '[x1, y1, x2, y2]'}, "
                           f"got {values!r}")
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: box values must be numbers, got {values!r}") from None
    if not all(math.isfinite(x) for x in v):
        raise DatasetError(f"{where}: box values must be finite, got {values!r}")
    if xywh:
        v = [v[0], v[1], v[0] + v[2], v[1] + v[3]]
    if v[2] <= v[0] or v[3] <= v[1]:
        raise DatasetError(f"{where}: empty or inverted box {values!r} "
                           f"({'width and height must be > 0' if xywh else 'needs x2 > x1 and y2 > y1'})")
    return v


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None


def _det_arrays(boxes: List[List[float]], labels: List[int]):
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1)


def _load_coco(root: Path, path: Path, labels: _Labels) -> Dataset:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{path}: a COCO file needs 'images' and 'annotations' lists")
    cats = data.get("categories") or []
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise DatasetError(f"{path}: 'categories' must be a list of objects with an 'id'")
    names = {c["id"]: c.get("name") for c in cats}
    if cats and all(n in labels.index for n in names.values()):
        cat_map = {cid: labels.index[n] for cid, n in names.items()}  # by name
    else:
        cat_map = {}
        for cid, n in names.items():
            cat_map[cid] = labels(cid, f"{path}: categories id {cid} ({n!r}): not a class name, so its id")
    by_id: Dict[Any, Sample] = {}
    order: List[Sample] = []
    for i, img in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DatasetError(f"{where}: needs 'id' and 'file_name'")
        if img["id"] in by_id:
            raise DatasetError(f"{where}: duplicate image id {img['id']!r}")
        p = root / img["file_name"]
        if not p.is_file():
            raise DatasetError(f"{where}: image file {img['file_name']!r} not found in {root}")
        s = Sample(p, boxes=[], labels=[])
        by_id[img["id"]] = s
        order.append(s)
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict):
            raise DatasetError(f"{where}: must be an object")
        if ann.get("image_id") not in by_id:
            raise DatasetError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in cat_map:
            if cats:
                raise DatasetError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
            cat_map[ann.get("category_id")] = labels(ann.get("category_id"), f"{where}: category_id")
        if ann.get("iscrowd"):
            continue
        s = by_id[ann["image_id"]]
        s.boxes.append(_box(ann.get("bbox"), f"{where}: bbox", xywh=True))
        s.labels.append(cat_map[ann["category_id"]])
    for s in order:
        s.boxes, s.labels = _det_arrays(s.boxes, s.labels)
    listed = {s.path for s in order}
    skipped = [str(p.relative_to(root)) for p in _images(root) if p not in listed]
    return Dataset(root, order, "coco", path, skipped)


def _load_per_image_json(root: Path, images: List[Path], labels: _Labels, task: str) -> Dataset:
    samples = []
    for p in images:
        jp = p.with_suffix(".json")
        if not jp.is_file():
            raise DatasetError(f"{jp}: missing: per-image JSON annotations need one .json next to every image "
                               f"(found for some images in {root})")
        d = _read_json(jp)
        if not isinstance(d, dict):
            raise DatasetError(f"{jp}: must be a JSON object")
        if task == "classification":
            if "label" not in d:
                raise DatasetError(f"{jp}: needs a 'label' (class name or index)")
            samples.append(Sample(p, label=labels(d["label"], f"{jp}: label")))
            continue
        bx, lb = d.get("boxes", []), d.get("labels", [])
        if not isinstance(bx, list) or not isinstance(lb, list) or len(bx) != len(lb):
            raise DatasetError(f"{jp}: needs 'boxes' and 'labels' lists of the same length")
        b = [_box(v, f"{jp}: boxes[{k}]") for k, v in enumerate(bx)]
        l_ = [labels(v, f"{jp}: labels[{k}]") for k, v in enumerate(lb)]
        samples.append(Sample(p, *_det_arrays(b, l_)))
    return Dataset(root, samples, "json")


def _load_csv(root: Path, path: Path, labels: _Labels, task: str) -> Dataset:
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV: {exc}") from None
    if not rows:
        raise DatasetError(f"{path}: empty CSV (needs a header: file,label or file,x1,y1,x2,y2,label)")
    header = [h.strip().lower() for h in rows[0]]
    det_cols, cls_cols = ["file", "x1", "y1", "x2", "y2", "label"], ["file", "label"]
    if header == det_cols:
        kind = "detection"
    elif header == cls_cols:
        kind = "classification"
    else:
        raise DatasetError(f"{path}: line 1: header must be {','.join(det_cols)} (detection) or "
                           f"{','.join(cls_cols)} (classification), got {','.join(rows[0])}")
    if kind != task:
        raise DatasetError(f"{path}: {kind} annotations for a {task} model")
    per: Dict[Path, Sample] = {}
    for n, row in enumerate(rows[1:], start=2):
        where = f"{path}: line {n}"
        if not row or all(not c.strip() for c in row):
            continue
        p = root / row[0].strip()
        if not p.is_file():
            raise DatasetError(f"{where}: image file {row[0].strip()!r} not found in {root}")
        if kind == "classification":
            if len(row) != 2:
                raise DatasetError(f"{where}: expected 2 fields (file,label), got {len(row)}")
            if p in per:
                raise DatasetError(f"{where}: {row[0].strip()!r} is listed twice")
            per[p] = Sample(p, label=labels(row[1].strip(), f"{where}: label"))
            continue
        s = per.setdefault(p, Sample(p, boxes=[], labels=[]))
        if len(row) == 1 or all(not c.strip() for c in row[1:]):
            continue  # an image without objects
        if len(row) != 6:
            raise DatasetError(f"{where}: expected 6 fields (file,x1,y1,x2,y2,label), got {len(row)}")
        s.boxes.append(_box(row[1:5], f"{where}: box"))
        s.labels.append(labels(row[5].strip(), f"{where}: label"))
    samples = sorted(per.values(), key=lambda s: str(s.path))
    if task == "detection":
        for s in samples:
            s.boxes, s.labels = _det_arrays(s.boxes, s.labels)
    return Dataset(root, samples, "csv", path)


def load_dataset(root: str | Path, class_names: Sequence[str], task: str, annotations: Optional[str | Path] = None,
                 limit: Optional[int] = None) -> Dataset:
    """Read ``root`` and its annotations (format detected as described in the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (--data takes a folder of images)")
    if task not in ("detection", "classification"):
        raise DatasetError(f"unknown task {task!r}")
    labels = _Labels(class_names)
    images = _images(root)
    if annotations is not None:
        ann = Path(annotations)
        if not ann.is_file():
            raise DatasetError(f"{ann}: annotation file not found")
        ds = _load_csv(root, ann, labels, task) if ann.suffix.lower() == ".csv" else _load_coco(root, ann, labels)
    elif task == "detection" and (root / "annotations.json").is_file():
        ds = _load_coco(root, root / "annotations.json", labels)
    elif (root / "annotations.csv").is_file():
        ds = _load_csv(root, root / "annotations.csv", labels, task)
    elif images and any(p.with_suffix(".json").is_file() for p in images):
        ds = _load_per_image_json(root, images, labels, task)
    elif task == "classification" and images and all(p.parent != root for p in images) \
            and {p.parent.name for p in images} <= set(labels.index):
        ds = Dataset(root, [Sample(p, label=labels.index[p.parent.name]) for p in images], "folders")
    else:
        ds = Dataset(root, [Sample(p) for p in images], "none")
    if ds.format == "coco" and task != "detection":
        raise DatasetError(f"{ds.annotation_file}: COCO box annotations for a {task} model")
    if not ds.samples:
        raise DatasetError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if limit is not None:
        ds.samples = ds.samples[:limit]
    return ds
