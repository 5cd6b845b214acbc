"""The options of a generated Triton model repository (:class:`TritonOptions`), declared once with their
``autotimm-triton`` flags (``autotimm-export --triton-...`` reuses them with a prefix): light to import."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from .._options import option
from ..errors import AutotimmError

__all__ = ["TritonOptions", "NETWORKS", "PRECISIONS", "KINDS"]


def _sizes(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 4,8, got {text!r}") from None


NETWORKS = ("auto", "tensorrt", "onnxruntime", "python")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
KINDS = ("auto", "gpu", "cpu")


@dataclass
class TritonOptions:
    """How the repository is made.  ``network``: ``auto`` (the engine as ``tensorrt_plan`` when full TensorRT built
    it, else the ONNX as ``onnxruntime_onnx``), ``tensorrt``, ``onnxruntime`` or ``python`` (the CPU variant:
    ONNX Runtime on Triton's Python backend through autotimm-deploy's runtime).  ``precision`` picks the ONNX
    (``auto``: FP16 on a GPU when exported, else FP32; an engine has its own).  ``kind``: the network's instance
    group (``auto``: GPU for ``tensorrt``/``onnxruntime``, CPU for ``python``)."""

    network: str = option("auto", "--network", "auto (default): the engine as tensorrt_plan when full TensorRT built "
                          "it, else the ONNX as onnxruntime_onnx; python: ONNX Runtime on Triton's Python backend "
                          "(CPU variant)", choices=NETWORKS)
    precision: str = option("auto", "--precision", "which ONNX the network runs (default auto: FP16 on a GPU when "
                            "exported, else FP32)", choices=PRECISIONS)
    kind: str = option("auto", "--kind", "the network's instance kind (default: gpu, cpu for --network python)",
                       choices=KINDS)
    instances: int = option(1, "--instances", "network instances (default 1)", type=int, metavar="N")
    step_instances: int = option(1, "--step-instances", "instances of each pre/post-processing step (default 1)",
                                 type=int, metavar="N")
    max_batch_size: Optional[int] = option(None, "--max-batch", "max_batch_size (default: the export's largest "
                                           "batch)", type=int, metavar="N")
    preferred_batch: Optional[Tuple[int, ...]] = option(None, "--preferred-batch", "dynamic batching's preferred "
                                                        "sizes (default: the export's optimum and largest batch)",
                                                        type=_sizes, metavar="N,N")
    max_queue_delay_us: int = option(1000, "--max-queue-delay-us", "longest wait to form a batch, in microseconds "
                                     "(default 1000)", type=int, metavar="US")
    name: Optional[str] = option(None, "--name", "model name (default: the model file's stem)", metavar="NAME")
    score_thresh: Optional[float] = option(None, "--score-thr", "score threshold (default: the model's own)",
                                           type=float, metavar="P")
    iou_thresh: Optional[float] = option(None, "--iou-thr", "NMS IoU threshold (default: the model's own)",
                                         type=float, metavar="IOU")
    max_detections: Optional[int] = option(None, "--max-det", "detections per image (default: the model's own)",
                                           type=int, metavar="N")
    top_k: int = option(5, "--top-k", "classifiers: classes in top_labels/top_scores (default 5)", type=int,
                        metavar="K")
    threads: int = option(0, "--threads", "--network python: ONNX Runtime threads per instance (default 0: its own "
                          "choice)", type=int, metavar="N")

    def validate(self) -> "TritonOptions":
        for key, allowed in (("network", NETWORKS), ("precision", PRECISIONS), ("kind", KINDS)):
            if getattr(self, key) not in allowed:
                raise AutotimmError(f"triton {key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise AutotimmError(f"triton model name {self.name!r}: use letters, digits, '_', '-' and '.'")
        for key in ("instances", "step_instances", "top_k"):
            if getattr(self, key) < 1:
                raise AutotimmError(f"triton {key} must be at least 1, got {getattr(self, key)}")
        if self.max_queue_delay_us < 0 or self.threads < 0:
            raise AutotimmError("triton max queue delay and threads must be >= 0")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise AutotimmError(f"triton max batch size must be at least 1, got {self.max_batch_size}")
        if self.network == "tensorrt" and self.precision not in ("auto",):
            raise AutotimmError("the precision chooses an ONNX; a tensorrt_plan network is the engine, whose "
                                "precision was set at export")
        return self
