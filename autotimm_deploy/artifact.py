"""What a runtime needs to know about a model, read from an artifact's metadata (the ONNX ``metadata_props`` that
``autotimm-export`` writes, which engine sidecars and Triton steps carry along)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .errors import AutotimmError
from .models.families import family_from_metadata
from .models.family import Family

__all__ = ["ArtifactInfo"]


@dataclass
class ArtifactInfo:
    """What a runtime needs to know about a model, read from the artifact's metadata."""

    task: str
    class_names: List[str]
    input_size: Tuple[int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    decode: str = "raw"
    strides: Tuple[int, ...] = ()
    batch: Tuple[int, int] = (1, 1 << 30)  # min, max
    dynamic_hw: bool = False
    hw_range: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None
    family: Optional[Family] = None  # None: the seed's family for the task
    overrides: Dict = field(default_factory=dict)  # what the export was told that the model file does not record

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = family_from_metadata({"task": self.task})

    @classmethod
    def from_metadata(cls, meta: Dict[str, str], batch: Tuple[int, int] = (1, 1 << 30),
                      hw_range=None) -> "ArtifactInfo":
        """From ONNX ``metadata_props`` (as written by autotimm-export) or an engine sidecar's ``model``."""
        j = lambda k, d=None: json.loads(meta[k]) if k in meta else d
        if "task" not in meta:
            raise AutotimmError("the artifact has no autotimm-deploy metadata (task, input size, mean/std); "
                                "export it with autotimm-export")
        num = int(meta.get("num_classes", 0))
        return cls(task=meta["task"], class_names=j("class_names") or [f"class_{i}" for i in range(num)],
                   input_size=tuple(j("input_size")), mean=tuple(j("mean")), std=tuple(j("std")),
                   decode=meta.get("decode", "raw"), strides=tuple(j("strides", [])), batch=batch,
                   dynamic_hw=bool(j("dynamic_hw", False)), hw_range=hw_range, family=family_from_metadata(meta),
                   overrides=j("overrides", {}))
