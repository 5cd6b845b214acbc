"""What the Triton Python-backend steps compute, as plain functions over numpy arrays (tested without a server).

Each is the runtime's own code (:func:`~autotimm_deploy.engines.images.load_image`,
:func:`~autotimm_deploy.engines.images.letterbox_images`,
:func:`~autotimm_deploy.models.decode.postprocess_outputs`, :func:`~autotimm_deploy.engines.predictor.probabilities`),
so an ensemble answers what ``engines.load(export).predict(images)`` answers.  Between the steps travels one
``letterbox`` row per image: ``scale, width, height, pad_x, pad_y`` (``x_net = x_img * scale + pad``).

>>> import numpy as np
>>> from autotimm_deploy.engines.predictor import ArtifactInfo
>>> info = ArtifactInfo("classification", ["a", "b"], (32, 32), (0.5,) * 3, (0.25,) * 3)
>>> batch, lb = preprocess([np.zeros((16, 64, 3), np.uint8)], info, np.float32)
>>> batch.shape, lb.tolist()
((1, 3, 32, 32), [[0.5, 64.0, 16.0, 0.0, 0.0]])
"""

from __future__ import annotations

import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engines.images import Letterbox, letterbox_images, load_image
from ..errors import AutotimmError

__all__ = ["LETTERBOX_FIELDS", "decode_images", "preprocess", "postprocess_detections", "postprocess_classification",
           "split_rows"]

LETTERBOX_FIELDS = ("scale", "width", "height", "pad_x", "pad_y")


def decode_images(values: Sequence) -> List[np.ndarray]:
    """Encoded images (JPEG, PNG, ... as bytes: a TYPE_STRING tensor's items) as RGB uint8 HxWx3 arrays, decoded
    and EXIF-oriented as :func:`~autotimm_deploy.engines.images.load_image` does for a file."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for k, v in enumerate(values):
        data = v if isinstance(v, (bytes, bytearray)) else bytes(v)
        if not data:
            raise AutotimmError(f"image {k}: empty bytes (expected an encoded JPEG/PNG/... image)")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                out.append(load_image(im))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise AutotimmError(f"image {k}: not a readable image ({len(data)} bytes; {exc.__class__.__name__}: "
                                f"{exc})") from None
    return out


def check_uint8_images(batch: np.ndarray) -> List[np.ndarray]:
    """A (B, H, W, 3) uint8 tensor as a list of images, with one-line errors for anything else."""
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
        raise AutotimmError(f"expected uint8 images of shape (batch, H, W, 3), got {batch.dtype} {tuple(batch.shape)}")
    if batch.shape[0] == 0 or batch.shape[1] == 0 or batch.shape[2] == 0:
        raise AutotimmError(f"empty image batch of shape {tuple(batch.shape)}")
    return list(batch)


def preprocess(images: Sequence[np.ndarray], info, dtype) -> Tuple[np.ndarray, np.ndarray]:
    """The network input (B, 3, H, W) in ``dtype`` at the model's input size (the runtime's ``fit``) and the
    letterbox rows (B, 5) float32."""
    if not len(images):
        raise AutotimmError("empty image batch")
    batch, boxes = letterbox_images(list(images), tuple(info.input_size), info.mean, info.std, info.family.preprocess)
    rows = np.array([[b.scale, b.width, b.height, b.pad_x, b.pad_y] for b in boxes], np.float32).reshape(-1, 5)
    return batch.astype(dtype, copy=False), rows


def _letterbox(row: np.ndarray) -> Letterbox:
    scale, width, height, pad_x, pad_y = (float(v) for v in row)
    return Letterbox(scale, int(round(width)), int(round(height)), pad_x, pad_y)


def postprocess_detections(outputs: Dict[str, np.ndarray], letterbox: np.ndarray, info,
                           score_thresh: Optional[float] = None, iou_thresh: Optional[float] = None,
                           max_detections: Optional[int] = None) -> List[Dict[str, np.ndarray]]:
    """Per image: ``boxes`` (n, 4) xyxy in the original image's pixels, ``scores`` (n,), ``labels`` (n,) int32:
    what ``Predictor.predict`` returns for it (thresholds left ``None``: the model's own)."""
    from ..models.decode import postprocess_outputs

    dets = postprocess_outputs(outputs, info.decode, info.strides, tuple(info.input_size), score_thresh, iou_thresh,
                               max_detections, family=info.family)
    out = []
    for d, row in zip(dets, letterbox):
        boxes = _letterbox(row).to_image(d["boxes"].astype(np.float32).reshape(-1, 4))
        out.append({"boxes": boxes, "scores": d["scores"].astype(np.float32), "labels": d["labels"].astype(np.int32)})
    return out


def pad_detections(dets: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Images' detections as one batch: padded to the most detections of any image (boxes 0, scores 0, labels -1),
    with ``num_detections`` (B, 1)."""
    k = max([len(d["scores"]) for d in dets] + [0])
    b = len(dets)
    boxes, scores = np.zeros((b, k, 4), np.float32), np.zeros((b, k), np.float32)
    labels, num = np.full((b, k), -1, np.int32), np.zeros((b, 1), np.int32)
    for i, d in enumerate(dets):
        n = len(d["scores"])
        boxes[i, :n], scores[i, :n], labels[i, :n], num[i, 0] = d["boxes"], d["scores"], d["labels"], n
    return {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": num}


def postprocess_classification(logits: np.ndarray, info, top_k: int) -> Dict[str, np.ndarray]:
    """``probs`` (B, C) by the family's activation, and the ``top_k`` best ``top_labels`` (int32) / ``top_scores``."""
    from ..engines.predictor import probabilities

    probs = probabilities(np.asarray(logits), info.family)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k].astype(np.int32)
    return {"probs": probs, "top_labels": order, "top_scores": np.take_along_axis(probs, order, axis=1)}


def split_rows(arrays: Dict[str, np.ndarray], counts: Sequence[int]) -> List[Dict[str, np.ndarray]]:
    """A batch's outputs back into one dict per request (``counts``: each request's batch size)."""
    out, start = [], 0
    for n in counts:
        out.append({k: v[start:start + n] for k, v in arrays.items()})
        start += n
    return out
