"""A Polygraphy runner for engines of either library (``infer(dict) -> dict``), on CUDA.

Polygraphy's own ``TrtRunner`` imports ``tensorrt``; TensorRT-RTX engines need a runner of ours.
This one adapts :class:`autotimm_deploy.engines.backends.EngineBackend` (checked load, device and
pinned host buffers allocated once per shape, its own CUDA stream) to Polygraphy's Comparator.
One execution context per runner: use one runner per thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

__all__ = ["EngineRunner"]


class EngineRunner(BaseRunner):
    """Runs ``engine_path`` (checked against its sidecar first) on the current CUDA GPU."""

    def __init__(self, engine_path: str | Path, name: Optional[str] = None, allow_host_code: bool = False) -> None:
        super().__init__(name=name, prefix="engine-runner")
        self.engine_path = Path(engine_path)
        self.allow_host_code = allow_host_code

    def activate_impl(self):
        from .backends import EngineBackend

        self.backend = EngineBackend(self.engine_path, allow_host_code=self.allow_host_code)

    def deactivate_impl(self):
        self.backend.close()
        del self.backend

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for t in self.backend.sidecar["io"]["inputs"]:
            meta.add(t["name"], dtype=np.dtype(t["dtype"]), shape=tuple(t["shape"]))
        return meta

    def infer_impl(self, feed_dict: Dict[str, np.ndarray]):
        feed = {k: np.ascontiguousarray(v, dtype=self.backend.input_dtype) for k, v in feed_dict.items()}
        out = self.backend.infer(feed)
        self.inference_time = self.backend.last_inference_s
        return out
