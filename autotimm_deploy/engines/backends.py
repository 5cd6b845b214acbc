"""Backends: one ``infer(dict of arrays) -> dict of arrays`` contract over ONNX Runtime, PyTorch and
TensorRT / TensorRT-RTX engines.

Thread-safety: a backend owns one session / execution context and its buffers; it is **not**
thread-safe.  Give each thread its own backend (``load(...)`` again, or ``backend.clone()``): ONNX
Runtime sessions and engines are then independent, and the engine's weights are deserialised once
per backend.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import EngineError

__all__ = ["Backend", "OnnxRuntimeBackend", "TorchBackend", "EngineBackend", "onnxruntime_providers"]


class Backend:
    """Base class: ``name``, ``input_name``, ``input_dtype``, ``infer(feed) -> outputs``, ``close()``."""

    name = "backend"
    input_name = "images"
    input_dtype = np.dtype(np.float32)
    last_inference_s = 0.0

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def clone(self) -> "Backend":  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def onnxruntime_providers() -> List[str]:
    """CUDA when the installed ONNX Runtime has it *and* a GPU is present, then CPU."""
    import onnxruntime as ort

    from .library import gpu_info

    have = ort.get_available_providers()
    out = []
    if "CUDAExecutionProvider" in have and gpu_info() is not None:
        out.append("CUDAExecutionProvider")
    return out + ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    """An ONNX file in ONNX Runtime (``providers=None``: :func:`onnxruntime_providers`)."""

    def __init__(self, path: str | Path, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.providers = list(providers) if providers else onnxruntime_providers()
        self.threads = threads
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.dtype(np.float16 if inp.type == "tensor(float16)" else np.float32)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.name = f"onnxruntime ({self.session.get_providers()[0].replace('ExecutionProvider', '')})"

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        start = time.perf_counter()
        outs = self.session.run(self.output_names, feed)
        self.last_inference_s = time.perf_counter() - start
        return OrderedDict(zip(self.output_names, outs))

    def clone(self) -> "OnnxRuntimeBackend":
        return OnnxRuntimeBackend(self.path, self.providers, self.threads)


class TorchBackend(Backend):
    """The PyTorch model file or AutoTimm checkpoint itself (CPU, FP32, eager): the reference.  Returns raw
    head outputs (or ``logits``), decoded by the same post-processing as every other backend."""

    def __init__(self, model_path: str | Path, decode_mode: str = "raw", overrides=None):
        from ..models.overrides import ModelOverrides
        from ..models.readers import load_model_file

        self.path = Path(model_path)
        self.overrides = overrides if isinstance(overrides, ModelOverrides) else ModelOverrides.from_dict(overrides)
        self.loaded = load_model_file(self.path, self.overrides)
        self.decode_mode = decode_mode
        self.name = "pytorch (eager, CPU, FP32)"

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch

        from ..tasks import task_of

        start = time.perf_counter()
        images = torch.from_numpy(np.ascontiguousarray(feed[self.input_name], dtype=np.float32))
        model = self.loaded.model
        with torch.no_grad():
            forward = model(images)
        out = task_of(model.family).reference(model, forward, tuple(images.shape[-2:]), self.decode_mode, None)
        self.last_inference_s = time.perf_counter() - start
        return out

    def clone(self) -> "TorchBackend":
        return TorchBackend(self.path, self.decode_mode, self.overrides)


class TorchNetworkBackend(Backend):
    """An extra network of a model's task (instance segmentation's mask head) in PyTorch: the reference."""

    def __init__(self, model, name: str):
        from ..tasks import task_of

        self.task = task_of(model.family)
        self.module = self.task.network(model, name).eval()
        self.name = f"pytorch {name} network"

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.task.network_reference(self.module, feed)
        self.last_inference_s = time.perf_counter() - start
        return out


class EngineBackend(Backend):
    """A TensorRT or TensorRT-RTX engine on the current CUDA GPU.

    Checked against its sidecar before deserialising (:func:`autotimm_deploy.engines.load.load_engine`).
    Device buffers (PyTorch CUDA tensors) and pinned host buffers are allocated once per input shape;
    the engine runs with ``execute_async_v3`` on its own CUDA stream.  With ``cuda_graphs=True`` the
    launch is captured into a CUDA graph per input shape on the second call and replayed afterwards.
    """

    def __init__(self, engine_path: str | Path, cuda_graphs: bool = False, allow_host_code: bool = False):
        import torch

        from .load import load_engine

        self.path = Path(engine_path)
        self.cuda_graphs = cuda_graphs
        self.allow_host_code = allow_host_code
        self.lib, self.engine, self.sidecar = load_engine(self.path, allow_host_code)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{self.path}: could not create an execution context (out of GPU memory?)")
        self.stream = torch.cuda.Stream()
        io = self.sidecar["io"]
        self.input_name = io["inputs"][0]["name"]
        self.input_dtype = np.dtype(io["inputs"][0]["dtype"])  # sidecar dtypes are numpy names
        self._dtypes = {t["name"]: np.dtype(t["dtype"]) for t in io["inputs"] + io["outputs"]}
        self._outputs = [t["name"] for t in io["outputs"]]
        self._shape = None
        self._graphs: Dict[tuple, object] = {}
        self._calls: Dict[tuple, int] = {}
        self.name = f"{self.lib.name} {self.lib.version} engine ({self.sidecar['precision']})"

    def _allocate(self, feed: Dict[str, np.ndarray]) -> None:
        import torch

        tdt = lambda n: getattr(torch, np.dtype(self._dtypes[n]).name)
        self._dev, self._host = {}, {}
        for name, arr in feed.items():
            if not self.context.set_input_shape(name, tuple(arr.shape)):
                raise EngineError(f"{self.path}: input {name} shape {tuple(arr.shape)} is outside the engine's "
                                  f"profile {self.sidecar['profiles']}")
            self._dev[name] = torch.empty(arr.shape, dtype=tdt(name), device="cuda")
            self._host[name] = torch.empty(arr.shape, dtype=tdt(name), pin_memory=True)
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            self._dev[name] = torch.empty(shape, dtype=tdt(name), device="cuda")
            self._host[name] = torch.empty(shape, dtype=tdt(name), pin_memory=True)
        for name, buf in self._dev.items():
            self.context.set_tensor_address(name, buf.data_ptr())

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch

        key = tuple((k, tuple(v.shape)) for k, v in sorted(feed.items()))
        if key != self._shape:
            self._allocate(feed)
            self._shape = key
        start = time.perf_counter()
        for name, arr in feed.items():
            self._host[name].numpy()[...] = arr
        with torch.cuda.stream(self.stream):
            for name in feed:
                self._dev[name].copy_(self._host[name], non_blocking=True)
            graph = self._graphs.get(key)
            if graph is not None:
                graph.replay()
            elif self.cuda_graphs and self._calls.get(key, 0) >= 1:  # warm call done: capture this shape
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self.context.execute_async_v3(self.stream.cuda_stream)
                self._graphs[key] = graph
                graph.replay()
            elif not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineError(f"{self.path}: execute_async_v3 failed")
            for name in self._outputs:
                self._host[name].copy_(self._dev[name], non_blocking=True)
        self.stream.synchronize()
        self._calls[key] = self._calls.get(key, 0) + 1
        self.last_inference_s = time.perf_counter() - start
        return OrderedDict((n, self._host[n].numpy().copy()) for n in self._outputs)

    def clone(self) -> "EngineBackend":
        return EngineBackend(self.path, self.cuda_graphs, self.allow_host_code)

    def close(self) -> None:
        self._graphs.clear()
        for attr in ("context", "engine", "_dev", "_host"):
            if hasattr(self, attr):
                delattr(self, attr)
