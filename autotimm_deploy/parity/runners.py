"""Polygraphy runners: a CPU PyTorch runner that produces the same named outputs as an export."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Callable, Dict, Optional

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from ..tasks import task_of

__all__ = ["TorchRunner", "BackendRunner", "reference_outputs", "reference_from_forward", "cache_key"]


def reference_outputs(model: torch.nn.Module, images: torch.Tensor, decode_mode: str = "raw",
                      topk: Optional[int] = None) -> "OrderedDict[str, np.ndarray]":
    """What an export with ``decode_mode`` (and ``topk``) must produce, computed in PyTorch.

    This is the oracle: the model's own forward and the reference decoder of
    :mod:`autotimm_deploy.models.decode` for the model's family, never the exported graph.
    """
    with torch.no_grad():
        out = model(images)
    return reference_from_forward(model, out, tuple(images.shape[-2:]), decode_mode, topk)


def reference_from_forward(model: torch.nn.Module, out, image_hw, decode_mode: str = "raw",
                           topk: Optional[int] = None) -> "OrderedDict[str, np.ndarray]":
    """:func:`reference_outputs` from the model's forward output ``out`` on images of size ``image_hw``."""
    return task_of(model.family).reference(model, out, tuple(image_hw), decode_mode, topk)


def cache_key(model: torch.nn.Module, decode_mode: str, topk: Optional[int], images: np.ndarray) -> tuple:
    """The key of a reference in a :class:`TorchRunner` cache: the model, what it decodes, the input's bytes."""
    arr = np.ascontiguousarray(images, dtype=np.float32)
    return (id(model), decode_mode, topk, arr.shape, hashlib.sha1(arr.tobytes()).hexdigest())


class TorchRunner(BaseRunner):
    """Runs an autotimm-deploy model on the CPU in PyTorch (Polygraphy's own runner calls ``.cuda()``).

    ``infer({"images": array}) -> {name: array}`` with the names and meaning of the export made
    with the same ``decode_mode``/``topk``.
    """

    def __init__(self, model: torch.nn.Module, decode_mode: str = "raw", topk: Optional[int] = None,
                 name: Optional[str] = None, cache: Optional[dict] = None,
                 reference: Optional[Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = None,
                 inputs: Optional[Dict[str, np.ndarray]] = None) -> None:
        super().__init__(name=name, prefix="pytorch-runner")
        self.model = model.eval()
        self.decode_mode = decode_mode
        self.topk = topk
        self.cache = cache  # shared between parity runs of several artifacts: the reference runs once per input
        self.progress: Optional[Callable[[str], None]] = None  # called before each input, with a note on reuse
        self.reference = reference  # another network of the model (its task's): feed -> outputs, not cached
        self.inputs = inputs  # that network's example feed (names, dtypes)

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def get_input_metadata_impl(self):
        if self.inputs is not None:
            meta = TensorMetadata()
            for k, v in self.inputs.items():
                meta.add(k, dtype=np.asarray(v).dtype, shape=(-1,) * np.asarray(v).ndim)
            return meta
        return TensorMetadata().add("images", dtype=np.float32, shape=(-1, 3, -1, -1))

    def infer_impl(self, feed_dict: Dict[str, np.ndarray]):
        if self.reference is not None:
            if self.progress is not None:
                self.progress()
            start = time.perf_counter()
            out = self.reference(feed_dict)
            self.inference_time = time.perf_counter() - start
            return out
        arr = np.ascontiguousarray(feed_dict["images"], dtype=np.float32)
        key = None
        if self.cache is not None:
            key = cache_key(self.model, self.decode_mode, self.topk, arr)
            if key in self.cache:
                if self.progress is not None:
                    self.progress(": reused (computed once for every artifact)")
                self.inference_time = 0.0
                return OrderedDict((k, v.copy()) for k, v in self.cache[key].items())
        if self.progress is not None:
            self.progress()
        start = time.perf_counter()
        out = reference_outputs(self.model, torch.from_numpy(arr), self.decode_mode, self.topk)
        self.inference_time = time.perf_counter() - start
        if key is not None:
            self.cache[key] = OrderedDict((k, v.copy()) for k, v in out.items())
        return out


class BackendRunner(BaseRunner):
    """A Polygraphy runner over an autotimm-deploy :class:`~autotimm_deploy.engines.backends.Backend`
    (ONNX Runtime, engine): float32 feeds are cast to the artifact's input dtype (an FP16-input ONNX
    gets float16), so one data loader serves PyTorch and every artifact."""

    def __init__(self, make_backend, name: Optional[str] = None) -> None:
        super().__init__(name=name, prefix="backend-runner")
        self.make_backend = make_backend

    def activate_impl(self):
        self.backend = self.make_backend()

    def deactivate_impl(self):
        self.backend.close()
        del self.backend

    def get_input_metadata_impl(self):
        return TensorMetadata().add(self.backend.input_name, dtype=np.dtype(self.backend.input_dtype), shape=(-1, 3, -1, -1))

    def infer_impl(self, feed_dict: Dict[str, np.ndarray]):
        feed = {k: np.ascontiguousarray(v, dtype=self.backend.input_dtype) for k, v in feed_dict.items()}
        start = time.perf_counter()
        out = self.backend.infer(feed)
        self.inference_time = time.perf_counter() - start
        return OrderedDict((k, np.asarray(v)) for k, v in out.items())
