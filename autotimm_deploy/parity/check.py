"""Parity between the PyTorch model and an exported ONNX model, through Polygraphy's comparator.

Comparisons are data: the per-output tolerances of each precision (:class:`~.thresholds.Tolerances`, why each
value: :mod:`.thresholds`) and the task's agreement rule; :func:`run_parity` gives one verdict for a tensor check
and the task's agreement level (the export, ``autotimm-parity``, the FP16 repair and the INT8 gate all use it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._atomic import atomic_write_text
from ..errors import ParityError
from ..models.decode import postprocess_outputs as detections_from_outputs  # noqa: F401 (re-exported)
from ..tasks import Agreement, task_of
from ..tasks.detection.matching import (FALLBACK_TOP_K, MAX_TIE_FRACTION, DetectionAgreement,  # noqa: F401
                                        align_topk, match_detections)
from .runners import TorchRunner
from .thresholds import (DEFAULT_THRESHOLDS, FP16_TOLERANCES, FP32_TOLERANCES, INT8_TOLERANCES,  # noqa: F401
                         Thresholds, Tolerances)

__all__ = ["Tolerances", "FP32_TOLERANCES", "FP16_TOLERANCES", "INT8_TOLERANCES", "OutputStats", "DetectionAgreement", "ParityReport", "run_parity",
           "match_detections", "detections_from_outputs", "align_topk"]


def _value_range(arrays) -> float:
    """max - min of the finite values of a reference output over all inputs (inf when there are none)."""
    lo, hi = np.inf, -np.inf
    for a in arrays:
        a = np.asarray(a, np.float64)
        a = a[np.isfinite(a)]
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return hi - lo if hi >= lo else float("inf")


@dataclass
class OutputStats:
    name: str
    max_abs: float
    max_rel: float
    out_of_tolerance: float  # fraction of elements
    atol: float
    rtol: float
    passed: bool
    nonfinite: int = 0  # inf/NaN elements in the artifact's output where the reference is finite
    reference_nonfinite: int = 0  # inf/NaN in PyTorch's own output: the model overflows on these inputs
    shape_mismatch: str = ""  # "artifact (1, 4) vs reference (1, 5)" when the shapes differ
    kind: str = "values"  # values | labels (integer outputs, compared by equality: rtol is the allowed mismatch)

    def message(self) -> str:
        """Why this output failed, in one phrase (empty when it passed)."""
        if self.passed:
            return ""
        if self.shape_mismatch:
            return f"{self.name}: shape {self.shape_mismatch}"
        if self.nonfinite:
            return f"{self.name}: {self.nonfinite} non-finite value(s) (inf/NaN) where PyTorch is finite"
        if self.reference_nonfinite:
            return (f"{self.name}: PyTorch's own output has {self.reference_nonfinite} non-finite value(s) (inf/NaN): "
                    "the model overflows on these inputs, no artifact can be checked against it")
        if self.kind == "labels":
            return f"{self.name}: {self.out_of_tolerance:.2%} of the labels differ (at most {self.rtol:.2%})"
        return (f"{self.name}: max abs err {self.max_abs:.3g} > atol {self.atol:g} and rel err > rtol {self.rtol:g} "
                f"on {self.out_of_tolerance:.2%} of elements")


@dataclass
class ParityReport:
    artifact: str
    decode: str
    passed: bool
    outputs: List[OutputStats]
    agreement: Optional[Agreement]  # the task's agreement level (detections matched, pixels agreeing, ...)
    inputs: List[str]
    polygraphy_passed: bool
    seconds: float
    topk_boundary_ties: int = 0  # top-k candidates that swapped at rank k within the score tolerance

    @property
    def detections(self) -> Optional[DetectionAgreement]:
        """A detector's :class:`DetectionAgreement` (None for other tasks)."""
        return getattr(self.agreement, "raw", None)

    def to_dict(self) -> Dict:
        d = asdict(self)
        if self.agreement is not None:
            d["agreement"] = {"level": self.agreement.level, "status": self.agreement.status,
                              "message": self.agreement.message}
        if self.detections is not None:
            d["detections"] = {**asdict(self.detections), "matched_fraction": self.detections.matched_fraction,
                               "status": self.detections.status, "passed": self.detections.passed}
        return d

    def summary(self) -> str:
        """One line: the worst outputs relative to their tolerance, and the task's agreement."""
        worst = sorted(self.outputs, key=lambda o: -(o.out_of_tolerance / max(o.rtol, 1e-30) if o.kind == "labels"
                                                     else o.max_abs / max(o.atol, 1e-30)))[:3]
        text = ", ".join(f"{o.name} {o.out_of_tolerance:.3%} differ (at most {o.rtol:.2%})" if o.kind == "labels"
                         else f"{o.name} err {o.max_abs:.2g} (atol {o.atol:g})" for o in worst)
        if self.detections is not None:
            text += f"; {self.detections.describe()}"
        elif self.agreement is not None:
            text += f"; {self.agreement.level} {self.agreement.status}"
        return text

    def polygraphy_flags(self) -> str:
        """``--atol``/``--rtol`` for ``polygraphy run`` with this check's tolerance for every output by name
        (one ``--atol 1.0`` would let a scores output in [0, 1] never fail).

        >>> rep = ParityReport("m.onnx", "boxes", True, [OutputStats("boxes", 0, 0, 0, 1.0, 1e-2, True),
        ...     OutputStats("scores", 0, 0, 0, 1e-2, 1e-2, True)], None, [], True, 0.0)
        >>> rep.polygraphy_flags()
        '--atol boxes:1 scores:0.01 --rtol boxes:0.01 scores:0.01'
        """
        return (f"--atol {' '.join(f'{o.name}:{o.atol:g}' for o in self.outputs)} "
                f"--rtol {' '.join(f'{o.name}:{o.rtol:g}' for o in self.outputs)}")

    def to_markdown(self) -> str:
        lines = [f"# Parity: `{self.artifact}` vs PyTorch", "",
                 f"Verdict: **{'PASS' if self.passed else 'FAIL'}** (decode `{self.decode}`, "
                 f"inputs: {', '.join(self.inputs)})", "",
                 "| output | max abs err | max rel err | out of tol. | atol | rtol | result |",
                 "|---|---|---|---|---|---|---|"]
        for o in self.outputs:
            lines.append(f"| `{o.name}` | {o.max_abs:.3g} | {o.max_rel:.3g} | {o.out_of_tolerance:.2%} | {o.atol:g} | "
                         f"{o.rtol:g} | {'pass' if o.passed else '**FAIL**'} |")
        lines += ["", "Reproduce the tensor check with Polygraphy (the same per-output tolerances; top-k exports are "
                      "compared by rank there, by candidate index here):", "", "```bash",
                  f"polygraphy run {self.artifact} --onnxrt --load-inputs inputs.json --load-outputs pytorch_outputs.json "
                  f"{self.polygraphy_flags()}", "```"]
        if self.topk_boundary_ties:
            lines += ["", f"Top-k: {self.topk_boundary_ties} candidate(s) swapped at rank k with a score within the "
                          "score tolerance of the cut (compared by index, see `align_topk`)."]
        if self.agreement is not None and self.detections is None:
            lines += ["", f"{self.agreement.level.capitalize()}: **{self.agreement.status}**: {self.agreement.message}"]
        if self.detections is not None:
            d = self.detections
            if d.status == "not informative":
                lines += ["", f"Detections: **not informative**: {d.describe()}."]
            else:
                lines += ["", f"Detections ({d.describe()}; same class, IoU >= {d.iou_thr}): "
                              f"{d.matched_fraction:.2%} matched (need {d.min_match:.0%}); artifact has {d.candidate}; "
                              f"max score difference {d.max_score_diff:.3g} (limit {d.score_limit:g}). "
                              f"{'pass' if d.passed else '**FAIL**'}"]
        return "\n".join(lines) + "\n"


def _stats(name: str, ref: np.ndarray, out: np.ndarray, atol: float, rtol: float,
           max_mismatch: float = 0.0) -> OutputStats:
    if ref.shape != out.shape:
        return OutputStats(name, float("inf"), float("inf"), 1.0, atol, rtol, False,
                           shape_mismatch=f"artifact {tuple(out.shape)} vs PyTorch {tuple(ref.shape)}")
    if ref.dtype.kind in "iu":  # class labels: equal or not
        differ = float((ref != out).mean()) if ref.size else 0.0
        return OutputStats(name, float(differ > 0), differ, differ, 0.0, max_mismatch, differ <= max_mismatch,
                           kind="labels")
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    nonfinite = ~np.isfinite(out64) & np.isfinite(ref64)
    with np.errstate(invalid="ignore"):
        absdiff = np.abs(ref64 - out64)
        reldiff = absdiff / np.maximum(np.abs(ref64), 1e-12)
    ref_bad = ~np.isfinite(ref64)
    bad = (absdiff > atol) & (reldiff > rtol) | nonfinite | ref_bad
    finite = ~nonfinite & np.isfinite(absdiff)
    max_abs = float(absdiff[finite].max(initial=0.0)) if not nonfinite.any() else float("inf")
    max_rel = float(reldiff[finite].max(initial=0.0)) if not nonfinite.any() else float("inf")
    return OutputStats(name, max_abs, max_rel, float(bad.mean()) if bad.size else 0.0, atol, rtol, not bad.any(),
                       nonfinite=int(nonfinite.sum()), reference_nonfinite=int(ref_bad.sum()))


class _Announcer:
    """Says which input a runner starts: ``<artifact>: <runner> input i/n (<label>)``."""

    def __init__(self, say: Callable[[str], None], what: str, labels: Sequence[str]) -> None:
        self.say, self.what, self.labels, self.i = say, what, list(labels), 0

    def __call__(self, note: str = "") -> None:
        self.i += 1
        label = self.labels[self.i - 1] if self.i <= len(self.labels) else ""
        self.say(f"      {self.what}: input {self.i}/{len(self.labels)} ({label}){note}")


def _announced(runner, announcer: _Announcer):
    """``runner`` (a Polygraphy runner) behind one that announces each input first; same name and outputs."""
    from polygraphy.backend.base import BaseRunner

    class Announced(BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=runner.name)

        def activate_impl(self):
            runner.activate()

        def deactivate_impl(self):
            runner.deactivate()

        def get_input_metadata_impl(self):
            return runner.get_input_metadata(use_numpy_dtypes=False)

        def infer_impl(self, feed_dict):
            announcer()
            out = runner.infer(feed_dict)
            self.inference_time = runner.last_inference_time()
            return out

    return Announced()


def run_parity(
    model: torch.nn.Module,
    onnx_path: str | Path,
    feeds: Sequence[Tuple[str, Dict[str, np.ndarray]]],
    decode_mode: str = "raw",
    topk: Optional[int] = None,
    tolerances: Optional[Tolerances] = None,
    save_dir: Optional[Path] = None,
    precision: str = "fp32",
    thresholds: Optional[Thresholds] = None,
    network: Optional[str] = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    runner=None,
    reference_cache: Optional[dict] = None,
    progress: Optional[Callable[[str], None]] = None,
    quiet: bool = False,
) -> ParityReport:
    """Compare PyTorch with ONNX Runtime on ``feeds`` ((label, feed_dict) pairs) via Polygraphy, with the rules
    of ``precision`` (``thresholds`` replaces them; ``tolerances`` only the tensor tolerances): the tensor check
    and the task's agreement level, one verdict (``report.passed``) that ``autotimm-parity`` gives too.

    With ``save_dir``, writes ``inputs.json`` and ``pytorch_outputs.json`` so that
    ``polygraphy run model.onnx --onnxrt --load-inputs inputs.json --load-outputs pytorch_outputs.json``
    reproduces the tensor-level check.  ``runner`` replaces the ONNX Runtime runner (e.g. an
    :class:`autotimm_deploy.engines.runner.EngineRunner` for an engine at ``onnx_path``).
    ``reference_cache`` (a dict shared between calls) runs PyTorch once per input across artifacts.
    ``progress`` receives a line as each runner starts each input (a long check is never silent).
    ``quiet`` keeps Polygraphy's own log (its mismatch lines) off stderr: the report says it all.
    ``network`` names another network of the model's task (instance segmentation's ``mask``): ``feeds`` are its
    inputs, the reference is its PyTorch module, and there is no agreement level (its task level is the model's).
    """
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.json import to_json
    from polygraphy.logger import G_LOGGER

    th = thresholds or DEFAULT_THRESHOLDS[precision]
    tolerances = tolerances or th.tensor
    ort.set_default_logger_severity(3)
    G_LOGGER.module_severity = G_LOGGER.CRITICAL if quiet else G_LOGGER.ERROR  # quiet: not even its mismatch lines
    start = time.time()
    onnx_path = str(onnx_path)
    task = task_of(model.family)
    if network is None:
        torch_runner = TorchRunner(model, decode_mode, topk, name="pytorch", cache=reference_cache)
    else:
        module = task.network(model, network)
        torch_runner = TorchRunner(model, name="pytorch", inputs=feeds[0][1],
                                   reference=lambda feed: task.network_reference(module, feed))
    ort_runner = runner or OnnxrtRunner(SessionFromOnnx(onnx_path, providers=list(providers)), name="onnxruntime")
    data = [f for _, f in feeds]
    if progress is not None:
        labels = [label for label, _ in feeds]
        torch_runner.progress = _Announcer(progress, f"{Path(onnx_path).name}: PyTorch reference", labels)
        ort_runner = _announced(ort_runner, _Announcer(progress, f"{Path(onnx_path).name}: {ort_runner.name}", labels))
    try:
        results = Comparator.run([torch_runner, ort_runner], data_loader=data)
    except Exception as exc:
        raise ParityError(f"running {onnx_path} for parity failed: {str(exc).splitlines()[0]}") from exc
    names = list(results[0][1][0].keys())
    ref_iters, out_iters = results[0][1], results[1][1]
    labels = {n for n in names if np.asarray(ref_iters[0][n]).dtype.kind in "iu" and n != "indices"}
    eff = {n: (np.inf if n in labels else tolerances.effective_atol(n, _value_range(ri[n] for ri in ref_iters)))
           for n in names}  # labels: compared by equality below, not by Polygraphy's tolerances
    ties = 0
    if "indices" in names:  # top-k exports: compare candidates by index, not by rank
        for ri, oi in zip(ref_iters, out_iters):
            ties += align_topk(ri, oi, eff["scores"])
    atol = {"": tolerances.atol[""], **eff}
    rtol = {"": tolerances.rtol[""], **{n: tolerances.for_output(n)[1] for n in names}}
    import warnings

    with warnings.catch_warnings():  # its relative error of integer labels divides by zero: compared below instead
        warnings.simplefilter("ignore", RuntimeWarning)
        acc = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol,
                                                                                  check_shapes=True))
    poly_passed = bool(acc)
    outputs: List[OutputStats] = []
    for n in names:
        a, r = (0.0, tolerances.max_mismatch) if n in labels else (eff[n], tolerances.for_output(n)[1])
        per = [_stats(n, np.asarray(ri[n]), np.asarray(oi[n]), a, r, tolerances.max_mismatch)
               for ri, oi in zip(ref_iters, out_iters)]
        outputs.append(OutputStats(n, max(p.max_abs for p in per), max(p.max_rel for p in per),
                                   float(np.mean([p.out_of_tolerance for p in per])), a, r, all(p.passed for p in per),
                                   sum(p.nonfinite for p in per), sum(p.reference_nonfinite for p in per),
                                   next((p.shape_mismatch for p in per if p.shape_mismatch), ""), per[0].kind))
    agreement = None if network is not None else task.agreement(
        ref_iters, out_iters, [tuple(f["images"].shape[-2:]) for f in data], _model_info(model, decode_mode),
        th.detection, tolerances)
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(save_dir / "inputs.json", to_json(data))
        only_torch = RunResults()
        only_torch.append(results[0])
        atomic_write_text(save_dir / "pytorch_outputs.json", only_torch.to_json())
    tensors_ok = poly_passed and all(o.passed for o in outputs)
    passed = (tensors_ok or not th.tensor_decides) and (agreement is None or agreement.passed)
    report = ParityReport(Path(onnx_path).name, decode_mode, passed, outputs, agreement, [l for l, _ in feeds],
                          poly_passed, round(time.time() - start, 2), ties)
    # not a dataclass field (not serialised): the outputs, for task-level metrics on the same run
    report.results = ([dict(r) for r in ref_iters], [dict(o) for o in out_iters])
    return report


def _model_info(model, decode_mode: str):
    """What the task's post-processing needs to know of a model file (as an artifact's metadata would say)."""
    from ..artifact import ArtifactInfo

    family = model.family
    return ArtifactInfo(family.task, [f"class_{i}" for i in range(model.num_classes)], (0, 0), (0.0,) * 3, (1.0,) * 3,
                        decode_mode, tuple(getattr(model, "strides", None) or ()), family=family)
