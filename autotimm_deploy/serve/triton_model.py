"""The Triton Python-backend model of every generated step: ``<version>/model.py`` of a repository imports
:class:`TritonPythonModel` from here, and the model's ``config.pbtxt`` parameter ``step`` says which step it is:

- ``preprocess``: encoded images (TYPE_STRING) or uint8 HWC tensors -> the network input + letterbox rows;
- ``network``: the exported ONNX in ONNX Runtime through the project's runtime (the CPU variant's network);
- ``postprocess``: the network's outputs + letterbox rows -> the task's outputs (detectors: ``detection_boxes/
  scores/labels`` and ``num_detections``; classifiers: ``probs`` and ``top_labels``/``top_scores``; ...).

Every step reads the model's metadata (``<version>/model.json``, the ONNX's ``metadata_props``) into the runtime's
:class:`~autotimm_deploy.engines.predictor.ArtifactInfo`.  Requests that Triton batched together run as one batch;
a request that cannot be served (corrupt image bytes, a wrong shape) gets its own error response and the others
are answered.  ``triton_python_backend_utils`` exists only inside Triton: it is imported by ``initialize``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..errors import AutotimmError
from . import steps
from .configs import POST_NAMES

__all__ = ["TritonPythonModel"]


class TritonPythonModel:
    def initialize(self, args: Dict[str, str]) -> None:
        import triton_python_backend_utils as pb

        from ..engines.predictor import ArtifactInfo

        self.pb = pb
        self.config = json.loads(args["model_config"])
        self.params = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / str(args["model_version"])
        self.info = ArtifactInfo.from_metadata(json.loads((here / "model.json").read_text()))
        self.step = self.params["step"]
        self.inputs = [i["name"] for i in self.config["input"]]
        self.outputs = [o["name"] for o in self.config["output"]]
        if self.step == "preprocess":
            self.dtype = np.dtype(self.params["input_dtype"])
        elif self.step == "network":
            from ..engines.backends import OnnxRuntimeBackend

            threads = int(self.params.get("threads", "0")) or None
            gpu = args.get("model_instance_kind") == "GPU"  # CUDA where ONNX Runtime has it and a GPU is present
            self.backend = OnnxRuntimeBackend(here / self.params["onnx"], None if gpu else ["CPUExecutionProvider"],
                                              threads=threads)
        elif self.step == "postprocess":
            from ..models import decode  # noqa: F401  (torch: loaded once here, not on the first request)

            num = lambda k, cast: cast(self.params[k]) if self.params.get(k, "") != "" else None  # noqa: E731
            self.thresholds = {"score_thresh": num("score_thresh", float), "iou_thresh": num("iou_thresh", float),
                               "max_detections": num("max_detections", int)}
            self.top_k = int(self.params.get("top_k", "5"))
            from ..engines.backends import OnnxRuntimeBackend

            gpu = args.get("model_instance_kind") == "GPU"  # the task's extra networks (a mask head) in ONNX Runtime
            self.networks = {k[len("network_"):]: OnnxRuntimeBackend(here / v, None if gpu else ["CPUExecutionProvider"])
                             for k, v in self.params.items() if k.startswith("network_")}
        else:
            raise ValueError(f"unknown step {self.step!r} (expected preprocess, network or postprocess)")

    # -- one response per request ---------------------------------------------------------------------------
    def execute(self, requests) -> List:
        pb = self.pb
        feeds, responses = [], [None] * len(requests)
        for k, req in enumerate(requests):
            try:
                tensors = {n: pb.get_input_tensor_by_name(req, n) for n in self.inputs}
                feeds.append((k, self._prepare({n: t.as_numpy() for n, t in tensors.items() if t is not None})))
            except Exception as exc:  # this request only
                responses[k] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(_message(exc)))
        if feeds:
            try:
                results = self._run([f for _, f in feeds])
                for (k, _), out in zip(feeds, results):
                    responses[k] = pb.InferenceResponse(
                        output_tensors=[pb.Tensor(n, np.ascontiguousarray(out[n])) for n in self.outputs])
            except Exception as exc:  # the batch failed as a whole
                for k, _ in feeds:
                    responses[k] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(_message(exc)))
        return responses

    def _prepare(self, feed: Dict[str, np.ndarray]):
        """Checks and decodes one request's inputs (errors here fail this request only)."""
        if self.step == "preprocess":
            (x,) = feed.values()
            if x.dtype == np.object_:
                if x.size == 0:
                    raise AutotimmError("empty image batch")
                return steps.decode_images(x.reshape(-1))
            return steps.check_uint8_images(x)
        if any(v.shape[0] == 0 for v in feed.values()):
            raise AutotimmError("empty batch")
        return feed

    def _run(self, prepared: List) -> List[Dict[str, np.ndarray]]:
        """The requests' batch in one go, split back per request."""
        if self.step == "preprocess":
            counts = [len(images) for images in prepared]
            batch, rows = steps.preprocess([im for images in prepared for im in images], self.info, self.dtype)
            return steps.split_rows({self.outputs[0]: batch, "letterbox": rows}, counts)
        counts = [len(next(iter(f.values()))) for f in prepared]
        joined = {n: np.concatenate([f[n] for f in prepared]) for n in prepared[0]}
        if self.step == "network":
            return steps.split_rows(self.backend.infer(joined), counts)
        letterbox = joined.pop("letterbox")
        out, start = [], 0
        for n in counts:  # padded per request: a request's tensors are as wide as its own largest result
            part = {k: v[start:start + n] for k, v in joined.items()}
            arrays = steps.postprocess(part, letterbox[start:start + n], self.info, self.top_k, networks=self.networks,
                                       **self.thresholds)
            out.append({POST_NAMES.get(k, k): v for k, v in arrays.items()})
            start += n
        return out

    def finalize(self) -> None:
        for backend in [getattr(self, "backend", None), *getattr(self, "networks", {}).values()]:
            if backend is not None:
                backend.close()


def _message(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if isinstance(exc, AutotimmError) else f"{exc.__class__.__name__}: {text}"
