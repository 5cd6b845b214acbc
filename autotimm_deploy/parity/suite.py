"""``autotimm-parity`` as a Python API: artifacts vs the PyTorch model file, at three levels.

Each artifact (FP32/FP16 ONNX, an engine where this machine can run it) gets one verdict per level:

- **tensor**: every output against PyTorch through Polygraphy's comparator, with per-output
  tolerances for the artifact's precision (:data:`FP32_TOLERANCES` / :data:`FP16_TOLERANCES`), and
  inf/NaN in the artifact's outputs always a failure;
- **detection** (detectors): reference detections (score >= 0.3) matched one-to-one by class and
  IoU >= 0.9, with a bound on the score difference of matched pairs;
- **task**: on an annotated folder, the artifact's mAP@0.5 and mAP@0.5:0.95 (pycocotools'
  COCOeval) or top-1 accuracy must be at least PyTorch's minus a tolerance in points; classifiers
  also need top-1 agreement with PyTorch on every image folder.

A level that cannot run here (an engine without a GPU, a task metric without annotations) is
*skipped* with the reason; a skipped level never passes silently: it is reported as skipped in
every output, and ``strict=True`` turns it into a failure.

>>> from autotimm_deploy.demo import demo_model_path
>>> from autotimm_deploy.demo.shapes import write_detection_split
>>> from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
>>> import tempfile
>>> out = tempfile.mkdtemp()
>>> _ = export_model(demo_model_path("detector"), out, ExportOptions(engine="none", check=False), progress=None)
>>> data = write_detection_split(tempfile.mkdtemp(), "test", 8)  # 8 images + COCO annotations.json
>>> result = check_artifacts(demo_model_path("detector"), [f"{out}/model.onnx"], data=data, progress=None)
>>> [(lv.level, lv.status) for lv in result.artifacts[0].levels], result.exit_code
([('tensor', 'pass'), ('detection', 'pass'), ('task', 'pass')], 0)
>>> result.artifacts[0].metrics == result.artifacts[0].reference_metrics  # FP32: PyTorch's mAP exactly
True
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ParityError
from .artifacts import Artifact, resolve_artifacts  # noqa: F401 (re-exported)
from .thresholds import DEFAULT_THRESHOLDS, DetectionRule, TaskRule, Thresholds, load_thresholds  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # the model-file side is imported when checking (it pulls in torch and timm)
    from ..models.loaded import LoadedModel
    from ..models.overrides import ModelOverrides

__all__ = ["DetectionRule", "TaskRule", "Thresholds", "DEFAULT_THRESHOLDS", "load_thresholds", "Artifact",
           "resolve_artifacts", "LevelResult", "ArtifactResult", "SuiteResult", "check_artifacts", "LEVELS"]

LEVELS = ("tensor", "detection", "task")
Progress = Optional[Callable[[str], None]]


# --------------------------------------------------------------------------------------------------
# results


@dataclass
class LevelResult:
    level: str
    status: str  # pass | fail | skipped | info (reported, not deciding)
    message: str
    seconds: float = 0.0
    details: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ArtifactResult:
    path: str
    kind: str
    precision: str
    decode: str
    levels: List[LevelResult]
    notes: List[str] = field(default_factory=list)
    metrics: Dict[str, float] = field(default_factory=dict)  # task metrics of the artifact
    reference_metrics: Dict[str, float] = field(default_factory=dict)  # PyTorch on the same inputs

    @property
    def status(self) -> str:
        st = [lv.status for lv in self.levels]
        return "fail" if "fail" in st else ("pass" if "pass" in st else "skipped")

    def level(self, name: str) -> Optional[LevelResult]:
        return next((lv for lv in self.levels if lv.level == name), None)


@dataclass
class SuiteResult:
    model: Dict[str, Any]
    inputs: Dict[str, Any]
    artifacts: List[ArtifactResult]
    thresholds: Dict[str, Any]
    strict: bool
    seconds: float
    versions: Dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        bad = ("fail", "skipped") if self.strict else ("fail",)
        return not any(lv.status in bad for a in self.artifacts for lv in a.levels)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def failures(self) -> List[Tuple[ArtifactResult, LevelResult]]:
        bad = ("fail", "skipped") if self.strict else ("fail",)
        return [(a, lv) for a in self.artifacts for lv in a.levels if lv.status in bad]


# --------------------------------------------------------------------------------------------------
# inputs


@dataclass
class _Feeds:
    feeds: List[Tuple[str, Dict[str, np.ndarray]]]
    valid: List[int]  # real (not padding) rows of each feed
    letterboxes: List[list]  # per feed, per valid row (data mode)
    samples: List[List[int]]  # per feed, dataset indices (data mode)


def _batch_size(want: int, info) -> int:
    lo, hi = info.batch
    return max(lo, min(want, hi))


def _data_feeds(images: List[np.ndarray], info, size: Tuple[int, int], batch: int) -> _Feeds:
    from ..images import letterbox_images

    b = _batch_size(batch, info)
    f = _Feeds([], [], [], [])
    for start in range(0, len(images), b):
        idx = list(range(start, min(start + b, len(images))))
        arr, boxes = letterbox_images([images[i] for i in idx], size, info.mean, info.std, info.family.preprocess)
        n = len(idx)
        if n < info.batch[0]:
            arr = np.concatenate([arr] + [arr[-1:]] * (info.batch[0] - n))
        f.feeds.append((f"images {idx[0]}-{idx[-1]} ({arr.shape[0]}x3x{size[0]}x{size[1]})", {"images": arr}))
        f.valid.append(n)
        f.letterboxes.append(boxes)
        f.samples.append(idx)
    return f


def _random_feeds(n: int, info, size: Tuple[int, int], batch: int, seed: int) -> _Feeds:
    rng = np.random.default_rng(seed)
    b = _batch_size(batch, info)
    f = _Feeds([], [], [], [])
    shapes = [size]
    if info.dynamic_hw and info.strides:  # a second shape, not only the traced one
        s = max(info.strides)
        second = (size[0] + s, size[1] + 2 * s)
        lo, hi = info.hw_range or ((s, s), (1 << 30, 1 << 30))
        if lo[0] <= second[0] <= hi[0] and lo[1] <= second[1] <= hi[1]:
            shapes.append(second)
    done = 0
    k = 0
    while done < n:
        rows = min(b, n - done)
        hw = shapes[k % len(shapes)]
        arr = rng.standard_normal((max(rows, info.batch[0]), 3, *hw), dtype=np.float32)
        f.feeds.append((f"random#{k} {arr.shape[0]}x3x{hw[0]}x{hw[1]} (seed {seed})", {"images": arr}))
        f.valid.append(rows)
        f.letterboxes.append([])
        f.samples.append([])
        done += rows
        k += 1
    return f


# --------------------------------------------------------------------------------------------------
# levels


def _tensor_level(report, seconds: float) -> LevelResult:
    outs = report.outputs
    details = {"outputs": [asdict(o) for o in outs], "polygraphy_passed": report.polygraphy_passed,
               "topk_boundary_ties": report.topk_boundary_ties}
    bad = [o for o in outs if not o.passed]
    if not bad and report.polygraphy_passed:
        worst = max(outs, key=lambda o: o.max_abs / max(o.atol, 1e-30))
        return LevelResult("tensor", "pass", f"{len(outs)} outputs within tolerance; closest to its limit: "
                                             f"{worst.name} max abs err {worst.max_abs:.3g} (atol {worst.atol:g})",
                           seconds, details)
    bad.sort(key=lambda o: (-o.nonfinite, -o.reference_nonfinite, -bool(o.shape_mismatch), -o.out_of_tolerance))
    msg = "; ".join(o.message() for o in bad[:4]) + (f"; and {len(bad) - 4} more outputs" if len(bad) > 4 else "")
    return LevelResult("tensor", "fail", msg or "Polygraphy's comparator reported a mismatch", seconds, details)


def _agreement_level(report) -> LevelResult:
    """The task's agreement level, as :func:`~.check.run_parity` judged it (the export's verdict too); a failure
    names the outputs out of tolerance."""
    a = report.agreement
    failing = [o.name for o in report.outputs if not o.passed]
    hint = f"; outputs out of tolerance: {', '.join(failing)}" if a.status == "fail" and failing else ""
    return LevelResult(a.level, a.status, a.message + hint, 0.0, a.details)


def _finite(out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: (np.nan_to_num(np.asarray(v, np.float32), nan=0.0, posinf=1e4, neginf=-1e4)
                if np.asarray(v).dtype.kind == "f" else np.asarray(v)) for k, v in out.items()}


def _predictions(task, results, feeds: _Feeds, art: Artifact, rule: TaskRule, networks) -> List:
    """The task's results per sample in image pixels, with the task rule's post-processing (detectors: COCO
    practice, a low score threshold); ``networks``: the task's extra networks for this side."""
    preds: List = []
    for res, (_, feed), n, boxes in zip(results, feeds.feeds, feeds.valid, feeds.letterboxes):
        size = tuple(feed["images"].shape[-2:])
        out = {k: v[:n] for k, v in _finite(res).items()}
        preds += task.postprocess(out, art.info, size, boxes, score_thresh=rule.score_thresh, iou_thresh=rule.nms_iou,
                                  max_detections=rule.max_detections, networks=networks)
    return preds


def _task_level(report, feeds: _Feeds, art: Artifact, dataset, rule: TaskRule, num_classes: int,
                result: ArtifactResult, model, providers) -> LevelResult:
    from ..engines.backends import TorchNetworkBackend
    from ..tasks import get_task

    task = get_task(art.info.task)
    if dataset is None:
        return LevelResult("task", "skipped", "task metrics need real images: pass --data DIR (an annotated folder "
                                              "for the task metric)")
    t = time.time()
    ref_res, art_res = report.results
    ref_nets = {name: TorchNetworkBackend(model, name) for name in task.extra_networks}
    art_nets = art.networks(providers) if task.extra_networks else {}
    ref_p = _predictions(task, ref_res, feeds, art, rule, ref_nets)
    art_p = _predictions(task, art_res, feeds, art, rule, art_nets)
    checks = task.prediction_agreement(ref_p, art_p, rule)  # e.g. classifiers' top-1 agreement: needs no labels
    got, ref = dict(checks.get("metrics", {})), {}
    ok, msg = checks.get("passed", True), checks.get("message", "")
    if dataset.annotated:
        try:
            ref_m = task.metric(ref_p, dataset, num_classes)
            got_m = task.metric(art_p, dataset, num_classes)
        except ValueError as exc:
            if not checks:
                return LevelResult("task", "skipped", f"{task.metric_names[task.metric_keys[0]]} cannot be computed: "
                                                      f"{exc}")
            ref_m = got_m = None
            msg += f"; {exc}"
        if got_m is not None:
            points = getattr(rule, task.points_field)
            deltas = []
            for k in task.metric_keys:
                ok = ok and got_m[k] >= ref_m[k] - points / 100
                deltas.append(f"{task.metric_names[k]} {100 * got_m[k]:.2f} vs PyTorch {100 * ref_m[k]:.2f} "
                              f"(delta {100 * (got_m[k] - ref_m[k]):+.2f})")
            got.update(got_m)
            ref.update(ref_m)
            msg = ("; ".join([m for m in (msg,) if m] + [", ".join(deltas)])
                   + f"; allowed drop {points:g} points on {len(dataset.samples)} images")
    elif not checks:
        return LevelResult("task", "skipped", f"{dataset.root} has no annotations ({task.annotation_formats}): "
                                              f"{task.metric_names[task.metric_keys[0]]} cannot be computed")
    else:
        msg += "; no labels in the folder: accuracy not computed"
    if not ok:
        failing = [o["name"] for o in report_outputs(report) if not o["passed"]]
        if failing:
            msg += f" — outputs out of tolerance: {', '.join(failing)}"
    result.metrics, result.reference_metrics = got, ref
    return LevelResult("task", "pass" if ok else "fail", msg, round(time.time() - t, 3),
                       {"artifact": got, "pytorch": ref, "rule": asdict(rule), "images": len(ref_p),
                        "allowed_drop_points": getattr(rule, task.points_field)})


def report_outputs(report) -> List[Dict[str, Any]]:
    return [asdict(o) for o in report.outputs]


# --------------------------------------------------------------------------------------------------


def _versions() -> Dict[str, str]:
    import importlib.metadata as md

    from .. import __version__

    out = {"autotimm-deploy": __version__}
    for pkg in ("torch", "timm", "onnx", "onnxruntime-gpu", "onnxruntime", "polygraphy", "tensorrt-rtx", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def check_artifacts(
    model_path: str | Path,
    artifacts: Sequence[str | Path],
    data: Optional[str | Path] = None,
    random: Optional[int] = None,
    annotations: Optional[str | Path] = None,
    limit: Optional[int] = None,
    thresholds: Optional[Dict[str, Thresholds]] = None,
    batch: int = 8,
    seed: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    strict: bool = False,
    progress: Progress = print,
    overrides: Optional["ModelOverrides"] = None,
    loaded: Optional["LoadedModel"] = None,
    reference_cache: Optional[Dict] = None,
) -> SuiteResult:
    """Check every artifact against the model file; see the module docstring.  ``data`` (a folder of
    images, annotated or not) or ``random`` (that many seeded N(0, 1) inputs, default 8) are the inputs.
    ``loaded`` (the model file, already loaded) and ``reference_cache`` (a dict kept between calls) let repeated
    checks of the same model run PyTorch once per input."""
    from ..images import load_image
    from ..models.overrides import ModelOverrides
    from ..models.readers import load_model_file
    from ..tasks import task_of
    from .check import run_parity

    say = progress or (lambda s: None)
    start = time.time()
    if data is not None and random is not None:
        raise ParityError("use either --data DIR or --random N, not both")
    if random is None and data is None:
        random = 8
    if random is not None and random < 1:
        raise ParityError(f"--random needs at least 1 input, got {random}")
    thresholds = thresholds or load_thresholds()
    arts = resolve_artifacts(artifacts)
    # what the export was told about the model and the file does not record (an AutoTimm checkpoint's class
    # names, input size, mean/std) comes from the first artifact's metadata unless given here
    if loaded is None:
        loaded = load_model_file(model_path, overrides or ModelOverrides.from_dict(arts[0].info.overrides))
    model = loaded.model
    for a in arts:
        if a.info.task != loaded.task:
            raise ParityError(f"{a.path}: a {a.info.task} artifact, but {model_path} is a {loaded.task} model")
    class_names = loaded.metadata.get("class_names") or [f"class_{i}" for i in range(model.num_classes)]
    dataset, images = None, None
    if data is not None:
        from .data import load_dataset

        dataset = load_dataset(data, class_names, loaded.task, annotations, limit)
        say(f"data: {dataset.describe()}" + (f" ({len(dataset.skipped)} unannotated images skipped)" if dataset.skipped else ""))
        for note in dataset.notes:
            say(f"      note: {note}")
        images = [load_image(s.path) for s in dataset.samples]
        inputs = {"mode": "data", "root": str(dataset.root), "images": len(images), "format": dataset.format,
                  "notes": list(dataset.notes),
                  "annotation_file": str(dataset.annotation_file) if dataset.annotation_file else None}
    else:
        inputs = {"mode": "random", "count": random, "seed": seed}
        say(f"inputs: {random} seeded random N(0, 1) images (seed {seed}); task metrics need --data")
    cache: Dict = {} if reference_cache is None else reference_cache  # PyTorch runs once per distinct input
    feeds_cache: Dict = {}
    results: List[ArtifactResult] = []
    for k, art in enumerate(arts, 1):
        th = thresholds.get(art.precision, thresholds["fp32"])
        res = ArtifactResult(str(art.path), art.kind, art.precision, art.info.decode, [])
        if art.source_sha256 and art.source_sha256 != loaded.sha256:
            res.notes.append(f"exported from a different model file (source SHA-256 {art.source_sha256[:12]}..., "
                             f"{Path(model_path).name} is {loaded.sha256[:12]}...)")
        head = f"[{k}/{len(arts)}] {art.path.name} ({art.label}, decode {art.info.decode}"
        head += f", top-k {art.topk})" if art.topk else ")"
        levels = [lv for lv in ("tensor", task_of(model.family).agreement_level, "task") if lv]
        if not art.runnable:
            res.levels = [LevelResult(lv, "skipped", f"engine not executed: {art.why}") for lv in levels]
            say(f"{head}: skipped: {art.why}")
            results.append(res)
            continue
        size = tuple(art.info.input_size)
        key = (size, art.info.batch, tuple(art.info.mean), tuple(art.info.std), art.info.dynamic_hw)
        if key not in feeds_cache:
            feeds_cache[key] = (_data_feeds(images, art.info, size, batch) if images is not None
                                else _random_feeds(random, art.info, size, batch, seed))
        feeds = feeds_cache[key]
        t = time.time()
        try:
            report = run_parity(model, art.path, feeds.feeds, art.info.decode, art.topk, thresholds=th,
                                runner=art.runner(providers), reference_cache=cache, quiet=progress is None)
        except ParityError as exc:
            res.levels = [LevelResult("tensor", "fail", f"the artifact did not run: {exc}")]
            say(f"{head}: tensor FAIL: {exc}")
            results.append(res)
            continue
        tensor = _tensor_level(report, round(time.time() - t, 3))
        if not th.tensor_decides:  # reported, never deciding (INT8)
            tensor = LevelResult(tensor.level, "info", f"informative only ({tensor.status}): {tensor.message}",
                                 tensor.seconds, tensor.details)
        res.levels.append(tensor)
        if report.agreement is not None:
            res.levels.append(_agreement_level(report))
        res.levels.append(_task_level(report, feeds, art, dataset, th.task, model.num_classes, res, model, providers))
        say(f"{head}:")
        for note in res.notes:
            say(f"      note: {note}")
        for lv in res.levels:
            say(f"      {lv.level:<9} {lv.status.upper():<7} {lv.message}")
        results.append(res)
    model_info = {"path": str(model_path), "sha256": loaded.sha256, "task": loaded.task,
                  "backbone": loaded.config.get("backbone"), "num_classes": model.num_classes}
    return SuiteResult(model_info, inputs, results, {k: v.to_dict() for k, v in thresholds.items()}, strict,
                       round(time.time() - start, 2), _versions())
