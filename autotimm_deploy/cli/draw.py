"""autotimm-infer's pictures: boxes and labels drawn at the scale of the image, one file per input even when
inputs share a name.

>>> picture_names([Path("a/x/img.jpg"), Path("b/x/img.jpg"), Path("c.png"), Path("c.png")], "auto")
['a__x__img.jpg', 'b__x__img.jpg', 'c.png', 'c_2.png']
>>> picture_names([Path("/tmp/d/a.png"), Path("/tmp/d/a.png"), Path("/tmp/e/a.png")], "auto")
['d__a.png', 'd__a_2.png', 'e__a.png']
>>> line_width(640, 480), line_width(6000, 4000)
(2, 15)
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

from ..drawing import font_for, line_width  # noqa: F401 (re-exported)

__all__ = ["picture_names", "line_width", "draw_result"]

_JPEG = {".jpg", ".jpeg", ".jpe", ".jfif"}


def picture_names(paths: Sequence[Path], fmt: str) -> List[str]:
    """One picture name per input: the file name, or as much of its path as tells inputs with the same name apart
    (folders joined by ``__``); extension ``.jpg`` or ``.png`` (``fmt="auto"``: JPEG for JPEG inputs)."""
    parts = [Path(p).parts[1:] if Path(p).anchor else Path(p).parts for p in paths]  # never the root or a drive
    names = []
    for i, pp in enumerate(parts):
        stem = Path(pp[-1]).stem
        depth = 1  # the same file given twice is told apart by a number below, not by its folders
        while depth < len(pp) and any(j != i and q != pp and Path(q[-1]).stem == stem and q[-depth:-1] == pp[-depth:-1]
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


def draw_result(image: np.ndarray, result, path: Path, fmt: str, task) -> None:
    """Draw ``result`` as its task draws it (boxes, a label, masks...) on ``image`` and write it atomically to
    ``path``."""
    from PIL import Image

    from .._atomic import atomic_open

    img = Image.fromarray(image)
    lw = line_width(img.width, img.height)
    task.draw(img, result, lw, font_for(lw))
    with atomic_open(path, "wb") as f:
        img.save(f, format="JPEG" if path.suffix == ".jpg" else "PNG", **({"quality": 92} if path.suffix == ".jpg" else {}))
