"""Export options and the FP32 islands, as data: light to import (no torch, ONNX or TensorRT), so that
the CLIs answer ``--help`` and refuse bad options at once, before the heavy libraries load."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from ..engines.library import ENGINE_CHOICES
from ..errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs

    from ..models.overrides import ModelOverrides

__all__ = ["ExportOptions", "Fp32Islands", "DEFAULT_ISLANDS", "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "DECODE_MODES",
           "CALIB_METHODS"]

#: The default ONNX opset of exported graphs.
DEFAULT_OPSET = 17
#: --opset range: 13 (Unsqueeze/TopK inputs the surgery writes) to the TorchScript exporter's maximum.
MIN_OPSET, MAX_OPSET = 13, 20
#: What the graph surgery can fuse into a detector's ONNX.
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
              "Range"),
    node_names=("decode*", "anchors_*", "topk/*", "boxes*", "scores*", "cls_p*/*", "ctr_p*/*", "bbox_p*/*"),
)



@dataclass
class ExportOptions:
    """Options of :func:`export_model` (the CLI's flags)."""

    decode: str = "boxes"
    opset: int = DEFAULT_OPSET
    input_size: Optional[Tuple[int, int]] = None
    batch: Tuple[int, int, int] = (1, 1, 8)  # MIN:OPT:MAX; dynamic batch unless MIN == MAX
    dynamic_hw: bool = False
    min_size: Optional[Tuple[int, int]] = None  # engine profile with --dynamic-hw (default: half the input size)
    max_size: Optional[Tuple[int, int]] = None  # (default: twice the input size)
    topk: Optional[int] = None
    check: bool = True
    random_inputs: int = 2
    demo_images: int = 4
    seed: int = 0
    # FP16 ONNX (exporters.fp16)
    fp16: bool = False
    fp16_input: bool = False
    fp32_ops: Optional[Tuple[str, ...]] = None  # None: DEFAULT_ISLANDS.op_types
    fp32_nodes: Optional[Tuple[str, ...]] = None  # None: DEFAULT_ISLANDS.node_names
    overflow_guard: bool = True
    fp16_repair_steps: int = 6  # groups of nodes the FP16 repair may keep in FP32 when FP16 parity fails; 0: none
    # INT8 ONNX (exporters.int8*): calibration folder, evaluation folder for the accuracy gate, repair budget
    int8: bool = False
    calib: Optional[str] = None
    calib_count: int = 256
    calib_method: str = "minmax"
    int8_eval: Optional[str] = None
    int8_max_drop: float = 1.0
    int8_repair_steps: int = 6
    # engines
    engine: str = "auto"  # auto | tensorrt | tensorrt-rtx | none
    target_cc: Tuple[str, ...] = ()
    workspace_mib: Optional[int] = None
    cache: bool = True
    cache_dir: Optional[str] = None
    # what the model file does not record (AutoTimm checkpoints: class names, mean/std)
    class_names: Optional[Tuple[str, ...]] = None
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None

    def __post_init__(self) -> None:
        """Every option is checked here, before any work: one error naming the flag."""
        if self.decode not in DECODE_MODES:
            raise ExportError(f"--decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ExportError(f"--batch MIN:OPT:MAX needs 1 <= MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (what the exporter and the graph "
                              f"surgery support), got {self.opset}")
        if self.topk is not None and self.topk < 1:
            raise ExportError(f"--topk must be >= 1, got {self.topk}")
        if self.topk is not None and self.decode != "boxes":
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
        for flag, d in (("--calib", self.calib), ("--int8-eval", self.int8_eval)):
            if not os.path.isdir(d):
                raise ExportError(f"{flag} {d}: not a folder")
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

    def islands(self) -> Fp32Islands:
        return Fp32Islands(op_types=tuple(self.fp32_ops) if self.fp32_ops is not None else DEFAULT_ISLANDS.op_types,
                           node_names=tuple(self.fp32_nodes) if self.fp32_nodes is not None else DEFAULT_ISLANDS.node_names)


#: --opset range: 13 (Unsqueeze/TopK inputs the surgery writes) to the TorchScript exporter's maximum.
MIN_OPSET, MAX_OPSET = 13, 20
