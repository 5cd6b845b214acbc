"""Strict JSON for every file the toolkit writes: no bare ``NaN``/``Infinity`` (JavaScript's and other strict
parsers reject them).  A missing value (NaN) becomes ``null``; an infinite one, which means something (an
output that overflowed, a shape that did not match), becomes the string ``"inf"`` / ``"-inf"``.

>>> dumps({"iou": float("nan"), "err": float("inf"), "ok": [1.5, None]})
'{"iou": null, "err": "inf", "ok": [1.5, null]}'
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["strict", "dumps"]


def strict(x: Any) -> Any:
    """``x`` with NaN -> None, +-inf -> "inf"/"-inf", numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(x, float):
        if math.isnan(x):
            return None
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy scalars
        return strict(x.item())
    return x


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`strict` (obj), refusing anything non-finite that is left."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)
