"""Images into the network: loading (displayed orientation, 8-bit RGB) and the resize a model family declares
(letterbox, resize + centre crop, or a plain stretch), with where each image went so boxes and masks map back to
its pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import AutotimmError
from .models.family import Preprocess

__all__ = ["ImageLike", "Letterbox", "LETTERBOX_FIELDS", "load_image", "letterbox_images"]


@dataclass
class Letterbox:
    """How an image was placed in the network input: ``x_net = x_img * scale + pad_x`` and
    ``y_net = y_img * scale_y + pad_y`` (``scale_y`` is ``scale`` except for a stretch, which does not keep the
    aspect ratio)."""

    scale: float
    width: int  # original image size
    height: int
    pad_x: float = 0.0
    pad_y: float = 0.0
    scale_y: Optional[float] = None  # None: the same as scale

    @property
    def sy(self) -> float:
        return self.scale if self.scale_y is None else self.scale_y

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (n, 4) xyxy from network-input pixels to the original image's, clipped to it, corners ordered
        (x1 <= x2, y1 <= y2): a model with unconstrained distances (AutoTimm's YOLOX head) can predict l + r < 0, a
        box inside out; its corners are swapped here, so no result holds an inverted box.

        >>> Letterbox(1.0, 100, 100).to_image(np.array([[50.0, 10, 40, 20]], np.float32)).tolist()
        [[40.0, 10.0, 50.0, 20.0]]
        """
        out = ((boxes - np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32))
               / np.array([self.scale, self.sy, self.scale, self.sy], np.float32))
        out[:, 0::2] = out[:, 0::2].clip(0, self.width)
        out[:, 1::2] = out[:, 1::2].clip(0, self.height)
        return np.concatenate([np.minimum(out[:, :2], out[:, 2:]), np.maximum(out[:, :2], out[:, 2:])], axis=1)

    def image_grid(self) -> Tuple[np.ndarray, np.ndarray]:
        """For every pixel of the original image, the network-input pixel its centre falls in (rows (H,), cols (W,),
        clipped to the padded area's extent by the caller): what a per-pixel network output (a label map) is
        sampled at to come back to image pixels (nearest)."""
        ys = (np.arange(self.height, dtype=np.float64) + 0.5) * self.sy + self.pad_y
        xs = (np.arange(self.width, dtype=np.float64) + 0.5) * self.scale + self.pad_x
        return np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)

    def row(self) -> List[float]:
        """As one row of floats (:data:`LETTERBOX_FIELDS`), e.g. a tensor between Triton steps."""
        return [self.scale, self.width, self.height, self.pad_x, self.pad_y, self.sy]

    @classmethod
    def from_row(cls, row) -> "Letterbox":
        scale, width, height, pad_x, pad_y, sy = (float(v) for v in row)
        return cls(scale, int(round(width)), int(round(height)), pad_x, pad_y, None if sy == scale else sy)


#: The fields of :meth:`Letterbox.row`.
LETTERBOX_FIELDS = ("scale", "width", "height", "pad_x", "pad_y", "scale_y")


ImageLike = Union[np.ndarray, str, Path, "PIL.Image.Image"]  # noqa: F821


def _to_rgb8(im) -> np.ndarray:
    """A PIL image, EXIF orientation applied (the displayed frame), as RGB uint8.  16-bit greyscale is scaled
    to 8 bits (PIL's RGB conversion clips it: every value above 255 became white)."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit PNG / TIFF greyscale ("I": 0-65535 assumed)
        grey = np.clip(np.round(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        raise AutotimmError("32-bit floating point images are not supported: save it as 8- or 16-bit")
    return np.asarray(im.convert("RGB"))


def load_image(image: ImageLike) -> np.ndarray:
    """An RGB uint8 HxWx3 array from a path, a PIL image or an array, in its displayed orientation (EXIF applied).

    Grey, palette, RGBA (alpha dropped) and 16-bit images (scaled by 1/257) are converted; any image of at
    least 1x1 pixel is accepted (the letterbox scales it); an array must be HxW, HxWx3 or HxWx4 of uint8 or
    uint16.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                return _to_rgb8(im)
        except FileNotFoundError:
            raise AutotimmError(f"{image}: no such image file") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise AutotimmError(f"{image}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    if hasattr(image, "convert"):
        return _to_rgb8(image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise AutotimmError(f"expected an HxWx3 RGB image, got an array of shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise AutotimmError(f"expected uint8 (0-255) or uint16 pixels, got {arr.dtype}")
    return arr[..., :3]


def letterbox_images(images: Sequence[np.ndarray], size: Tuple[int, int], mean: Sequence[float],
                     std: Sequence[float], preprocess: Optional[Preprocess] = None) -> Tuple[np.ndarray, List[Letterbox]]:
    """Resize uint8 HxWx3 images into ``size`` as ``preprocess`` says (default: letterbox, top-left, mean-colour
    padding) and normalise: float32 (B, 3, H, W) and where each image went.

    >>> batch, boxes = letterbox_images([np.zeros((50, 100, 3), np.uint8)], (64, 64), (0.5,) * 3, (0.25,) * 3)
    >>> batch.shape, boxes[0].scale, float(batch[0, 0, 0, 0]), float(batch[0, 0, 63, 0])
    ((1, 3, 64, 64), 0.64, -2.0, 0.0)
    >>> centred = Preprocess(align="center", fill=(114, 114, 114))
    >>> _, boxes = letterbox_images([np.zeros((50, 100, 3), np.uint8)], (64, 64), (0.5,) * 3, (0.25,) * 3, centred)
    >>> boxes[0].pad_x, boxes[0].pad_y
    (0, 16)
    """
    from PIL import Image

    pre = preprocess or Preprocess()
    th, tw = size
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    fill = mean if pre.fill is None else np.asarray(pre.fill, np.float32) / 255.0
    batch = np.empty((len(images), 3, th, tw), np.float32)
    boxes = []
    for k, img in enumerate(images):
        h, w = img.shape[:2]
        if pre.resize == "resize_crop":  # torchvision Resize(shorter side) + CenterCrop, AutoTimm's classifier eval
            short = int(min(th, tw) / pre.crop_fraction)
            nh, nw = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
            scale = short / min(h, w)
            px, py = -int(round((nw - tw) / 2.0)), -int(round((nh - th) / 2.0))
        elif pre.resize == "stretch":  # albumentations' Resize(H, W): AutoTimm's segmentation eval
            nh, nw, px, py = th, tw, 0, 0
            scale = tw / w
        else:
            scale = min(th / h, tw / w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            px, py = ((tw - nw) // 2, (th - nh) // 2) if pre.align == "center" else (0, 0)
        resized = img if (nh, nw) == (h, w) else np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
        canvas = np.empty((th, tw, 3), np.float32)
        canvas[...] = fill
        ys, xs = max(py, 0), max(px, 0)
        ye, xe = min(py + nh, th), min(px + nw, tw)
        canvas[ys:ye, xs:xe] = resized[ys - py:ye - py, xs - px:xe - px].astype(np.float32) / 255.0
        batch[k] = ((canvas - mean) / std).transpose(2, 0, 1)
        boxes.append(Letterbox(scale, w, h, px, py, th / h if pre.resize == "stretch" and th / h != scale else None))
    return batch, boxes


