"""PyTorch -> ONNX export with named per-level outputs, correct symbolic shapes and metadata."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import onnx
import torch
from torch import nn

from .. import __version__
from ..errors import ExportError
from ..graph import get_metadata, reinfer_shapes, set_metadata  # noqa: F401 (re-exported)
from ..models.families import SEED_FCOS
from ..models.family import LEVELS
from ..models.loaded import LoadedModel
from ..tasks import task_of
from .options import DEFAULT_OPSET

__all__ = [
    "ExportConfig",
    "detector_output_names",
    "export_onnx",
    "check_input_size",
    "max_stride",
    "reinfer_shapes",
    "LEVELS",
    "DEFAULT_OPSET",
]



def detector_output_names(num_levels: int = 5, family=SEED_FCOS) -> List[str]:
    """The raw-output contract for runtimes: ``<key>_p3..`` per output of the family (the seed's:
    ``cls_p3..cls_p7, bbox_p3..bbox_p7, ctr_p3..ctr_p7``)."""
    return family.output_names(num_levels)


def max_stride(model: nn.Module) -> int:
    """What the input's H and W must be multiples of: a model's declared ``max_stride`` (YOLOX, segmentors), or a
    detector's largest backbone stride (32 for the usual timm backbones, from timm's ``feature_info``), so that its
    FPN levels line up; 1 for a classifier, whose global pooling takes any size (a fixed-size model such as
    levit_128s at 224 is checked by its export)."""
    if getattr(model, "max_stride", None):
        return int(model.max_stride)
    if not getattr(model, "strides", None):  # detectors declare their level strides; classifiers pool
        return 1
    info = getattr(model.backbone, "feature_info", None)
    if hasattr(info, "reduction"):  # features_only backbones (detectors)
        return int(info.reduction()[-1])
    if info:
        return int(info[-1]["reduction"])
    return 32


def check_input_size(size: Sequence[int], stride: int) -> Tuple[int, int]:
    """Validate (H, W): each a positive multiple of ``stride``; the error names the nearest valid sizes."""
    if len(size) != 2:
        raise ExportError(f"input size must be two numbers H W, got {list(size)}")
    out = []
    for name, v in zip(("height", "width"), size):
        v = int(v)
        if v < 1:
            raise ExportError(f"input {name} must be a positive number of pixels, got {v}")
        if v < stride or v % stride:
            lo = max(stride, (v // stride) * stride)
            hi = max(stride, math.ceil(v / stride) * stride)
            near = f"{lo}" if lo == hi else f"{lo} or {hi}"
            raise ExportError(
                f"input {name} {v} is not a multiple of the backbone's largest stride {stride}; "
                f"nearest valid {name}: {near}"
            )
        out.append(v)
    return out[0], out[1]


@dataclass
class ExportConfig:
    """What the exported graph looks like.

    ``input_size`` is (H, W) of the traced input; ``dynamic_batch`` makes the batch dim symbolic
    and ``dynamic_hw`` makes H and W symbolic too.
    """

    input_size: Tuple[int, int]
    batch_size: int = 1
    dynamic_batch: bool = True
    dynamic_hw: bool = False
    opset: int = DEFAULT_OPSET
    metadata: Dict[str, str] = field(default_factory=dict)


class _ExportView(nn.Module):
    """The model's forward result as the flat tuple of its task's raw outputs (no change to the model itself)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.task = task_of(model.family)

    def forward(self, images):
        return self.task.flatten(self.model.family, self.model(images))


def _set_output_shapes(model: onnx.ModelProto, shapes: Dict[str, List]) -> None:
    for out in model.graph.output:
        if out.name not in shapes:
            continue
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[out.name]:
            dim = dims.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d


def export_onnx(loaded: LoadedModel, config: ExportConfig) -> onnx.ModelProto:
    """Export a loaded model file to an in-memory ONNX model (raw outputs), checked and shape-inferred."""
    return export_onnx_with_forward(loaded, config)[0]


def export_onnx_with_forward(loaded: LoadedModel, config: ExportConfig,
                             example: Optional[torch.Tensor] = None) -> Tuple[onnx.ModelProto, Any]:
    """:func:`export_onnx` traced on ``example`` (default: seeded noise of the configured shape), also returning
    the model's own output on it: the export runs the model once anyway, and the parity check can use that
    output as its reference for the same input instead of running the model again."""
    model = loaded.model.eval()
    stride = max_stride(model)
    h, w = check_input_size(config.input_size, stride)
    family = loaded.family
    task = task_of(family)
    output_names = task.output_names(family, len(getattr(model, "strides", None) or ()))
    dynamic_axes: Dict[str, Dict[int, str]] = {}
    if config.dynamic_batch or config.dynamic_hw:
        in_axes: Dict[int, str] = {}
        if config.dynamic_batch:
            in_axes[0] = "batch"
        if config.dynamic_hw:
            in_axes.update({2: "height", 3: "width"})
        dynamic_axes["images"] = in_axes
        for name in output_names:
            dynamic_axes[name] = task.output_axes(family, name, config.dynamic_batch, config.dynamic_hw)
    dummy = torch.randn(config.batch_size, 3, h, w) if example is None else example
    if tuple(dummy.shape) != (config.batch_size, 3, h, w):
        raise ExportError(f"export example of shape {tuple(dummy.shape)}, expected {(config.batch_size, 3, h, w)}")
    # an eval-mode view: the legacy exporter restores the *wrapper's* mode recursively afterwards,
    # so a train-mode wrapper would flip the user's model (and its BatchNorms) into training mode
    view = _ExportView(model).eval()
    try:
        with torch.no_grad():
            forward = model(dummy)
        ref = task.flatten(family, forward)
    except Exception as exc:  # e.g. GroupNorm with one value per group on a 1x1 P7 map
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the model does not run in PyTorch at input {tuple(dummy.shape)}: {first}") from exc
    ref = ref if isinstance(ref, tuple) else (ref,)
    try:
        onnx_model = _export_torchscript(view, dummy, output_names, config.opset, dynamic_axes)
        exporter = "torchscript"
    except Exception as exc:  # unsupported op, tracing failure
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "translating" in str(exc):  # which op: "(Occurred when translating col2im)."
            first += " " + str(exc).strip().splitlines()[-1].strip()
        # the dynamo exporter where the TorchScript one fails: ops such as adaptive_max_pool2d (bat_resnext26ts) and
        # Unfold (halonet) need static sizes in the TorchScript exporter, whose col2im (Fold: volo) fails at opset 18;
        # the dynamo exporter keeps sizes symbolic and exports them (slower: 20-80 s; opset >= 18)
        try:
            onnx_model = _export_dynamo(view, dummy, output_names, config)
        except Exception as exc2:
            second = str(exc2).strip().splitlines()[0] if str(exc2).strip() else type(exc2).__name__
            raise ExportError(f"ONNX export of {loaded.config.get('backbone')!r} failed: {first}; the dynamo "
                              f"exporter also failed: {second}") from exc2
        exporter = f"dynamo exporter (the TorchScript exporter failed: {first.split(' Please feel free')[0][:160]})"
    shapes = {}
    for name, t in zip(output_names, ref):
        dims: List = list(t.shape)
        for axis, symbol in task.output_axes(family, name, config.dynamic_batch, config.dynamic_hw).items():
            dims[axis] = symbol
        shapes[name] = dims
    _set_output_shapes(onnx_model, shapes)
    onnx_model = reinfer_shapes(onnx_model)
    set_metadata(onnx_model, {**build_metadata(loaded, config, (h, w)), "exporter": exporter})
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported ONNX failed the checker: {str(exc).splitlines()[0]}") from exc
    return onnx_model, forward


@contextlib.contextmanager
def _stdout_fd_silenced():
    """On failure the TorchScript exporter's C++ logger writes the whole graph (thousands of lines) to fd 1
    (torch's setup_onnx_logging tests a function object for truth, so its log is always on): send fd 1 to
    /dev/null for the export; the failure itself still arrives as the exception."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _export_torchscript(view: nn.Module, dummy: torch.Tensor, names: List[str], opset: int,
                        dynamic_axes: Dict[str, Dict[int, str]]) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings(), _stdout_fd_silenced():
        warnings.simplefilter("ignore")
        torch.onnx.export(view, (dummy,), buf, input_names=["images"], output_names=names, opset_version=opset,
                          dynamic_axes=dynamic_axes or None, do_constant_folding=True, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(view: nn.Module, dummy: torch.Tensor, names: List[str], config: ExportConfig) -> onnx.ModelProto:
    """torch.export + the dynamo ONNX exporter at opset max(18, --opset) (it converts to lower opsets poorly),
    with the same symbolic dimensions as the TorchScript path."""
    dims: Dict[int, Any] = {}
    if config.dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if config.dynamic_hw:
        dims.update({2: torch.export.Dim("height", min=1, max=16384), 3: torch.export.Dim("width", min=1, max=16384)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(view, (dummy,), None, input_names=["images"], output_names=names,
                                    opset_version=max(18, config.opset), dynamic_shapes={"images": dims},
                                    dynamo=True, verbose=False)
    program.optimize()
    return program.model_proto


def build_metadata(loaded: LoadedModel, config: ExportConfig, size: Tuple[int, int]) -> Dict[str, str]:
    model = loaded.model
    meta = {
        "autotimm_deploy.version": __version__,
        "task": loaded.task,
        "num_classes": str(model.num_classes),
        "class_names": json.dumps(loaded.metadata.get("class_names")),
        "input_size": json.dumps(list(size)),
        "dynamic_batch": json.dumps(config.dynamic_batch),
        "dynamic_hw": json.dumps(config.dynamic_hw),
        "mean": json.dumps(loaded.metadata.get("mean")),
        "std": json.dumps(loaded.metadata.get("std")),
        "model_config": json.dumps(loaded.config, sort_keys=True),
        "source_sha256": loaded.sha256,
        "decode": "raw",
    }
    if loaded.metadata.get("overrides"):  # what the user said that the model file does not record
        meta["overrides"] = json.dumps(loaded.metadata["overrides"], sort_keys=True)
    family = loaded.family
    meta["family"] = family.to_json()
    meta["decoding_convention"] = json.dumps(task_of(family).convention(family), sort_keys=True)
    if getattr(model, "strides", None):
        meta["strides"] = json.dumps(list(model.strides))
    meta.update(config.metadata)
    return meta
