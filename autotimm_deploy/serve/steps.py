"""What the Triton Python-backend steps compute, as plain functions over numpy arrays (tested without a server).

Each is the runtime's own code (:func:`~autotimm_deploy.images.load_image`,
:func:`~autotimm_deploy.images.letterbox_images`, and the model's task's post-processing
:meth:`~autotimm_deploy.tasks.base.Task.postprocess`), so an ensemble answers what
``engines.load(export).predict(images)`` answers.  Between the steps travels one ``letterbox`` row per image:
:data:`~autotimm_deploy.images.LETTERBOX_FIELDS` (``x_net = x_img * scale + pad_x``, ``y_net = y_img * scale_y +
pad_y``).

>>> import numpy as np
>>> from autotimm_deploy.engines.predictor import ArtifactInfo
>>> info = ArtifactInfo("classification", ["a", "b"], (32, 32), (0.5,) * 3, (0.25,) * 3)
>>> batch, lb = preprocess([np.zeros((16, 64, 3), np.uint8)], info, np.float32)
>>> batch.shape, lb.tolist()
((1, 3, 32, 32), [[0.5, 64.0, 16.0, 0.0, 0.0, 0.5]])
"""

from __future__ import annotations

import io
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..errors import AutotimmError
from ..images import LETTERBOX_FIELDS, Letterbox, letterbox_images, load_image
from ..tasks import get_task

__all__ = ["LETTERBOX_FIELDS", "decode_images", "preprocess", "postprocess", "split_rows"]


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
    letterbox rows (B, len(LETTERBOX_FIELDS)) float32."""
    if not len(images):
        raise AutotimmError("empty image batch")
    batch, boxes = letterbox_images(list(images), tuple(info.input_size), info.mean, info.std, info.family.preprocess)
    rows = np.array([b.row() for b in boxes], np.float32).reshape(-1, len(LETTERBOX_FIELDS))
    return batch.astype(dtype, copy=False), rows


def postprocess(outputs: Dict[str, np.ndarray], letterbox: np.ndarray, info, top_k: int = 5,
                **params) -> Dict[str, np.ndarray]:
    """The network's outputs of a batch -> the ensemble's output tensors: each image's results as
    ``Predictor.predict`` returns them (the task's post-processing; thresholds left ``None``: the model's own), as
    the task lays them out for Triton (padded to the batch's largest)."""
    task = get_task(info.task)
    results = task.postprocess(outputs, info, tuple(info.input_size), [Letterbox.from_row(r) for r in letterbox],
                               **params)
    return task.triton_arrays(results, top_k)


def split_rows(arrays: Dict[str, np.ndarray], counts: Sequence[int]) -> List[Dict[str, np.ndarray]]:
    """A batch's outputs back into one dict per request (``counts``: each request's batch size)."""
    out, start = [], 0
    for n in counts:
        out.append({k: v[start:start + n] for k, v in arrays.items()})
        start += n
    return out
