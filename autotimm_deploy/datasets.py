"""Image folders with or without annotations, as the parity checks and the INT8 gate read them: the generic part
(listing images, labels by name or index, the :class:`Dataset` every task's annotation reader returns).  Each task
reads its own annotation formats (:meth:`autotimm_deploy.tasks.base.Task.read_annotations`); :func:`autotimm_deploy.parity.data.load_dataset`
asks the model's task and falls back to an unannotated folder.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import AutotimmError

__all__ = ["DatasetError", "Sample", "Dataset", "Labels", "list_images", "read_json", "read_csv", "read_csv_table",
           "CsvTable", "read_per_image_json", "parse_box", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


class DatasetError(AutotimmError):
    """An image folder or its annotations cannot be used (the message names the file and entry)."""


@dataclass
class Sample:
    path: Path
    boxes: Optional[np.ndarray] = None  # (n, 4) float32 xyxy: detection, instance segmentation
    labels: Optional[np.ndarray] = None  # (n,) int64: detection, instance segmentation
    label: Optional[int] = None  # classification
    mask: Any = None  # semantic segmentation: the path of its label map (read when used), or an HxW array
    masks: Optional[List[Any]] = None  # instance segmentation: one COCO segmentation (polygons / RLE) per box


@dataclass
class Dataset:
    root: Path
    samples: List[Sample]
    format: str  # coco | json | csv | folders | png | none
    annotation_file: Optional[Path] = None
    skipped: List[str] = field(default_factory=list)  # images on disk without annotations (COCO)
    notes: List[str] = field(default_factory=list)  # how labels were read, when that needs saying

    @property
    def annotated(self) -> bool:
        return self.format != "none"

    def describe(self) -> str:
        what = {"coco": "COCO JSON", "json": "per-image JSON", "csv": "CSV", "folders": "class folders",
                "png": "PNG label maps", "none": "no annotations"}.get(self.format, self.format)
        src = f" ({self.annotation_file.name})" if self.annotation_file else ""
        return f"{len(self.samples)} images in {self.root}, {what}{src}"


def list_images(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


class Labels:
    """Class names or integer indices -> index, with errors that say where.

    A model that records no class names (an AutoTimm checkpoint exported without ``--class-names``: ``class_0``..)
    cannot map a label *name*: :meth:`autotimm_order` maps names the way AutoTimm's own datasets do (its CSV datasets
    and ImageFolder number the sorted distinct names), which is what its class indices mean."""

    def __init__(self, class_names: Sequence[str]):
        self.names = list(class_names)
        self.index = {n: i for i, n in enumerate(self.names)}

    @property
    def unnamed(self) -> bool:
        """The model's class names are the placeholders ``class_0``, ``class_1``...."""
        return self.names == [f"class_{i}" for i in range(len(self.names))]

    def autotimm_order(self, values: Sequence[str], where: str) -> Optional["Labels"]:
        """For an unnamed model whose annotations use names: ``Labels`` numbering the sorted distinct ``values`` as
        AutoTimm does (None when the names are the model's or indices); more names than classes is an error."""
        names = sorted({str(v).strip() for v in values})
        if not self.unnamed or not names or all(n in self.index or n.lstrip("-").isdigit() for n in names):
            return None
        if len(names) > len(self.names):
            raise DatasetError(f"{where}: {len(names)} distinct class names ({', '.join(names[:6])}...) for a model "
                               f"of {len(self.names)} classes")
        order = Labels(names + self.names[len(names):])
        order.note = (f"labels by name in AutoTimm's order (the sorted names: {', '.join(names[:8])}"
                      f"{'...' if len(names) > 8 else ''}), the model records no class names: pass --class-names")
        return order

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


def parse_box(values: Any, where: str, xywh: bool = False) -> List[float]:
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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None


def read_csv(path: Path) -> List[List[str]]:
    """The rows of a CSV file (the header first); a file that cannot be read is a :class:`DatasetError`."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV: {exc}") from None
    if not rows:
        raise DatasetError(f"{path}: empty CSV (it needs a header line)")
    return rows


@dataclass
class CsvTable:
    """An annotation CSV read by :func:`read_csv_table`: the labels to read it with (AutoTimm's order for a model
    without class names), the note saying so, and each non-blank line as (where, image path, fields)."""

    labels: Labels
    notes: List[str]
    rows: List[Tuple[str, Path, List[str]]]


def read_csv_table(root: Path, path: Path, labels: Labels, headers: Tuple[Sequence[str], Sequence[str]],
                   label_column: int, what: str, foreign: Sequence[Tuple[Sequence[str], str]] = ()) -> CsvTable:
    """A task's annotation CSV: its header must be ``headers[0]`` (ours) or ``headers[1]`` (AutoTimm's); a header in
    ``foreign`` is another task's and refused with its message; every listed image must exist under ``root``."""
    rows = read_csv(path)
    header = [h.strip().lower() for h in rows[0]]
    for other, message in foreign:
        if header == list(other):
            raise DatasetError(f"{path}: {message}")
    if header not in (list(headers[0]), list(headers[1])):
        raise DatasetError(f"{path}: line 1: header must be {','.join(headers[0])} or AutoTimm's "
                           f"{','.join(headers[1])} ({what}), got {','.join(rows[0])}")
    n = len(headers[0])
    order = labels.autotimm_order([r[label_column] for r in rows[1:] if len(r) == n and r[label_column].strip()],
                                  str(path))
    out = []
    for k, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where, p = f"{path}: line {k}", root / row[0].strip()
        if not p.is_file():
            raise DatasetError(f"{where}: image file {row[0].strip()!r} not found in {root}")
        out.append((where, p, row))
    return CsvTable(order or labels, [order.note] if order else [], out)


def read_per_image_json(root: Path, images: Sequence[Path]) -> Iterator[Tuple[Path, Path, Dict]]:
    """Per-image JSON annotations (``photo.json`` beside ``photo.png``): (image, JSON path, object) for each image;
    a missing file or one that is not a JSON object is a :class:`DatasetError` naming it."""
    for p in images:
        jp = p.with_suffix(".json")
        if not jp.is_file():
            raise DatasetError(f"{jp}: missing: per-image JSON annotations need one .json next to every image "
                               f"(found for some images in {root})")
        d = read_json(jp)
        if not isinstance(d, dict):
            raise DatasetError(f"{jp}: must be a JSON object")
        yield p, jp, d
