"""autotimm-infer's pictures: boxes and labels drawn at the scale of the image, one file per input even when
inputs share a name.

>>> picture_names([Path("a/x/img.jpg"), Path("b/x/img.jpg"), Path("c.png"), Path("c.png")], "auto")
['a__x__img.jpg', 'b__x__img.jpg', 'c.png', 'c_2.png']
>>> line_width(640, 480), line_width(6000, 4000)
(2, 15)
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

__all__ = ["picture_names", "line_width", "draw_result"]

_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60)]
_JPEG = {".jpg", ".jpeg", ".jpe", ".jfif"}


def picture_names(paths: Sequence[Path], fmt: str) -> List[str]:
    """One picture name per input: the file name, or as much of its path as tells inputs with the same name apart
    (folders joined by ``__``); extension ``.jpg`` or ``.png`` (``fmt="auto"``: JPEG for JPEG inputs)."""
    parts = [Path(p).parts for p in paths]
    names = []
    for i, pp in enumerate(parts):
        stem = Path(pp[-1]).stem
        depth = 1
        while depth < len(pp) and any(j != i and Path(q[-1]).stem == stem and q[-depth:-1] == pp[-depth:-1]
                                      for j, q in enumerate(parts)):
            depth += 1
        ext = ".jpg" if fmt == "jpg" or (fmt == "auto" and Path(pp[-1]).suffix.lower() in _JPEG) else ".png"
        names.append("__".join([*pp[-depth:-1], stem]) + ext)
    seen: dict = {}
    for i, n in enumerate(names):  # still equal (a.png and a.jpg in one folder, the same file twice): number them
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{Path(n).stem}_{seen[n]}{Path(n).suffix}"
    return names


def line_width(width: int, height: int) -> int:
    """Box outline width in pixels: 2 px up to 800 px images, then growing with the longer side (15 px at 6000)."""
    return max(2, round(max(width, height) / 400))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1)
    except TypeError:  # pragma: no cover - older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def draw_result(image: np.ndarray, result, path: Path, fmt: str) -> None:
    """Draw ``result`` (detections or a classification) on ``image`` and write it atomically to ``path``."""
    from PIL import Image, ImageDraw

    from .._atomic import atomic_open

    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    lw = line_width(img.width, img.height)
    font = _font(max(11, 6 * lw))
    labels = []
    if hasattr(result, "boxes"):
        for b, s, lb, n in zip(result.boxes, result.scores, result.labels, result.class_names):
            colour = _COLOURS[int(lb) % len(_COLOURS)]
            draw.rectangle([float(v) for v in b], outline=colour, width=lw)
            labels.append((f"{n} {s:.2f}", float(b[0]), float(b[1]), colour))
    else:
        name, prob = result.top(1)[0]
        labels.append((f"{name} {prob:.2f}", 0.0, 0.0, (40, 40, 40)))
    for text, x, y, colour in labels:  # after every box: no box is drawn over a label
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * lw, bottom - top + 2 * lw
        y0 = y - th if y - th >= 0 else y  # above the box, or inside it at the image's top edge
        draw.rectangle([x, y0, x + tw, y0 + th], fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((x + lw - left, y0 + lw - top), text, font=font, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))
    with atomic_open(path, "wb") as f:
        img.save(f, format="JPEG" if path.suffix == ".jpg" else "PNG", **({"quality": 92} if path.suffix == ".jpg" else {}))
