"""Parity between the PyTorch model and an exported ONNX model, through Polygraphy's comparator.

Comparisons are data: :class:`Tolerances` maps output names to (atol, rtol) with ``""`` as the
default.  An element is out of tolerance when ``|a - r| > atol`` *and* ``|a - r| > rtol * |r|``
(r = PyTorch), the rule of Polygraphy's ``SimpleCompareFunc``.

Default FP32 tolerances (``FP32_TOLERANCES``) and why:

- logits, activations: atol 1e-4, rtol 1e-3.  PyTorch and ONNX Runtime reorder FP32 sums in
  convolutions and normalisation (measured max error 1e-6 to 5e-6 on the demo models and
  resnet50 FCOS), so 1e-4 leaves ~20x headroom while a real export bug (wrong weight, wrong
  stride offset) moves outputs by 1e-2 or more.
- ``boxes`` (pixels): atol 1e-2 px, rtol 1e-4.  exp() turns a 1e-6 log-distance error into a
  relative error of 1e-6, i.e. under 1e-3 px for boxes of up to 1000 px.

FP16 tolerances (``FP16_TOLERANCES``), derived in docs/fp16.md from FP16's unit roundoff
u = 2^-11 = 4.9e-4 and the error growth measured on the demo detector and resnet50 FCOS:

- raw head outputs, logits, activations: atol 5e-2, rtol 1e-2.  Each stored FP16 tensor adds a
  relative error <= u; through the ~60 stored tensors of resnet50 FCOS the measured error is at
  most 22 u x RMS(output) (1.1e-2 abs, 0.9 % relative on elements with |x| > 1).  rtol 1e-2 is
  20 u; atol 5e-2 is 4x the largest measured absolute error.
- ``scores`` = sigmoid(cls) * sigmoid(ctr): sigmoid' <= 1/4, so an error e on both logits moves
  the score by <= e/2; with the measured e <= 1.1e-2 that is 5.5e-3: atol 1e-2, rtol 1e-2.
- ``boxes``: a coordinate moves by distance x (error of bbox_pred), at most 1 % of the distance
  with the measured 9e-3: atol 1 px (a 100 px distance), rtol 1e-2 of the coordinate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._atomic import atomic_write_text
from ..errors import ParityError
from ..models.decode import postprocess_outputs as detections_from_outputs
from .matching import FALLBACK_TOP_K, MAX_TIE_FRACTION, DetectionAgreement, align_topk, match_detections  # noqa: F401
from .runners import TorchRunner

__all__ = ["Tolerances", "FP32_TOLERANCES", "FP16_TOLERANCES", "INT8_TOLERANCES", "OutputStats", "DetectionAgreement", "ParityReport", "run_parity",
           "match_detections", "detections_from_outputs", "align_topk"]


@dataclass
class Tolerances:
    """Per-output (atol, rtol); the key ``""`` is the default for outputs not listed.

    An absolute tolerance must mean something at the scale of the values compared: FP16's 1e-2 on ``scores`` is
    larger than every score of a low-confidence model (about 0.005), so any other model's scores passed.  The
    atol actually applied to an output is therefore at most ``range_fraction`` of the reference's value range
    (max - min over the inputs), but not scaled below ``atol_floor`` (:meth:`effective_atol`).
    """

    atol: Dict[str, float] = field(default_factory=lambda: {"": 1e-4})
    rtol: Dict[str, float] = field(default_factory=lambda: {"": 1e-3})
    range_fraction: float = 0.1
    atol_floor: float = 1e-6

    def for_output(self, name: str) -> Tuple[float, float]:
        return self.atol.get(name, self.atol[""]), self.rtol.get(name, self.rtol[""])

    def effective_atol(self, name: str, value_range: float) -> float:
        """The atol for ``name`` where the reference spans ``value_range``.

        >>> Tolerances(atol={"": 1e-2}).effective_atol("scores", 0.004)  # low-confidence scores
        0.0004
        >>> Tolerances(atol={"": 1.0}).effective_atol("boxes", 128.0)   # pixels: the nominal atol
        1.0
        """
        atol = self.for_output(name)[0]
        if not np.isfinite(value_range):
            return atol
        return float(min(atol, max(self.atol_floor, self.range_fraction * value_range)))


def _value_range(arrays) -> float:
    """max - min of the finite values of a reference output over all inputs (inf when there are none)."""
    lo, hi = np.inf, -np.inf
    for a in arrays:
        a = np.asarray(a, np.float64)
        a = a[np.isfinite(a)]
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return hi - lo if hi >= lo else float("inf")


FP32_TOLERANCES = Tolerances(atol={"": 1e-4, "boxes": 1e-2}, rtol={"": 1e-3, "boxes": 1e-4})
FP16_TOLERANCES = Tolerances(atol={"": 5e-2, "scores": 1e-2, "boxes": 1.0}, rtol={"": 1e-2, "scores": 1e-2, "boxes": 1e-2})
#: INT8: reported, never deciding (see parity.thresholds): 8-bit activations move logits by about 1/256 of
#: each tensor's calibrated range per layer, so the errors are in the tenths; the task level decides.
INT8_TOLERANCES = Tolerances(atol={"": 0.5, "scores": 0.1, "boxes": 8.0}, rtol={"": 0.1, "scores": 0.1, "boxes": 0.05})


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
        return (f"{self.name}: max abs err {self.max_abs:.3g} > atol {self.atol:g} and rel err > rtol {self.rtol:g} "
                f"on {self.out_of_tolerance:.2%} of elements")


@dataclass
class ParityReport:
    artifact: str
    decode: str
    passed: bool
    outputs: List[OutputStats]
    detections: Optional[DetectionAgreement]
    inputs: List[str]
    polygraphy_passed: bool
    seconds: float
    topk_boundary_ties: int = 0  # top-k candidates that swapped at rank k within the score tolerance

    def to_dict(self) -> Dict:
        d = asdict(self)
        if self.detections is not None:
            d["detections"]["matched_fraction"] = self.detections.matched_fraction
            d["detections"]["status"] = self.detections.status
            d["detections"]["passed"] = self.detections.passed
        return d

    def summary(self) -> str:
        """One line: the worst outputs relative to their tolerance, and the detection agreement."""
        worst = sorted(self.outputs, key=lambda o: -o.max_abs / max(o.atol, 1e-30))[:3]
        text = ", ".join(f"{o.name} err {o.max_abs:.2g} (atol {o.atol:g})" for o in worst)
        if self.detections is not None:
            text += f"; {self.detections.describe()}"
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
        if self.detections is not None:
            d = self.detections
            if d.status == "not informative":
                lines += ["", f"Detections: **not informative**: {d.describe()}."]
            else:
                lines += ["", f"Detections ({d.describe()}; same class, IoU >= {d.iou_thr}): "
                              f"{d.matched_fraction:.2%} matched (need {d.min_match:.0%}); artifact has {d.candidate}; "
                              f"max score difference {d.max_score_diff:.3g}. {'pass' if d.passed else '**FAIL**'}"]
        return "\n".join(lines) + "\n"


def _stats(name: str, ref: np.ndarray, out: np.ndarray, atol: float, rtol: float) -> OutputStats:
    if ref.shape != out.shape:
        return OutputStats(name, float("inf"), float("inf"), 1.0, atol, rtol, False,
                           shape_mismatch=f"artifact {tuple(out.shape)} vs PyTorch {tuple(ref.shape)}")
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
    tolerances: Tolerances = FP32_TOLERANCES,
    save_dir: Optional[Path] = None,
    detection_kwargs: Optional[Dict] = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    runner=None,
    reference_cache: Optional[dict] = None,
    progress: Optional[Callable[[str], None]] = None,
    quiet: bool = False,
) -> ParityReport:
    """Compare PyTorch with ONNX Runtime on ``feeds`` ((label, feed_dict) pairs) via Polygraphy.

    With ``save_dir``, writes ``inputs.json`` and ``pytorch_outputs.json`` so that
    ``polygraphy run model.onnx --onnxrt --load-inputs inputs.json --load-outputs pytorch_outputs.json``
    reproduces the tensor-level check.  ``runner`` replaces the ONNX Runtime runner (e.g. an
    :class:`autotimm_deploy.engines.runner.EngineRunner` for an engine at ``onnx_path``).
    ``reference_cache`` (a dict shared between calls) runs PyTorch once per input across artifacts.
    ``progress`` receives a line as each runner starts each input (a long check is never silent).
    ``quiet`` keeps Polygraphy's own log (its mismatch lines) off stderr: the report says it all.
    """
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.json import to_json
    from polygraphy.logger import G_LOGGER

    ort.set_default_logger_severity(3)
    G_LOGGER.module_severity = G_LOGGER.CRITICAL if quiet else G_LOGGER.ERROR  # quiet: not even its mismatch lines
    start = time.time()
    onnx_path = str(onnx_path)
    torch_runner = TorchRunner(model, decode_mode, topk, name="pytorch", cache=reference_cache)
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
    eff = {n: tolerances.effective_atol(n, _value_range(ri[n] for ri in ref_iters)) for n in names}
    ties = 0
    if "indices" in names:  # top-k exports: compare candidates by index, not by rank
        for ri, oi in zip(ref_iters, out_iters):
            ties += align_topk(ri, oi, eff["scores"])
    atol = {"": tolerances.atol[""], **eff}
    rtol = {"": tolerances.rtol[""], **{n: tolerances.for_output(n)[1] for n in names}}
    acc = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol, check_shapes=True))
    poly_passed = bool(acc)
    outputs: List[OutputStats] = []
    for n in names:
        a, r = eff[n], tolerances.for_output(n)[1]
        per = [_stats(n, np.asarray(ri[n]), np.asarray(oi[n]), a, r) for ri, oi in zip(ref_iters, out_iters)]
        outputs.append(OutputStats(n, max(p.max_abs for p in per), max(p.max_rel for p in per),
                                   float(np.mean([p.out_of_tolerance for p in per])), a, r, all(p.passed for p in per),
                                   sum(p.nonfinite for p in per), sum(p.reference_nonfinite for p in per),
                                   next((p.shape_mismatch for p in per if p.shape_mismatch), "")))
    det = None
    if model.family.task == "detection":
        kwargs = {"box_atol": tolerances.for_output("boxes")[0], **(detection_kwargs or {})}
        det = _detection_agreement(model, data, ref_iters, out_iters, decode_mode, kwargs)
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(save_dir / "inputs.json", to_json(data))
        only_torch = RunResults()
        only_torch.append(results[0])
        atomic_write_text(save_dir / "pytorch_outputs.json", only_torch.to_json())
    passed = poly_passed and all(o.passed for o in outputs) and (det is None or det.passed)
    report = ParityReport(Path(onnx_path).name, decode_mode, passed, outputs, det, [l for l, _ in feeds],
                          poly_passed, round(time.time() - start, 2), ties)
    # not a dataclass field (not serialised): the outputs, for task-level metrics on the same run
    report.results = ([dict(r) for r in ref_iters], [dict(o) for o in out_iters])
    return report


def _detection_agreement(model, data, ref_iters, out_iters, decode_mode: str, kwargs: Dict) -> DetectionAgreement:
    """Detections of both sides with the family's post-processing, matched above the detection threshold; when
    the reference has none there, the top :data:`FALLBACK_TOP_K` candidates per image (any score) instead."""
    def both(score_thresh=None, ref_max=None, out_max=None):
        ref_d, out_d = [], []
        for feed, ri, oi in zip(data, ref_iters, out_iters):
            size = tuple(feed["images"].shape[-2:])
            post = dict(decode_mode=decode_mode, strides=model.strides, image_size=size, score_thresh=score_thresh,
                        family=model.family)
            ref_d += detections_from_outputs(dict(ri), max_detections=ref_max, **post)
            out_d += detections_from_outputs(dict(oi), max_detections=out_max, **post)
        return ref_d, out_d

    det = match_detections(*both(), **kwargs)
    if det.reference:
        return det
    # the artifact's best 2K: a candidate that swapped with a near-equal one just below the K-th is still found
    ref_d, out_d = both(0.0, FALLBACK_TOP_K, 2 * FALLBACK_TOP_K)
    det = match_detections(ref_d, out_d, **{**kwargs, "score_thr": 0.0})
    det.score_thr, det.basis = kwargs.get("score_thr", 0.3), "top-k"
    return det
