"""Talking to a generated repository's ensemble with ``tritonclient`` (HTTP or gRPC), results as the runtime's own
:class:`~autotimm_deploy.engines.predictor.Detections` / :class:`~autotimm_deploy.engines.predictor.Classification`,
and a bounded load generator (N clients x M requests, each with a timeout) for tests and ``scripts/bench_serving.py``.
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import AutotimmError
from ..images import ImageLike, load_image

__all__ = ["encode_image", "TritonModelClient", "LoadResult", "run_load"]


def encode_image(image: ImageLike, format: str = "PNG") -> bytes:
    """An image as encoded bytes (PNG by default: lossless, so the server sees the same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(load_image(image)).save(buf, format=format)
    return buf.getvalue()


class TritonModelClient:
    """One ensemble of a generated repository (``NAME`` takes encoded images, ``NAME_uint8`` uint8 HWC images)
    over ``protocol`` ``http`` or ``grpc``; ``timeout_s`` bounds every request."""

    def __init__(self, url: str, model: str, protocol: str = "http", timeout_s: float = 60.0,
                 class_names: Optional[Sequence[str]] = None) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be http or grpc, got {protocol!r}")
        if protocol == "http":
            import tritonclient.http as tc

            self.client = tc.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as tc

            self.client = tc.InferenceServerClient(url)
        self.tc, self.protocol, self.model, self.timeout_s = tc, protocol, model, timeout_s
        meta = self.client.get_model_metadata(model)
        meta = meta if isinstance(meta, dict) else {"inputs": [{"name": i.name, "datatype": i.datatype}
                                                               for i in meta.inputs],
                                                    "outputs": [{"name": o.name} for o in meta.outputs]}
        self.input = meta["inputs"][0]
        self.outputs = [o["name"] for o in meta["outputs"]]
        params = self._parameters()
        self.task = params.get("task") or _task_of_outputs(self.outputs)
        # the repository records its class names (labels.txt's, as a parameter of the ensemble): a client never needs
        # to be told them, and one told other names than the model's is refused
        served = json.loads(params["class_names"]) if params.get("class_names") else None
        if class_names is not None and served is not None and list(class_names) != served:
            raise AutotimmError(f"{model}: class_names {list(class_names)[:4]}... differ from the model's own "
                                f"{served[:4]}... (its repository's labels.txt): leave class_names out")
        self.class_names = served if served is not None else (list(class_names) if class_names is not None else None)

    def _parameters(self) -> Dict[str, str]:
        """The ensemble's config parameters (``task``, ``class_names``), HTTP or gRPC."""
        cfg = self.client.get_model_config(self.model)
        if isinstance(cfg, dict):  # HTTP: the config as JSON
            return {k: v.get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
        return {k: v.string_value for k, v in cfg.config.parameters.items()}

    def _input(self, images: Sequence[ImageLike]):
        if self.input["datatype"] == "BYTES":
            data = np.array([[im if isinstance(im, bytes) else encode_image(im)] for im in images], dtype=np.object_)
        else:
            data = np.stack([load_image(im) for im in images])
        x = self.tc.InferInput(self.input["name"], list(data.shape), self.input["datatype"])
        x.set_data_from_numpy(data)
        return x

    def infer_raw(self, images: Sequence[ImageLike], inputs=None) -> Dict[str, np.ndarray]:
        """The ensemble's output tensors for a batch of images (or for ready-made ``InferInput``s)."""
        req = inputs if inputs is not None else [self._input(images)]
        outs = [self.tc.InferRequestedOutput(n) for n in self.outputs]
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        res = self.client.infer(self.model, req, outputs=outs, **kw)
        return {n: res.as_numpy(n) for n in self.outputs}

    def predict(self, images: Sequence[ImageLike]):
        """One :class:`Detections` or :class:`Classification` per image, as ``Predictor.predict`` returns."""
        from ..tasks import get_task
        from .steps import decode_images

        out = self.infer_raw(images)
        names = self.class_names or []
        task = get_task(self.task)
        results = []
        for i, im in enumerate(images):
            h, w = (decode_images([im])[0] if isinstance(im, bytes) else load_image(im)).shape[:2]
            results.append(task.from_triton(out, i, w, h, names))
        return results

    def close(self) -> None:
        self.client.close()


def _task_of_outputs(outputs) -> str:
    """The task whose Triton outputs an ensemble has."""
    from ..tasks import get_task, task_names

    for name in task_names():
        if {t.name for t in get_task(name).triton_outputs(1, 1)} == set(outputs):
            return name
    raise AutotimmError(f"the model's outputs {sorted(outputs)} are not those of an autotimm-deploy ensemble")


@dataclass
class LoadResult:
    requests: int
    failures: List[str] = field(default_factory=list)
    latencies_ms: List[float] = field(default_factory=list)
    wall_s: float = 0.0
    images_per_request: int = 1

    @property
    def throughput(self) -> float:
        """Images per second over the whole run."""
        return len(self.latencies_ms) * self.images_per_request / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def run_load(make_client: Callable[[], TritonModelClient], images: Sequence[ImageLike], clients: int = 8,
             requests: int = 50, batch: int = 1, check: Optional[Callable[[Dict, List[int]], Optional[str]]] = None,
             during: Optional[Callable[[], None]] = None) -> LoadResult:
    """``clients`` threads, each with its own client, send ``requests`` requests of ``batch`` images (cycling
    through ``images``); every failure is recorded with its message (a timeout is a failure), and
    ``check(outputs, image_indices)`` may call an answer wrong (by returning why).  ``during()`` runs in the calling thread while the clients run (a model reload)."""
    payloads = [encode_image(im) for im in images]
    result = LoadResult(requests=clients * requests, images_per_request=batch)
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        try:
            client = make_client()
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            with lock:
                result.failures.append(f"client {k}: {exc}")
            ready.wait()
            return
        ready.wait()
        for r in range(requests):
            idx = [(k * requests + r + j) % len(payloads) for j in range(batch)]
            t0 = time.perf_counter()
            try:
                out = client.infer_raw([payloads[i] for i in idx])
                bad = check(out, idx) if check else None
            except Exception as exc:  # noqa: BLE001
                out, bad = None, f"{exc.__class__.__name__}: {exc}"
            dt = (time.perf_counter() - t0) * 1000.0
            with lock:
                if bad:
                    result.failures.append(f"client {k} request {r}: {bad}")
                else:
                    result.latencies_ms.append(dt)
        client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    if during:
        during()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - start
    return result
