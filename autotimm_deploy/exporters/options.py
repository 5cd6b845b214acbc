"""Export options and the FP32 islands, as data: light to import (no torch, ONNX or TensorRT), so that
the CLIs answer ``--help`` and refuse bad options at once, before the heavy libraries load."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from .._options import option
from ..engines.library import ENGINE_CHOICES
from ..errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs

    from ..models.overrides import ModelOverrides

__all__ = ["ExportOptions", "Fp32Islands", "DEFAULT_ISLANDS", "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "DECODE_MODES",
           "CALIB_METHODS", "GROUPS"]

#: The default ONNX opset of exported graphs.
DEFAULT_OPSET = 17
#: --opset range: 13 (Unsqueeze/TopK inputs the surgery writes) to the TorchScript exporter's maximum.
MIN_OPSET, MAX_OPSET = 13, 20
#: What the graph surgery can fuse into a detector's ONNX (every task declares its own: ``Task.decode_modes``).
DECODE_MODES = ("raw", "activations", "boxes")
#: INT8 calibration methods (ONNX Runtime's CalibrationMethod MinMax / Entropy / Percentile).
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class Fp32Islands:
    """Which nodes stay FP32: by op type, or by node-name glob (``fnmatch``, case-sensitive).

    Default (``DEFAULT_ISLANDS``) and why:

    - normalisation statistics: ``InstanceNormalization`` (GroupNorm exports as InstanceNormalization
      + Reshape + Mul + Add), ``LayerNormalization``, ``GroupNormalization``, ``BatchNormalization``:
      a variance of activations of magnitude > 256 overflows FP16 and the mean/variance loses
      ~3 digits, which the normalisation then divides by;
    - ``Exp``: exp(x) overflows FP16 for x > 11.09; the decode clamps at 10 but FP32 keeps pixel
      distances exact to 1e-3 px instead of 2^-11 relative;
    - ``Range``: has no float16 type in the ONNX spec;
    - ``RoiAlign`` and the nodes ``/roi_align/*`` (an instance segmentor's mask network computes RoIAlign as two
      matrix products): box coordinates up to the image size need FP32, and ONNX Runtime's CPU RoiAlign kernel
      has no float16;
    - the fused decode and top-k (nodes named ``decode*``, ``anchors_*``, ``topk/*``, ``boxes*``,
      ``scores*`` and the activation nodes ``cls_p*/*``, ``ctr_p*/*``, ``bbox_p*/*`` written by
      :mod:`autotimm_deploy.exporters.surgery`): anchor coordinates up to the image size need more
      than FP16's 11 bits (a 1000 px coordinate would be rounded to 0.5 px).
    """

    op_types: Tuple[str, ...] = ()
    node_names: Tuple[str, ...] = ()

    def matches(self, node: gs.Node) -> bool:
        return node.op in self.op_types or any(fnmatch.fnmatchcase(node.name or "", p) for p in self.node_names)

    def to_dict(self) -> Dict[str, List[str]]:
        return {"op_types": list(self.op_types), "node_names": list(self.node_names)}


DEFAULT_ISLANDS = Fp32Islands(
    op_types=("InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization", "Exp",
              "Range", "RoiAlign"),
    node_names=("decode*", "anchors_*", "topk/*", "boxes*", "scores*", "cls_p*/*", "ctr_p*/*", "bbox_p*/*",
                "/roi_align/*"),
)



def _batch(text: str) -> Tuple[int, int, int]:
    """``--batch N`` or ``MIN:OPT:MAX``."""
    import argparse

    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:OPT:MAX, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected N or MIN:OPT:MAX, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def _names(text: str) -> Tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _extends(default: Tuple[str, ...]):
    """``--fp32-ops +Softmax`` extends the default list; ``--fp32-ops Softmax`` replaces it."""
    def convert(given: Tuple[str, ...]) -> Tuple[str, ...]:
        if given and all(t.startswith("+") for t in given):
            return tuple(default) + tuple(t[1:] for t in given)
        return given
    return convert


_FP16, _INT8, _ENGINE = "FP16", "INT8", "engine"
#: Argument groups' descriptions (the CLI's --help).
GROUPS = {
    _FP16: "an FP16-typed ONNX with FP32 islands (TensorRT 11 and TensorRT-RTX are strongly typed)",
    _INT8: "calibrated INT8 ONNX with explicit Q/DQ (ONNX Runtime's quantization), gated on accuracy and repaired "
           "automatically; the engine is then built from it",
    _ENGINE: "TensorRT / TensorRT-RTX engine build (docs/engines.md)",
}


@dataclass
class ExportOptions:
    """Options of :func:`~autotimm_deploy.exporters.pipeline.export_model`: each field is declared once, with its
    ``autotimm-export`` flag (fields without one are for the Python API; class names, input size and mean/std come
    from the model arguments that autotimm-infer and autotimm-parity share)."""

    decode: Optional[str] = option(None, "--decode", "what model.onnx computes (default: the task's): detectors raw, "
                                   "activations, boxes (default); segmentors raw, labels (default), labels-full; "
                                   "classifiers raw", metavar="MODE")
    opset: int = option(DEFAULT_OPSET, "--opset", f"ONNX opset (default {DEFAULT_OPSET})", type=int,
                        metavar="N")
    input_size: Optional[Tuple[int, int]] = option(None)
    batch: Tuple[int, int, int] = option((1, 1, 8), "--batch", "batch range; dynamic batch unless MIN == MAX "
                                         "(default 1:1:8)", type=_batch, metavar="MIN:OPT:MAX")
    dynamic_hw: bool = option(False, "--dynamic-hw", "make input height and width dynamic")
    min_size: Optional[Tuple[int, int]] = option(None, "--min-size", "with --dynamic-hw: smallest H W of the engine "
                                                 "profile (default: half the input size)", type=int, nargs=2,
                                                 metavar=("H", "W"), convert=tuple)
    max_size: Optional[Tuple[int, int]] = option(None, "--max-size", "with --dynamic-hw: largest H W of the engine "
                                                 "profile (default: twice the input size)", type=int, nargs=2,
                                                 metavar=("H", "W"), convert=tuple)
    topk: Optional[int] = option(None, "--topk", "with --decode boxes: keep the K best candidates per image",
                                 type=int, metavar="K")
    check: bool = option(True, "--no-check", "skip the parity check against PyTorch", invert=True)
    random_inputs: int = option(2)
    demo_images: int = option(4)
    seed: int = option(0)
    # FP16 ONNX (exporters.fp16)
    fp16: bool = option(False, "--fp16", "write model.fp16.onnx, check it, and build an FP16 engine", group=_FP16)
    fp16_input: bool = option(False, "--fp16-input", "FP16 input tensor instead of FP32 + Cast", group=_FP16)
    fp32_ops: Optional[Tuple[str, ...]] = option(
        None, "--fp32-ops", f"op types kept in FP32 (default: {','.join(DEFAULT_ISLANDS.op_types)}); '+OP,...' adds "
        "to the default, '' keeps none", group=_FP16, type=_names, metavar="OP,OP",
        convert=_extends(DEFAULT_ISLANDS.op_types))
    fp32_nodes: Optional[Tuple[str, ...]] = option(
        None, "--fp32-nodes", f"node-name globs kept in FP32 (default: {','.join(DEFAULT_ISLANDS.node_names)}); "
        "'+GLOB,...' adds to the default", group=_FP16, type=_names, metavar="GLOB,GLOB",
        convert=_extends(DEFAULT_ISLANDS.node_names))
    overflow_guard: bool = option(True, "--no-overflow-guard", "do not probe for FP16 overflow (layers that would "
                                  "overflow are otherwise kept in FP32)", group=_FP16, invert=True)
    fp16_repair_steps: int = option(6, "--fp16-repair-steps", "when FP16 parity fails, keep the nodes that add the "
                                    "most FP16 error in FP32, up to N groups (default 6; 0: report the failure as is)",
                                    group=_FP16, type=int, metavar="N")
    # INT8 ONNX (exporters.int8*): calibration folder, evaluation folder for the accuracy gate, repair budget
    int8: bool = option(False, "--int8", "write model.int8.onnx (TensorRT form) and model.int8-cpu.onnx (ONNX "
                        "Runtime CPU form)", group=_INT8)
    calib: Optional[str] = option(None, "--calib", "calibration images (any image folder)", group=_INT8,
                                  metavar="DIR")
    calib_count: int = option(256, "--calib-count", "calibration images used (default 256)", group=_INT8, type=int,
                              metavar="N")
    calib_method: str = option("minmax", "--calib-method", "how activation ranges are chosen (default minmax: see "
                               "docs/int8.md)", group=_INT8, choices=CALIB_METHODS)
    int8_eval: Optional[str] = option(None, "--int8-eval", "held-out folder for the accuracy gate (annotated: the "
                                      "task metric), not the calibration folder", group=_INT8, metavar="DIR")
    int8_max_drop: float = option(1.0, "--int8-max-drop", "largest drop of the task metric (mAP@0.5:0.95, top-1, "
                                  "mIoU, mask mAP) vs PyTorch FP32 allowed, in points (default 1.0)", group=_INT8,
                                  type=float, metavar="POINTS")
    int8_task_gate: bool = option(True, "--int8-no-task-gate", "gate INT8 on its agreement with PyTorch only, without "
                                  "the task metric: for an --int8-eval folder without annotations (the export says "
                                  "the metric was not measured)", group=_INT8, invert=True)
    int8_repair_steps: int = option(6, "--int8-repair-steps", "groups of layers the repair may keep in FP32 before "
                                    "the export fails (default 6; 0: no repair)", group=_INT8, type=int, metavar="N")
    # engines
    engine: str = option("auto", "--engine", "auto (default): full TensorRT if it imports and a GPU is present, else "
                         "TensorRT-RTX; none: skip", group=_ENGINE, choices=ENGINE_CHOICES)
    target_cc: Tuple[str, ...] = option((), "--target-cc", "TensorRT-RTX compute capabilities (default: the GPU "
                                        "present, else all of its targets)", group=_ENGINE, type=_names,
                                        metavar="SM86,SM89", convert=lambda t: tuple(v.upper() for v in t))
    workspace_mib: Optional[int] = option(None, "--workspace", "builder workspace limit in MiB", group=_ENGINE,
                                          type=int, metavar="MIB")
    cache: bool = option(True, "--no-cache", "always rebuild the engine; do not store it", group=_ENGINE, invert=True)
    cache_dir: Optional[str] = option(None, "--cache-dir", "engine cache folder (default: $AUTOTIMM_DEPLOY_CACHE or "
                                      "~/.cache/autotimm-deploy)", group=_ENGINE, metavar="DIR")
    # what the model file does not record (AutoTimm checkpoints: class names, mean/std): the model arguments
    class_names: Optional[Tuple[str, ...]] = option(None)
    mean: Optional[Tuple[float, float, float]] = option(None)
    std: Optional[Tuple[float, float, float]] = option(None)

    def __post_init__(self) -> None:
        """Every option is checked here, before any work: one error naming the flag."""
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ExportError(f"--batch MIN:OPT:MAX needs 1 <= MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (what the exporter and the graph "
                              f"surgery support), got {self.opset}")
        if self.topk is not None and self.topk < 1:
            raise ExportError(f"--topk must be >= 1, got {self.topk}")
        if self.topk is not None and self.decode not in (None, "boxes"):  # every task: top-k of fused candidates
            raise ExportError(f"--topk needs --decode boxes (got --decode {self.decode})")
        for flag, size in (("--input-size", self.input_size), ("--min-size", self.min_size),
                           ("--max-size", self.max_size)):
            if size is not None and (len(size) != 2 or min(size) < 1):
                raise ExportError(f"{flag} needs two positive numbers H W, got {' '.join(map(str, size))}")
        if self.engine not in ENGINE_CHOICES:
            raise ExportError(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {self.engine!r}")
        if (self.min_size or self.max_size) and not self.dynamic_hw:
            raise ExportError("--min-size/--max-size set the engine's H/W range and need --dynamic-hw")
        if self.fp16_input and not self.fp16:
            raise ExportError("--fp16-input needs --fp16")
        if self.fp16_repair_steps < 0:
            raise ExportError(f"--fp16-repair-steps must be >= 0, got {self.fp16_repair_steps}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ExportError(f"--workspace must be >= 1 MiB, got {self.workspace_mib}")
        if self.fp32_ops:
            self._check_fp32_ops()
        self._check_int8()

    def _check_int8(self) -> None:
        import os

        if not self.int8:
            if self.calib or self.int8_eval:
                raise ExportError("--calib and --int8-eval apply to --int8")
            return
        if not self.calib or not self.int8_eval:
            raise ExportError("--int8 needs --calib DIR (calibration images) and --int8-eval DIR (a held-out folder, "
                              "annotated for mAP / top-1, for the accuracy gate)")
        from pathlib import Path

        from ..datasets import IMAGE_EXTENSIONS, list_images

        for flag, d in (("--calib", self.calib), ("--int8-eval", self.int8_eval)):
            if not os.path.isdir(d):
                raise ExportError(f"{flag} {d}: not a folder")
            if not list_images(Path(d)):
                raise ExportError(f"{flag} {d}: no images in the folder ({', '.join(IMAGE_EXTENSIONS)}, searched "
                                  "recursively)")
        if self.calib_method not in CALIB_METHODS:
            raise ExportError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {self.calib_method!r}")
        if self.calib_count < 1:
            raise ExportError(f"--calib-count must be >= 1, got {self.calib_count}")
        if not self.int8_max_drop >= 0:
            raise ExportError(f"--int8-max-drop must be >= 0 points, got {self.int8_max_drop}")
        if self.int8_repair_steps < 0:
            raise ExportError(f"--int8-repair-steps must be >= 0, got {self.int8_repair_steps}")
        if not self.check:
            raise ExportError("--int8 is gated on accuracy; it cannot be combined with --no-check")

    def _check_fp32_ops(self) -> None:
        import onnx

        unknown = [op for op in self.fp32_ops if not onnx.defs.has(op)]
        if unknown:
            close = difflib.get_close_matches(unknown[0], [s.name for s in onnx.defs.get_all_schemas()], n=3)
            raise ExportError(f"--fp32-ops: {', '.join(unknown)} is not an ONNX op type"
                              + (f" (did you mean {', '.join(close)}?)" if close else ""))

    def overrides(self) -> "ModelOverrides":
        """What these options say about the model itself (input size, class names, normalisation)."""
        from ..models.overrides import ModelOverrides

        return ModelOverrides(class_names=tuple(self.class_names) if self.class_names else None,
                              input_size=tuple(self.input_size) if self.input_size else None,
                              mean=tuple(self.mean) if self.mean else None, std=tuple(self.std) if self.std else None)

    def islands(self, family=None) -> Fp32Islands:
        """The FP32 islands: these options' (default :data:`DEFAULT_ISLANDS`), plus the nodes the model's family
        keeps in FP32 (``Family.fp32_nodes``: measured precision-sensitive layers of that architecture)."""
        extra = tuple(getattr(family, "fp32_nodes", ()) or ())
        names = tuple(self.fp32_nodes) if self.fp32_nodes is not None else DEFAULT_ISLANDS.node_names
        return Fp32Islands(op_types=tuple(self.fp32_ops) if self.fp32_ops is not None else DEFAULT_ISLANDS.op_types,
                           node_names=names + tuple(n for n in extra if n not in names))

