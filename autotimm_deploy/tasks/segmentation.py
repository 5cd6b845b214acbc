"""Semantic segmentation: one ``pixel_logits`` output (B, C, h, w) at the head's stride; a class per pixel.

``--decode``: ``raw`` (the logits), ``labels`` (default: ``argmax`` over classes at the head's resolution, int64
(B, h, w): exactly AutoTimm's ``SemanticSegmentor.predict``) or ``labels-full`` (the logits resized bilinearly,
``align_corners=False``, to the input size, then ``argmax``: (B, H, W), what AutoTimm's validation compares with
masks).  Runtimes map the labels back to the image's pixels (nearest; raw logits are resized to the input size
first, as ``labels-full``).  Parity: pixels whose class agrees with PyTorch's (the ``pixels`` level), and mIoU on a
folder with label maps (the task level).

Annotation formats: ``images/`` + ``masks/`` subfolders with the same file stems (AutoTimm's ``png`` layout: a mask
pixel is the class index, 255 is ignored), or ``annotations.csv`` with the header ``image_path,mask_path``
(AutoTimm's ``csv`` format, paths relative to the folder).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..datasets import Dataset, DatasetError, Sample, read_csv
from ..errors import ExportError
from .base import Agreement, GraphInfo, Task, TritonTensor

__all__ = ["SegmentationTask", "Segmentation", "IGNORE_INDEX", "confusion", "miou"]

#: Label value that marks pixels left out of the metric (AutoTimm's ``ignore_index``).
IGNORE_INDEX = 255
_PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190], [0, 128, 128],
                     [230, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195]], np.uint8)


@dataclass
class Segmentation:
    """One image's class per pixel, in its own pixels; ``network_labels``: the label map as the network gave it
    (its frame and resolution: AutoTimm's ``predict()`` for ``--decode labels``)."""

    labels: np.ndarray  # (H, W) int32
    class_names: List[str]
    width: int
    height: int
    network_labels: Optional[np.ndarray] = field(default=None, repr=False)

    def areas(self) -> List[Tuple[int, str, float]]:
        """(class, name, fraction of the image), largest first."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        total = max(1, self.labels.size)
        return [(int(c), self.class_names[c] if c < len(self.class_names) else str(c), counts[c] / total)
                for c in np.argsort(-counts, kind="stable") if counts[c]]

    def to_dict(self) -> Dict:
        return {"width": self.width, "height": self.height,
                "classes": [{"label": c, "class_name": n, "fraction": round(float(f), 6)} for c, n, f in self.areas()]}


def _palette(n: int) -> np.ndarray:
    reps = -(-n // len(_PALETTE))
    return np.concatenate([_PALETTE] * reps)[:n]


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts of (ground truth, prediction) over pixels whose ground truth is a class
    (``IGNORE_INDEX`` and out-of-range values are left out)."""
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    keep = (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
    return np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes ** 2).reshape(num_classes, -1)


def miou(conf: np.ndarray) -> Dict[str, float]:
    """Mean IoU over the classes that occur (in the ground truth or the predictions), and pixel accuracy.

    >>> miou(np.array([[3, 1], [0, 4]]))
    {'miou': 0.775, 'pixel_accuracy': 0.875}
    """
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    if not present.any():
        raise ValueError("the ground truth holds no labelled pixel: mIoU is undefined")
    return {"miou": round(float((inter[present] / union[present]).mean()), 6),
            "pixel_accuracy": round(float(inter.sum() / conf.sum()), 6)}


def _add_labels(graph, full: bool):
    """``logits`` -> ``labels``: ArgMax over the classes, after a bilinear Resize to the input's H x W when
    ``full`` (``half_pixel`` coordinates: PyTorch's ``align_corners=False``)."""
    import onnx_graphsurgeon as gs

    from ..graph import graph_outputs, single

    outs = graph_outputs(graph)
    if "logits" not in outs:
        raise ExportError(f"graph has no logits output (outputs: {sorted(outs)}); the labels pass needs a raw "
                          "segmentation export")
    logits = outs["logits"]
    graph.outputs.remove(logits)
    x = logits
    if full:
        i64 = lambda name, v: gs.Constant(f"labels/{name}", np.array(v, dtype=np.int64))  # noqa: E731
        bc = single(graph, "Slice", [single(graph, "Shape", [logits], "labels/logits_shape", dtype=np.int64),
                                     i64("zero", [0]), i64("two", [2])], "labels/bc", dtype=np.int64)
        hw = single(graph, "Slice", [single(graph, "Shape", [graph.inputs[0]], "labels/input_shape", dtype=np.int64),
                                     i64("two_", [2]), i64("four", [4])], "labels/hw", dtype=np.int64)
        sizes = single(graph, "Concat", [bc, hw], "labels/sizes", dtype=np.int64, attrs={"axis": 0})
        x = single(graph, "Resize", [x, gs.Constant("labels/roi", np.array([], np.float32)),
                                     gs.Constant("labels/scales", np.array([], np.float32)), sizes],
                   "labels/resized", attrs={"mode": "linear", "coordinate_transformation_mode": "half_pixel"})
    labels = single(graph, "ArgMax", [x], "labels", dtype=np.int64, attrs={"axis": 1, "keepdims": 0})
    batch = graph.inputs[0].shape[0] if graph.inputs[0].shape else "batch"
    labels.shape = [batch, "height", "width"]
    graph.outputs.append(labels)
    return graph.cleanup().toposort()


class SegmentationTask(Task):
    name = "segmentation"
    roles = (("pixel_logits",), ())
    decode_modes = ("raw", "labels", "labels-full")
    default_decode = "labels"
    agreement_level = "pixels"
    metric_keys = ("miou",)
    metric_names = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy"}
    points_field = "miou_points"
    results_file = "segmentations.json"
    annotation_formats = "images/ + masks/ label maps, or CSV image_path,mask_path"
    result_type = Segmentation

    def spatial_output(self, family, name: str) -> bool:
        return True

    def convention(self, family) -> Dict[str, str]:
        return {"name": family.convention, "labels": "argmax over classes of logits (B, C, h, w) at the head's stride",
                "labels_full": "logits resized bilinearly (align_corners=False) to the input, then argmax"}

    def fuse(self, raw, decode: str, topk, family, info: GraphInfo):
        from ..graph import export_graph, import_graph, set_metadata

        graph = import_graph(raw)
        if decode != "raw":
            _add_labels(graph, full=decode == "labels-full")
        out = export_graph(graph, raw)
        set_metadata(out, {"decode": decode, "topk": "none"})
        return out

    def reference(self, model, forward, image_hw, decode: str, topk):
        import torch.nn.functional as F

        if decode == "raw":
            return OrderedDict(logits=forward.numpy())
        logits = forward
        if decode == "labels-full":
            logits = F.interpolate(logits, size=tuple(image_hw), mode="bilinear", align_corners=False)
        return OrderedDict(labels=logits.argmax(dim=1).numpy())

    # -- runtime ---------------------------------------------------------------------------------
    def label_maps(self, outputs: Dict[str, np.ndarray], size: Tuple[int, int]) -> List[np.ndarray]:
        """Each image's label map in the network's frame: ``labels`` as exported, or the argmax of the logits
        resized to the input ``size`` (as ``labels-full``)."""
        if "labels" in outputs:
            return [np.asarray(x).astype(np.int32) for x in outputs["labels"]]
        from ..models.masks import resize_bilinear

        maps = []
        for logits in np.asarray(outputs["logits"], np.float32):
            if logits.shape[1:] != tuple(size):
                logits = np.stack([resize_bilinear(c, *size) for c in logits])
            maps.append(logits.argmax(axis=0).astype(np.int32))
        return maps

    def postprocess(self, outputs, info, size, letterboxes, **_: Any) -> List[Segmentation]:
        out = []
        for labels, lb in zip(self.label_maps(outputs, size), letterboxes):
            h, w = labels.shape
            rows, cols = lb.image_grid()  # network-input pixel of each image pixel, then its cell of this map
            rows = np.clip(rows * h // size[0], 0, h - 1)
            cols = np.clip(cols * w // size[1], 0, w - 1)
            out.append(Segmentation(labels[rows[:, None], cols[None, :]], list(info.class_names), lb.width, lb.height,
                                    labels))
        return out

    def summary(self, result: Segmentation) -> Tuple[int, str]:
        areas = result.areas()
        return len(areas), ", ".join(f"{n} {100 * f:.0f}%" for _, n, f in areas[:3])

    def draw(self, image, result: Segmentation, line_width: int, font) -> None:
        """Each class's pixels tinted with its colour (half opacity; class 0 untouched when it is named background
        or is the largest area), and a legend of the classes present."""
        from PIL import Image, ImageDraw

        from ..drawing import draw_labels

        palette = _palette(max(len(result.class_names), int(result.labels.max(initial=0)) + 1))
        rgb = np.asarray(image).astype(np.float32)
        tint = palette[result.labels].astype(np.float32)
        alpha = np.where(result.labels[..., None] == 0, 0.0, 0.5) if _background(result) else 0.5
        image.paste(Image.fromarray((rgb * (1 - alpha) + tint * alpha).round().astype(np.uint8)))
        draw = ImageDraw.Draw(image)
        y, labels = 0.0, []
        for c, n, f in result.areas()[:8]:
            labels.append((f"{n} {100 * f:.0f}%", 0.0, y, tuple(int(v) for v in palette[c])))
            y += 6 * line_width + 4 * line_width
        draw_labels(draw, labels, line_width, font, below=True)

    # -- parity ----------------------------------------------------------------------------------
    def agreement(self, ref, out, sizes, info, rule, tolerances) -> Agreement:
        total = same = 0
        for ri, oi, size in zip(ref, out, sizes):
            for a, b in zip(self.label_maps(dict(ri), size), self.label_maps(dict(oi), size)):
                total += a.size
                same += int((a == b).sum())
        frac = same / total if total else 1.0
        status = "pass" if frac >= rule.pixel_agreement else "fail"
        return Agreement("pixels", status, f"{same}/{total} pixels of the same class as PyTorch ({frac:.3%}, need "
                                           f"{rule.pixel_agreement:.1%})",
                         {"pixels": total, "agreeing": same, "fraction": frac, "need": rule.pixel_agreement})

    def metric(self, predictions: Sequence[Segmentation], dataset: Dataset, num_classes: int) -> Dict[str, float]:
        conf = np.zeros((num_classes, num_classes), np.int64)
        for p, s in zip(predictions, dataset.samples):
            gt = read_label_map(s.mask)
            if gt.shape != p.labels.shape:
                raise DatasetError(f"{s.mask}: label map of {gt.shape[1]}x{gt.shape[0]} pixels for an image of "
                                   f"{p.width}x{p.height}")
            conf += confusion(p.labels, gt, num_classes)
        return miou(conf)

    def read_annotations(self, root: Path, images, labels, annotations=None) -> Optional[Dataset]:
        csv = annotations or (root / "annotations.csv" if (root / "annotations.csv").is_file() else None)
        if csv is not None:
            return _read_csv(root, Path(csv))
        img_dir, mask_dir = root / "images", root / "masks"
        if img_dir.is_dir() and mask_dir.is_dir():
            from ..datasets import list_images

            masks = {p.stem: p for p in list_images(mask_dir)}
            samples = []
            for p in list_images(img_dir):
                if p.stem not in masks:
                    raise DatasetError(f"{p}: no label map {p.stem}.png in {mask_dir}")
                samples.append(Sample(p, mask=masks[p.stem]))
            return Dataset(root, samples, "png", mask_dir)
        return None

    # -- serving ---------------------------------------------------------------------------------
    def triton_outputs(self, num_classes: int, top_k: int) -> List[TritonTensor]:
        return [TritonTensor("labels", "int32", (-1, -1), labels=True), TritonTensor("size", "int32", (2,))]

    def triton_arrays(self, results: Sequence[Segmentation], top_k: int) -> Dict[str, np.ndarray]:
        """Label maps in image pixels, padded to the batch's largest with -1, and each image's (height, width)."""
        h = max(r.height for r in results)
        w = max(r.width for r in results)
        labels = np.full((len(results), h, w), -1, np.int32)
        for i, r in enumerate(results):
            labels[i, :r.height, :r.width] = r.labels
        return {"labels": labels, "size": np.array([[r.height, r.width] for r in results], np.int32)}

    def from_triton(self, arrays, index, width, height, class_names) -> Segmentation:
        h, w = (int(v) for v in arrays["size"][index])
        return Segmentation(arrays["labels"][index, :h, :w].astype(np.int32), list(class_names), w, h)


def _background(result: Segmentation) -> bool:
    names = [n.lower() for n in result.class_names]
    return bool(names) and (names[0] in ("background", "bg", "_background_") or
                            (result.areas() and result.areas()[0][0] == 0))


def read_label_map(path) -> np.ndarray:
    """A label map (one class index per pixel; palette PNGs give their indices, not colours)."""
    from PIL import Image

    if isinstance(path, np.ndarray):
        return path
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"{path}: a label map must be single-channel (class index per pixel), got mode "
                                   f"{im.mode}")
            return np.asarray(im).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable label map ({exc})") from None


def _read_csv(root: Path, path: Path) -> Dataset:
    rows = read_csv(path)
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] != ["image_path", "mask_path"]:
        raise DatasetError(f"{path}: line 1: header must be image_path,mask_path (segmentation), got "
                           f"{','.join(rows[0])}")
    samples = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        img, mask = root / row[0].strip(), root / row[1].strip()
        for p in (img, mask):
            if not p.is_file():
                raise DatasetError(f"{path}: line {n}: file {p.relative_to(root)} not found in {root}")
        samples.append(Sample(img, mask=mask))
    return Dataset(root, samples, "csv", path)
