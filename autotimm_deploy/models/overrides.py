"""What the user says about a model beyond its file (class names, input size, mean/std): light to import,
so that the CLIs check these flags before torch loads."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from ..errors import ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from .loaded import LoadedModel

__all__ = ["ModelOverrides", "read_class_names"]


@dataclass(frozen=True)
class ModelOverrides:
    """What the user says about a model that its file does not (or says otherwise): class names, input
    size (H, W), normalisation.  AutoTimm checkpoints record no class names and no mean/std."""

    class_names: Optional[Tuple[str, ...]] = None
    input_size: Optional[Tuple[int, int]] = None
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "ModelOverrides":
        return cls(**{k: tuple(v) for k, v in (d or {}).items()})

    def apply(self, loaded: "LoadedModel") -> "LoadedModel":
        if not self.to_dict():
            return loaded
        from .loaded import clean_metadata  # torch: only when there is something to apply

        try:
            fresh = clean_metadata(loaded.model, self.class_names, self.input_size, self.mean, self.std)
        except ValueError as exc:
            raise ModelFileError(f"{loaded.path}: {exc}") from None
        meta = dict(loaded.metadata)
        for k in self.to_dict():
            meta[k] = fresh[k]
        meta["overrides"] = self.to_dict()
        loaded.metadata = meta
        return loaded


def read_class_names(path: str | os.PathLike) -> Tuple[str, ...]:
    """Class names from a file: a JSON list of strings, or one name per line (blank lines ignored)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{p}: cannot read class names: {getattr(exc, 'strerror', None) or exc}") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise ModelFileError(f"{p}: class names file starts like JSON but is not valid JSON: {exc}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelFileError(f"{p}: expected a JSON list of strings")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelFileError(f"{p}: no class names in the file")
    return tuple(names)
