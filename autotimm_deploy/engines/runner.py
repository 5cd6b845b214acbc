"""A Polygraphy runner for engines of either library (``infer(dict) -> dict``), on CUDA through PyTorch.

Polygraphy's own ``TrtRunner`` imports ``tensorrt``; TensorRT-RTX engines need a runner of ours.
This one works for both: device buffers are PyTorch CUDA tensors, allocated once per input shape,
and the engine runs with ``execute_async_v3`` on a dedicated CUDA stream.  One execution context per
runner: use one runner per thread.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from .load import load_engine

__all__ = ["EngineRunner"]

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_,
       "int8": np.int8, "uint8": np.uint8}


class EngineRunner(BaseRunner):
    """Runs ``engine_path`` (checked against its sidecar first) on the current CUDA GPU."""

    def __init__(self, engine_path: str | Path, name: Optional[str] = None, allow_host_code: bool = False) -> None:
        super().__init__(name=name, prefix="engine-runner")
        self.engine_path = Path(engine_path)
        self.allow_host_code = allow_host_code

    def activate_impl(self):
        import torch

        self.lib, self.engine, self.sidecar = load_engine(self.engine_path, self.allow_host_code)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._buffers: Dict[str, "torch.Tensor"] = {}
        self._shape_key = None

    def deactivate_impl(self):
        del self.context, self.engine, self._buffers

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for t in self.sidecar["io"]["inputs"]:
            meta.add(t["name"], dtype=_NP[t["dtype"]], shape=tuple(t["shape"]))
        return meta

    def infer_impl(self, feed_dict: Dict[str, np.ndarray]):
        import torch

        dtypes = {t["name"]: _NP[t["dtype"]] for t in self.sidecar["io"]["inputs"] + self.sidecar["io"]["outputs"]}
        key = tuple((k, v.shape) for k, v in sorted(feed_dict.items()))
        if key != self._shape_key:  # (re)allocate device buffers for this input shape only
            self._buffers = {}
            for name, arr in feed_dict.items():
                self.context.set_input_shape(name, tuple(arr.shape))
                self._buffers[name] = torch.empty(arr.shape, dtype=getattr(torch, np.dtype(dtypes[name]).name), device="cuda")
            for t in self.sidecar["io"]["outputs"]:
                shape = tuple(self.context.get_tensor_shape(t["name"]))
                self._buffers[t["name"]] = torch.empty(shape, dtype=getattr(torch, np.dtype(dtypes[t["name"]]).name), device="cuda")
            for name, buf in self._buffers.items():
                self.context.set_tensor_address(name, buf.data_ptr())
            self._shape_key = key
        start = time.perf_counter()
        with torch.cuda.stream(self.stream):
            for name, arr in feed_dict.items():
                self._buffers[name].copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=dtypes[name])), non_blocking=False)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.engine_path}: execute_async_v3 failed")
        self.stream.synchronize()
        self.inference_time = time.perf_counter() - start
        return OrderedDict((t["name"], self._buffers[t["name"]].cpu().numpy()) for t in self.sidecar["io"]["outputs"])
