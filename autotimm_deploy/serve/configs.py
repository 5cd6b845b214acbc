"""The ``config.pbtxt`` of each model of a generated repository, as data (:mod:`.pbtxt` writes it).

A repository for model ``NAME`` holds ``NAME_preprocess`` (encoded images), ``NAME_preprocess_uint8`` (uint8 HWC),
``NAME_network`` (``tensorrt_plan``, ``onnxruntime_onnx`` or the Python backend running ONNX Runtime),
``NAME_postprocess`` and two ensembles: ``NAME`` (TYPE_STRING image bytes in) and ``NAME_uint8`` (uint8 HWC in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..images import LETTERBOX_FIELDS
from ..tasks import get_task
from .pbtxt import DTYPES, Enum

__all__ = ["Tensor", "Plan", "POST_NAMES", "preprocess_config", "network_config", "postprocess_config", "ensemble_config",
           "ensemble_outputs"]


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy name: float32, float16, int32, uint8, bytes
    dims: Sequence[int]  # without the batch dimension; -1 where dynamic
    label_filename: Optional[str] = None
    ragged: bool = False

    def config(self, is_input: bool) -> Dict:
        c = {"name": self.name, "data_type": Enum(DTYPES[self.dtype]), "dims": [int(d) for d in self.dims]}
        if self.ragged and is_input:
            c["allow_ragged_batch"] = True
        if self.label_filename and not is_input:
            c["label_filename"] = self.label_filename
        return c


@dataclass
class Plan:
    """Everything the configs are made from (see :func:`~autotimm_deploy.serve.repository.write_repository`)."""

    name: str
    task: str
    network: str  # tensorrt | onnxruntime | python
    net_inputs: List[Tensor]
    net_outputs: List[Tensor]
    input_hw: Sequence[int]
    max_batch_size: int
    preferred_batch: List[int]
    max_queue_delay_us: int
    instances: int
    kind: str  # KIND_GPU | KIND_CPU
    step_instances: int
    top_k: int = 5
    num_classes: int = 0
    class_names: Sequence[str] = ()
    step_params: Dict[str, str] = field(default_factory=dict)  # postprocess thresholds
    network_params: Dict[str, str] = field(default_factory=dict)
    notes: str = ""  # written as comments into the network's config


def _batching(plan: Plan) -> Dict:
    return {"preferred_batch_size": plan.preferred_batch or None,
            "max_queue_delay_microseconds": plan.max_queue_delay_us}


def _common(plan: Plan, name: str, inputs: List[Tensor], outputs: List[Tensor]) -> Dict:
    return {"name": name, "max_batch_size": plan.max_batch_size, "input": [t.config(True) for t in inputs],
            "output": [t.config(False) for t in outputs]}


def _python(plan: Plan, name: str, inputs, outputs, params: Dict[str, str], comment: str,
            instances: Optional[int] = None, kind: str = "KIND_CPU") -> Dict:
    return {"# about": comment, **_common(plan, name, inputs, outputs), "backend": "python",
            "dynamic_batching": _batching(plan),
            "instance_group": [{"count": instances or plan.step_instances, "kind": Enum(kind)}], "parameters": params}


def _image_input(encoded: bool) -> Tensor:
    return Tensor("image", "bytes", [1]) if encoded else Tensor("image", "uint8", [-1, -1, 3], ragged=True)


def preprocess_config(plan: Plan, encoded: bool) -> Dict:
    net_in = plan.net_inputs[0]
    out = [Tensor(net_in.name, net_in.dtype, [3, *plan.input_hw]), Tensor("letterbox", "float32", [len(LETTERBOX_FIELDS)])]
    what = "encoded images (JPEG/PNG/... bytes)" if encoded else "uint8 HxWx3 RGB images"
    return _python(plan, f"{plan.name}_preprocess{'' if encoded else '_uint8'}", [_image_input(encoded)], out,
                   {"step": "preprocess", "input_dtype": net_in.dtype},
                   f"{what} -> letterbox + normalise as the model declares (autotimm_deploy.serve.steps.preprocess)")


def network_config(plan: Plan) -> Dict:
    name = f"{plan.name}_network"
    if plan.network == "python":
        return _python(plan, name, plan.net_inputs, plan.net_outputs, {"step": "network", **plan.network_params},
                       "the network in ONNX Runtime through autotimm_deploy's runtime (CPU variant)", plan.instances,
                       plan.kind)
    platform = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}[plan.network]
    return {"# about": plan.notes, **_common(plan, name, plan.net_inputs, plan.net_outputs), "platform": platform,
            "default_model_filename": "model.plan" if plan.network == "tensorrt" else "model.onnx",
            "dynamic_batching": _batching(plan),
            "instance_group": [{"count": plan.instances, "kind": Enum(plan.kind)}]}


def ensemble_outputs(plan: Plan) -> List[Tensor]:
    """The ensemble's outputs, as the model's task lays out its results (and the post-processing step's, renamed by
    :func:`ensemble_config`)."""
    return [Tensor(t.name, t.dtype, list(t.dims), label_filename="labels.txt" if t.labels else None)
            for t in get_task(plan.task).triton_outputs(plan.num_classes, plan.top_k)]


#: post-processing step output -> ensemble output (a step cannot have an input and an output both named "boxes")
POST_NAMES = {"boxes": "detection_boxes", "scores": "detection_scores", "labels": "detection_labels",
              "masks": "detection_masks"}


def postprocess_config(plan: Plan) -> Dict:
    outs = [Tensor(POST_NAMES.get(t.name, t.name), t.dtype, t.dims, t.label_filename) for t in ensemble_outputs(plan)]
    return _python(plan, f"{plan.name}_postprocess", plan.net_outputs + [Tensor("letterbox", "float32", [len(LETTERBOX_FIELDS)])], outs,
                   {"step": "postprocess", "top_k": str(plan.top_k), **plan.step_params},
                   "decode what the graph did not fuse + the family's NMS, boxes mapped back to image pixels "
                   "(autotimm_deploy.serve.steps)")


def _map(pairs) -> List[Dict]:
    return [{"key": k, "value": v} for k, v in pairs]


def ensemble_config(plan: Plan, encoded: bool) -> Dict:
    """``NAME`` (encoded) or ``NAME_uint8``: preprocess -> network -> postprocess."""
    net_in = plan.net_inputs[0].name
    outs = ensemble_outputs(plan)
    steps = [
        {"model_name": f"{plan.name}_preprocess{'' if encoded else '_uint8'}", "model_version": -1,
         "input_map": _map([("image", "image")]),
         "output_map": _map([(net_in, "net_input"), ("letterbox", "letterbox")])},
        {"model_name": f"{plan.name}_network", "model_version": -1, "input_map": _map([(net_in, "net_input")]),
         "output_map": _map((t.name, f"net_{t.name}") for t in plan.net_outputs)},
        {"model_name": f"{plan.name}_postprocess", "model_version": -1,
         "input_map": _map([(t.name, f"net_{t.name}") for t in plan.net_outputs] + [("letterbox", "letterbox")]),
         "output_map": _map((POST_NAMES.get(t.name, t.name), t.name) for t in outs)},
    ]
    what = "encoded image bytes (TYPE_STRING, one per batch item)" if encoded else "uint8 HxWx3 RGB images"
    return {"# about": f"{plan.name}: {what} in; {', '.join(t.name for t in outs)} out (autotimm-deploy)",
            **_common(plan, plan.name if encoded else f"{plan.name}_uint8", [_image_input(encoded)], outs),
            "platform": "ensemble", "ensemble_scheduling": {"step": steps},
            # what a client needs to read the outputs: the task and the class names (TritonModelClient reads them)
            "parameters": {"task": plan.task, "class_names": json.dumps(list(plan.class_names))}}
