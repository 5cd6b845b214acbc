"""The detection task's annotation formats (boxes per image).

- **COCO JSON**: ``annotations.json`` (or ``--annotations FILE``) with ``images`` (``id``, ``file_name`` relative to
  the folder), ``annotations`` (``image_id``, ``category_id``, ``bbox`` = [x, y, w, h] in pixels; ``iscrowd``
  entries are left out) and ``categories`` (``id``, ``name``).  Categories map to the model's classes by name when
  every name is a class name, otherwise by id (ids must then be 0..num_classes-1).  Images of the file that are
  not on disk are an error; images on disk that the file does not list are skipped.
- **Per-image JSON**: ``photo.png`` + ``photo.json`` with ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}``.
- **CSV**: ``annotations.csv`` with the header ``file,x1,y1,x2,y2,label`` or AutoTimm's
  ``image_path,x_min,y_min,x_max,y_max,label`` (one row per box; a row with only the file is an image without
  objects).  For a model without class names, label names are numbered as AutoTimm's dataset does (sorted).

Labels may be class names or integer indices.  Any malformed entry raises
:class:`~autotimm_deploy.datasets.DatasetError` naming the file and the entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ...datasets import Dataset, DatasetError, Labels, Sample, list_images, parse_box, read_csv_table, read_json, read_per_image_json

__all__ = ["read_coco", "read_box_annotations", "det_arrays", "CSV_HEADER"]

CSV_HEADER = ["file", "x1", "y1", "x2", "y2", "label"]
#: AutoTimm's ``CSVDetectionDataset`` columns (the same meaning: xyxy pixels, a class name or index).
AUTOTIMM_CSV_HEADER = ["image_path", "x_min", "y_min", "x_max", "y_max", "label"]


def det_arrays(boxes: List[List[float]], labels: List[int]):
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1)


def read_coco(root: Path, path: Path, labels: Labels, masks: bool = False) -> Dataset:
    """A COCO file of boxes (and with ``masks`` each annotation's ``segmentation``, polygons or RLE)."""
    data = read_json(path)
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
        s = Sample(p, boxes=[], labels=[], masks=[] if masks else None)
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
        s.boxes.append(parse_box(ann.get("bbox"), f"{where}: bbox", xywh=True))
        s.labels.append(cat_map[ann["category_id"]])
        if masks:
            seg = ann.get("segmentation")
            if not isinstance(seg, (list, dict)) or not seg:
                raise DatasetError(f"{where}: needs a 'segmentation' (polygons or RLE) for mask AP")
            s.masks.append(seg)
    for s in order:
        s.boxes, s.labels = det_arrays(s.boxes, s.labels)
    listed = {s.path for s in order}
    skipped = [str(p.relative_to(root)) for p in list_images(root) if p not in listed]
    return Dataset(root, order, "coco", path, skipped)


def _read_per_image_json(root: Path, images: List[Path], labels: Labels) -> Dataset:
    samples = []
    for p, jp, d in read_per_image_json(root, images):
        bx, lb = d.get("boxes", []), d.get("labels", [])
        if not isinstance(bx, list) or not isinstance(lb, list) or len(bx) != len(lb):
            raise DatasetError(f"{jp}: needs 'boxes' and 'labels' lists of the same length")
        b = [parse_box(v, f"{jp}: boxes[{k}]") for k, v in enumerate(bx)]
        l_ = [labels(v, f"{jp}: labels[{k}]") for k, v in enumerate(lb)]
        samples.append(Sample(p, *det_arrays(b, l_)))
    return Dataset(root, samples, "json")


def _read_csv(root: Path, path: Path, labels: Labels, task: str) -> Dataset:
    table = read_csv_table(root, path, labels, (CSV_HEADER, AUTOTIMM_CSV_HEADER), 5, task,
                           foreign=[(h, f"classification annotations for a {task} model")
                                    for h in (["file", "label"], ["image_path", "label"])])
    per: Dict[Path, Sample] = {}
    for where, p, row in table.rows:
        s = per.setdefault(p, Sample(p, boxes=[], labels=[]))
        if len(row) == 1 or all(not c.strip() for c in row[1:]):
            continue  # an image without objects
        if len(row) != 6:
            raise DatasetError(f"{where}: expected 6 fields (file,x1,y1,x2,y2,label), got {len(row)}")
        s.boxes.append(parse_box(row[1:5], f"{where}: box"))
        s.labels.append(table.labels(row[5].strip(), f"{where}: label"))
    samples = sorted(per.values(), key=lambda s: str(s.path))
    for s in samples:
        s.boxes, s.labels = det_arrays(s.boxes, s.labels)
    return Dataset(root, samples, "csv", path, notes=table.notes)


def read_box_annotations(root: Path, images: List[Path], labels: Labels, annotations: Optional[Path],
                         task: str = "detection") -> Optional[Dataset]:
    """A folder's box annotations in the first format found (``annotations`` names the file), or None."""
    if annotations is not None:
        return _read_csv(root, annotations, labels, task) if annotations.suffix.lower() == ".csv" \
            else read_coco(root, annotations, labels)
    if (root / "annotations.json").is_file():
        return read_coco(root, root / "annotations.json", labels)
    if (root / "annotations.csv").is_file():
        return _read_csv(root, root / "annotations.csv", labels, task)
    if images and any(p.with_suffix(".json").is_file() for p in images):
        return _read_per_image_json(root, images, labels)
    return None
