"""Image folders for parity checks, with or without annotations (each task reads its own formats:
:meth:`autotimm_deploy.tasks.base.Task.read_annotations`).

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
- **Label maps** (semantic segmentation) and **COCO segmentations** (instance segmentation): see their tasks.

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

from pathlib import Path
from typing import Optional, Sequence

from ..datasets import IMAGE_EXTENSIONS, Dataset, DatasetError, Labels, Sample, list_images  # noqa: F401
from ..tasks import get_task

__all__ = ["DatasetError", "Sample", "Dataset", "load_dataset", "IMAGE_EXTENSIONS"]


def load_dataset(root: str | Path, class_names: Sequence[str], task: str, annotations: Optional[str | Path] = None,
                 limit: Optional[int] = None) -> Dataset:
    """Read ``root`` and its annotations in one of the model's task's formats (detected as described above), or as
    an unannotated folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (--data takes a folder of images)")
    reader = get_task(task)
    images = list_images(root)
    if annotations is not None and not Path(annotations).is_file():
        raise DatasetError(f"{annotations}: annotation file not found")
    ds = reader.read_annotations(root, images, Labels(class_names), Path(annotations) if annotations else None)
    if ds is None:
        ds = Dataset(root, [Sample(p) for p in images], "none")
    if not ds.samples:
        raise DatasetError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if limit is not None:
        ds.samples = ds.samples[:limit]
    return ds
