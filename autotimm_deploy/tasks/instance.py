"""Instance segmentation: a detector whose final detections also get a mask, in two networks.

The main network (``model``) is a detector (its per-level outputs decode as detection does) with one more output,
``mask_features`` (the feature map the mask head reads); the ``mask`` network runs per image: it takes that image's
``mask_features`` (1, C, h, w), its final detections' ``boxes`` (N, 4) xyxy in network-input pixels and their
``labels`` (N,), and returns ``masks`` (N, M, M): each detection's probabilities (RoIAlign, the mask head, its
class channel, sigmoid; the family's :class:`~autotimm_deploy.models.family.MaskSpec`).  The exported graph
computes RoIAlign as two matrix products (its bilinear weights are separable), so no engine needs a RoIAlign
plugin; the parity check compares it with torchvision's ``roi_align``.  NMS runs between the two on the host (the
detection task's rule); each mask is pasted into its box (bilinear, :func:`~autotimm_deploy.models.masks.paste_masks`)
and binarised at the family's threshold, then mapped to the image's pixels.  Parity: detections matched (the
``detection`` level), mask mAP and box mAP (pycocotools ``segm`` / ``bbox``) on a COCO folder with segmentations.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AutotimmError
from .base import TritonTensor
from .detection import DetectionTask, Detections, colour

__all__ = ["InstanceSegmentationTask", "Instances", "MASK_INPUTS"]

#: The mask network's inputs and output.
MASK_INPUTS = ("mask_features", "boxes", "labels")
MASK_OUTPUT = "masks"


@dataclass
class Instances(Detections):
    """Detections with a mask each (``masks`` (n, H, W) bool in the image's pixels)."""

    masks: np.ndarray = field(default=None, repr=False)

    def to_dict(self) -> Dict:
        d = super().to_dict()
        for det, m in zip(d["detections"], self.masks):
            det["mask"] = rle(m)
            det["area"] = int(m.sum())
        return d


def rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO's compressed RLE of a bool mask (``counts`` as text), what ``pycocotools.mask.decode`` reads back.

    >>> rle(np.array([[0, 1], [1, 1]], bool))["size"]
    [2, 2]
    """
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


class InstanceSegmentationTask(DetectionTask):
    name = "instance_segmentation"
    roles = (("class_logits", "ltrb", "mask_features"), ("centerness",))
    extra_networks = ("mask",)
    metric_keys = ("mask_map", "map")
    metric_names = {"mask_map": "mask mAP@0.5:0.95", "mask_map50": "mask mAP@0.5", "map": "box mAP@0.5:0.95",
                    "map50": "box mAP@0.5"}
    points_field = "mask_map_points"
    results_file = "instances.json"
    annotation_formats = "COCO JSON with segmentations (polygons or RLE)"
    result_type = Instances

    def check_family(self, family) -> None:
        super().check_family(family)
        if family.masks is None:
            raise AutotimmError(f"family {family.name}: an instance segmentation family declares its masks (MaskSpec)")

    def spatial_output(self, family, name: str) -> bool:
        return "_p" in name or name == family.output("mask_features").key

    def convention(self, family) -> Dict[str, Any]:
        m = family.masks
        return {**super().convention(family),
                "masks": f"per final detection: RoIAlign(mask_features, box, {m.roi_size}x{m.roi_size}, scale "
                         f"1/{m.feature_stride}, aligned={m.aligned}) -> mask head -> class channel -> sigmoid "
                         f"({m.mask_size}x{m.mask_size}); pasted into the box (bilinear, floor/ceil of its corners), "
                         f"> {m.threshold}"}

    # -- the mask network ------------------------------------------------------------------------
    def network(self, model, name: str, export: bool = False):
        """The PyTorch module of an extra network (``mask``: the model's mask stage; ``export``: with RoIAlign as
        matrix products, what the ONNX holds; otherwise torchvision's RoIAlign, the reference)."""
        return model.mask_stage(separable=export)

    def network_io(self, family, name: str) -> Tuple[Tuple[str, ...], Tuple[str, ...], Dict[str, Dict[int, str]]]:
        """(input names, output names, dynamic axes) of an extra network."""
        axes = {"mask_features": {2: "height", 3: "width"}, "boxes": {0: "boxes"}, "labels": {0: "boxes"},
                MASK_OUTPUT: {0: "boxes"}}
        return MASK_INPUTS, (MASK_OUTPUT,), axes

    def network_dims(self, family, name: str, batch: Tuple[int, int, int]) -> Tuple[int, Tuple[int, int, int]]:
        """For an engine profile of an extra network: the stride of its feature input relative to the image, and the
        (min, opt, max) number of boxes (the family's most detections per image, times the batch)."""
        return family.masks.feature_stride, (1, 16, family.postprocess.max_detections)

    def network_feeds(self, model, main_reference: Sequence[Dict[str, np.ndarray]], sizes, decode: str,
                      seed: int = 0):
        """Inputs for the mask network's parity check, per image of each main-network reference batch: its
        ``mask_features`` with its final detections (PyTorch's, the family's rule) and seeded random boxes and
        labels besides (every class channel and box shape exercised, at the border and tiny, even where the model
        detects little)."""
        rng = np.random.default_rng(seed)
        info = _info(model, decode)
        feeds = []
        for k, (ref, size) in enumerate(zip(main_reference, sizes)):
            feats = np.asarray(ref["mask_features"], np.float32)
            h, w = size
            for b, d in enumerate(self.detections(dict(ref), info, size, max_detections=16)):
                xy = rng.uniform(0, [w, h], size=(4, 2))
                wh = rng.uniform(1, [w / 2, h / 2], size=(4, 2))
                boxes = [list(box) for box in d["boxes"]] + [[x, y, min(w, x + bw), min(h, y + bh)]
                                                               for (x, y), (bw, bh) in zip(xy, wh)]
                boxes[-1] = [0.0, 0.0, float(w), float(h)]
                labels = list(d["labels"]) + list(rng.integers(0, model.num_classes, 4))
                feeds.append((f"mask network: {len(boxes)} boxes, batch {k} image {b}",
                              {"mask_features": feats[b:b + 1], "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                               "labels": np.asarray(labels, np.int64)}))
        return feeds

    def network_reference(self, module, feed: Dict[str, np.ndarray]) -> "OrderedDict[str, np.ndarray]":
        import torch

        with torch.no_grad():
            out = module(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in MASK_INPUTS))
        return OrderedDict([(MASK_OUTPUT, out.numpy())])

    # -- runtime ---------------------------------------------------------------------------------
    def postprocess(self, outputs, info, size, letterboxes, score_thresh=None, iou_thresh=None, max_detections=None,
                    class_agnostic: bool = False, networks: Optional[Dict[str, Any]] = None,
                    **_: Any) -> List[Instances]:
        """Detections as the detection task's, then each one's mask from the ``mask`` network (``networks["mask"]``:
        anything with ``infer(dict) -> dict``), pasted in the network's frame, then mapped to the image's pixels."""
        from ..models.masks import paste_masks

        if not networks or "mask" not in networks:
            raise AutotimmError("instance segmentation needs its mask network: load the export directory (or the "
                                "model file), not model.onnx alone")
        dets = self.detections(outputs, info, size, score_thresh, iou_thresh, max_detections, class_agnostic)
        feats = np.asarray(outputs["mask_features"])
        m = info.family.masks
        out = []
        for b, (d, lb) in enumerate(zip(dets, letterboxes)):
            boxes = d["boxes"].astype(np.float32).reshape(-1, 4)
            probs = np.zeros((0, m.mask_size, m.mask_size), np.float32)
            if len(boxes):  # the mask network runs on this image's final detections
                probs = np.asarray(networks["mask"].infer({"mask_features": feats[b:b + 1], "boxes": boxes,
                                                           "labels": d["labels"].astype(np.int64)})[MASK_OUTPUT],
                                   np.float32)
            net_masks = paste_masks(probs, boxes, size[0], size[1], m.threshold)
            rows, cols = lb.image_grid()
            inside = ((rows >= 0) & (rows < size[0]))[:, None] & ((cols >= 0) & (cols < size[1]))[None, :]
            masks = net_masks[:, np.clip(rows, 0, size[0] - 1)[:, None], np.clip(cols, 0, size[1] - 1)[None, :]]
            masks &= inside[None]
            names = [info.class_names[int(l)] for l in d["labels"]]
            out.append(Instances(lb.to_image(d["boxes"].astype(np.float32).reshape(-1, 4)), d["scores"], d["labels"],
                                 names, lb.width, lb.height, masks))
        return out

    def draw(self, image, result: Instances, line_width: int, font) -> None:
        """Each instance's mask tinted in its class colour (half opacity) with its outline, then the boxes and
        labels as detections are drawn."""
        from PIL import Image

        rgb = np.asarray(image).astype(np.float32)
        for m, lb in sorted(zip(result.masks, result.labels), key=lambda t: -int(t[0].sum())):  # small ones on top
            c = np.array(colour(lb), np.float32)
            rgb[m] = rgb[m] * 0.5 + c * 0.5
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            rgb[edge] = c
        image.paste(Image.fromarray(rgb.round().astype(np.uint8)))
        super().draw(image, result, line_width, font)

    # -- parity ----------------------------------------------------------------------------------
    def metric(self, predictions: Sequence[Instances], dataset, num_classes: int) -> Dict[str, float]:
        from ..metrics import coco_map, coco_mask_map

        gts = [{"boxes": s.boxes, "labels": s.labels, "masks": s.masks} for s in dataset.samples]
        boxes = coco_map([{"boxes": p.boxes, "scores": p.scores, "labels": p.labels} for p in predictions], gts,
                         num_classes)
        masks = coco_mask_map([{"masks": p.masks, "scores": p.scores, "labels": p.labels} for p in predictions], gts,
                              [(p.height, p.width) for p in predictions], num_classes)
        return {"mask_map": masks["map"], "mask_map50": masks["map50"], **boxes}

    def read_annotations(self, root, images, labels, annotations=None):
        from .detection.data import read_coco

        path = annotations or (root / "annotations.json" if (root / "annotations.json").is_file() else None)
        return None if path is None else read_coco(root, path, labels, masks=True)

    # -- serving ---------------------------------------------------------------------------------
    def triton_outputs(self, num_classes: int, top_k: int) -> List[TritonTensor]:
        return super().triton_outputs(num_classes, top_k) + [TritonTensor("masks", "uint8", (-1, -1, -1))]

    def triton_arrays(self, results: Sequence[Instances], top_k: int) -> Dict[str, np.ndarray]:
        out = super().triton_arrays(results, top_k)
        k = out["boxes"].shape[1]
        h = max(r.height for r in results)
        w = max(r.width for r in results)
        masks = np.zeros((len(results), k, h, w), np.uint8)
        for i, r in enumerate(results):
            masks[i, :len(r.masks), :r.height, :r.width] = r.masks
        return {**out, "masks": masks}

    def from_triton(self, arrays, index, width, height, class_names) -> Instances:
        d = super().from_triton(arrays, index, width, height, class_names)
        n = len(d.scores)
        return Instances(d.boxes, d.scores, d.labels, d.class_names, width, height,
                         arrays["masks"][index, :n, :height, :width].astype(bool))


def _info(model, decode: str):
    from ..artifact import ArtifactInfo

    family = model.family
    return ArtifactInfo(family.task, [f"class_{i}" for i in range(model.num_classes)], (0, 0), (0.0,) * 3,
                        (1.0,) * 3, decode, tuple(model.strides), family=family)
