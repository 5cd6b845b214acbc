"""Image classification: one ``logits`` output, probabilities by the family's activation (softmax, or sigmoid for
multi-label families); top-1 agreement with PyTorch at the task level, top-1 accuracy as the metric.

Annotation formats: class folders (``root/<class name>/*.png``), ``annotations.csv`` with the header ``file,label``
(or AutoTimm's ``image_path,label``), or per-image JSON ``photo.json`` = ``{"label": ...}``; labels are class names or
indices.  For a model that records no class names (an AutoTimm checkpoint exported without ``--class-names``),
names are numbered as AutoTimm's datasets do: the sorted distinct names (ImageFolder's order).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..datasets import Dataset, DatasetError, Sample, read_csv_table, read_per_image_json
from .base import Task, TritonTensor

__all__ = ["ClassificationTask", "Classification", "probabilities", "CSV_HEADER"]

CSV_HEADER = ["file", "label"]


@dataclass
class Classification:
    probs: np.ndarray  # (num_classes,)
    class_names: List[str] = field(default_factory=list)

    def top(self, k: int = 5) -> List[Tuple[str, float]]:
        idx = np.argsort(-self.probs)[:k]
        return [(self.class_names[i], float(self.probs[i])) for i in idx]

    def to_dict(self) -> Dict:
        return {"top": [{"class_name": n, "prob": round(p, 6)} for n, p in self.top(5)],
                "probs": [round(float(p), 6) for p in self.probs]}


def probabilities(logits: np.ndarray, family) -> np.ndarray:
    """A classifier's probabilities (B, C) from its logits, by the family's activation (softmax or sigmoid)."""
    x = np.asarray(logits, np.float64)
    if family.output("logits").activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class ClassificationTask(Task):
    name = "classification"
    roles = (("logits",), ())
    decode_modes = ("raw",)
    default_decode = "raw"
    agreement_level = None  # top-1 agreement is part of the task level (it needs no annotation)
    metric_keys = ("top1",)
    metric_names = {"top1": "top-1 accuracy"}
    points_field = "top1_points"
    results_file = "classifications.json"
    annotation_formats = "class folders, CSV file,label or per-image JSON labels"
    result_type = Classification

    def check_decode(self, decode: str, topk: Optional[int]) -> None:
        from ..errors import ExportError

        if decode == "activations" or topk:
            raise ExportError("--decode activations and --topk apply to detectors only; a classifier exports `logits`")

    def convention(self, family) -> Dict[str, str]:
        return {"name": family.convention, "probabilities": f"{family.output('logits').activation}(logits)"}

    def reference(self, model, forward, image_hw, decode, topk):
        return OrderedDict(logits=forward.numpy())

    def postprocess(self, outputs, info, size, letterboxes, **_) -> List[Classification]:
        return [Classification(p, list(info.class_names)) for p in probabilities(np.asarray(outputs["logits"]),
                                                                                 info.family)]

    def summary(self, result: Classification) -> Tuple[int, str]:
        return 1, ", ".join(f"{n} {p:.2f}" for n, p in result.top(3))

    def draw(self, image, result: Classification, line_width: int, font) -> None:
        from PIL import ImageDraw

        from ..drawing import draw_labels

        name, prob = result.top(1)[0]
        draw_labels(ImageDraw.Draw(image), [(f"{name} {prob:.2f}", 0.0, 0.0, (40, 40, 40))], line_width, font)

    def prediction_agreement(self, ref: Sequence[Classification], out: Sequence[Classification], rule) -> Dict:
        """Top-1 agreement with PyTorch on every image (a NaN logit never agrees)."""
        ref_top = np.array([int(np.argmax(r.probs)) for r in ref])
        art_top = np.array([int(np.argmax(np.nan_to_num(o.probs, nan=-np.inf))) for o in out])
        agree = float((ref_top == art_top).mean())
        return {"passed": agree >= rule.min_agreement, "metrics": {"top1_agreement": agree},
                "message": f"top-1 agreement with PyTorch {agree:.2%} ({int((ref_top != art_top).sum())} of "
                           f"{len(ref_top)} images differ; need {rule.min_agreement:.1%})"}

    def metric(self, predictions: Sequence[Classification], dataset: Dataset, num_classes: int) -> Dict[str, float]:
        labels = np.array([s.label for s in dataset.samples])
        top = np.array([int(np.argmax(p.probs)) for p in predictions])
        return {"top1": float((top == labels).mean())}

    def read_annotations(self, root: Path, images, labels, annotations=None) -> Optional[Dataset]:
        if annotations is not None:
            if annotations.suffix.lower() != ".csv":
                raise DatasetError(f"{annotations}: COCO box annotations for a classification model")
            return _read_csv(root, annotations, labels)
        if (root / "annotations.csv").is_file():
            return _read_csv(root, root / "annotations.csv", labels)
        if images and any(p.with_suffix(".json").is_file() for p in images):
            return _read_json_labels(root, images, labels)
        if images and all(p.parent != root for p in images):
            folders = {p.parent.name for p in images}
            order = None if folders <= set(labels.index) else labels.autotimm_order(folders, str(root))
            if folders <= set((order or labels).index):  # by name, or ImageFolder's sorted order (AutoTimm's)
                index = (order or labels).index
                return Dataset(root, [Sample(p, label=index[p.parent.name]) for p in images], "folders",
                               notes=[order.note] if order else [])
        return None

    def triton_outputs(self, num_classes: int, top_k: int) -> List[TritonTensor]:
        k = min(top_k, num_classes)
        return [TritonTensor("probs", "float32", (num_classes,), labels=True), TritonTensor("top_labels", "int32", (k,)),
                TritonTensor("top_scores", "float32", (k,))]

    def triton_arrays(self, results: Sequence[Classification], top_k: int) -> Dict[str, np.ndarray]:
        probs = np.stack([r.probs for r in results]).astype(np.float32)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k].astype(np.int32)
        return {"probs": probs, "top_labels": order, "top_scores": np.take_along_axis(probs, order, axis=1)}

    def from_triton(self, arrays, index, width, height, class_names) -> Classification:
        return Classification(arrays["probs"][index], list(class_names))


def _read_json_labels(root: Path, images, labels) -> Dataset:
    samples = []
    for p, jp, d in read_per_image_json(root, images):
        if "label" not in d:
            raise DatasetError(f"{jp}: needs a 'label' (class name or index)")
        samples.append(Sample(p, label=labels(d["label"], f"{jp}: label")))
    return Dataset(root, samples, "json")


def _read_csv(root: Path, path: Path, labels) -> Dataset:
    detection = (["file", "x1", "y1", "x2", "y2", "label"], ["image_path", "x_min", "y_min", "x_max", "y_max", "label"])
    table = read_csv_table(root, path, labels, (CSV_HEADER, ["image_path", "label"]), 1, "classification",
                           foreign=[(h, "detection annotations for a classification model") for h in detection])
    per: Dict[Path, Sample] = {}
    for where, p, row in table.rows:
        if len(row) != 2:
            raise DatasetError(f"{where}: expected 2 fields (file,label), got {len(row)}")
        if p in per:
            raise DatasetError(f"{where}: {row[0].strip()!r} is listed twice")
        per[p] = Sample(p, label=table.labels(row[1].strip(), f"{where}: label"))
    return Dataset(root, sorted(per.values(), key=lambda s: str(s.path)), "csv", path, notes=table.notes)
