#!/usr/bin/env python
"""Backbone coverage job: for each timm backbone, build a small random-init model -- an FCOS detector and/or an
image classifier -- and run the whole pipeline -- ONNX export, graph surgery, FP32 and FP16 parity against
PyTorch, TensorRT-RTX engine build -- and write a pass/fail table with the reason for every failure.

    python scripts/coverage.py --no-gate          # seeded sample of 60 timm families, both tasks -> docs/coverage.md
    python scripts/coverage.py --all --no-gate    # every family of the sample with features_only -> docs/coverage.md
    python scripts/coverage.py --subset ci --out coverage-ci.md --json coverage-ci.json   # the CI gate
    python scripts/coverage.py --list curated --out /tmp/cov.md   # the hand-picked list (detection)
    python scripts/coverage.py --only resnet18,pvt_v2_b0 --task classification --out /tmp/cov.md
    python scripts/coverage.py --resample --dry-run               # redraw scripts/coverage_sample.json

The sample (scripts/coverage_sample.json, committed) is drawn by rule from the installed timm (SAMPLE_RULE):
one smallest model per timm module ("family") under SIZE_CAP_M M parameters, with features_only support.
Each entry runs in its own subprocess with a timeout, so one crash or hang cannot take the job down.
Exit code: 0 when every entry passed or failed as recorded in KNOWN (task, model) -> cause, 1 on a new
failure or when a known failure passes (CI gates on it); --no-gate: always 0.

Detectors: ObjectDetector(backbone, num_classes=4, fpn_channels=64, num_convs=1), randomised BatchNorm statistics and
a He-normal head; classifiers: ImageClassifier(backbone, num_classes=4) with randomised BatchNorm statistics
(autotimm_deploy.parity.random_init). Export: ExportOptions(fp16=True, engine="tensorrt-rtx", batch=(1, 1, 2),
random_inputs=2, demo_images=2) with a fresh engine cache per entry. The report is rendered by coverage_report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

HERE = Path(__file__).resolve()


def _load_report():
    """scripts/coverage_report.py (the rendering), loaded by path: scripts/ stays off sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("coverage_report", HERE.parent / "coverage_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load_report()
_g, _reason, render, verdict_of = report._g, report._reason, report.render, report.verdict_of

TASKS = ("detection", "classification")


@dataclass(frozen=True)
class Entry:
    family: str
    model: str
    size: Union[int, Sequence[int]] = 128  # square side or (H, W); detection: multiples of 32
    kind: str = "CNN"  # CNN | transformer | hybrid ("" for sampled entries)
    note: str = ""  # why this variant / input size
    # node-name globs to keep in FP32 (added to the default islands) in a second export when FP16 parity
    # fails -- the `--fp32-nodes +GLOB,...` workaround, verified on every run
    fp16_workaround: Tuple[str, ...] = ()
    task: str = "detection"  # detection | classification
    sample_params: Optional[int] = None  # the sample's count: timm.create_model(model) with its default head

    @property
    def hw(self) -> Tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))


Backbone = Entry  # the curated list's old name

#: The curated list (`--list curated`, detection): the 13 CNN families of scripts/export_survey.py, transformer and
#: hybrid backbones with features_only levels at strides 8/16/32, and known failures (in KNOWN, with the cause).
BACKBONES: List[Entry] = [
    Entry("resnet", "resnet18"), Entry("resnext", "resnext26ts"), Entry("seresnext", "seresnext26ts"),
    Entry("efficientnet", "efficientnet_b0"), Entry("mobilenetv3", "mobilenetv3_large_100"),
    Entry("mobilenetv4", "mobilenetv4_conv_small"), Entry("convnext", "convnext_atto"), Entry("regnet", "regnetx_002"),
    Entry("densenet", "densenet121"),
    Entry("cspdarknet", "cspdarknet53", fp16_workaround=("/model/backbone/stages_3/*", "/model/backbone/stages_4/*")),
    Entry("ghostnet", "ghostnet_100"), Entry("repvgg", "repvgg_a0"), Entry("hrnet", "hrnet_w18_small"),
    Entry("pvt_v2", "pvt_v2_b0", kind="transformer", note="spatial-reduction attention"),
    Entry("mobilevit", "mobilevit_xxs", kind="hybrid", note="conv + transformer blocks"),
    Entry("edgenext", "edgenext_xx_small", kind="hybrid", note="conv + transposed (channel) attention"),
    Entry("fastvit", "fastvit_t8", kind="hybrid", note="RepMixer; conv + attention"),
    Entry("efficientvit", "efficientvit_b0", kind="hybrid", note="MIT EfficientViT, ReLU linear attention"),
    Entry("tiny_vit", "tiny_vit_5m_224", 224, kind="transformer", note="window attention, 224 px (windows sized for 224)"),
    Entry("coatnet", "coatnet_nano_rw_224", 224, kind="hybrid",
          note="MBConv + relative-position attention, 224 px (position bias sized for 224)"),
    Entry("swin", "swin_tiny_patch4_window7_224", 224, kind="transformer"),
    Entry("vit", "vit_tiny_patch16_224", 224, kind="transformer"),
]

#: Known failures: (task, timm model) -> cause. A failure listed here is a "known failure" (exit 0); any other
#: failure is "FAIL" and a listed entry that passes is an "unexpected pass" (both exit 1 unless --no-gate).
KNOWN: Dict[Tuple[str, str], str] = {
    ("detection", "vit_tiny_patch16_224"): "plain ViT, only stride-16 feature levels",
    # the CI subset's sample families (seed 0, timm 1.0.31), measured
    ("detection", "convmixer_768_32"): "ConvMixer: every feature level at stride 7, no levels at strides 8/16/32",
    ("detection", "sequencer2d_s"): "Sequencer2D: feature levels at strides 7/14, none at 8 or 32",
}

#: The curated list's quick subset (classic CNN, depthwise/SE, modern CNN, multi-branch, a transformer, a hybrid and
#: the plain-ViT rejection); `--subset ci` adds the first CI_SAMPLE families of the seeded order, both tasks.
CI_SUBSET = ["resnet18", "efficientnet_b0", "mobilenetv4_conv_small", "convnext_atto", "hrnet_w18_small",
             "pvt_v2_b0", "mobilevit_xxs", "vit_tiny_patch16_224"]
CI_SAMPLE = 3

FPN_CHANNELS, NUM_CONVS, NUM_CLASSES = 64, 1, 4
BATCH = (1, 1, 2)
DEMO_IMAGES = 2
RANDOM_INPUTS = 2

# ------------------------------------------------------------------------------------------------ sampling

SAMPLE_FILE = HERE.parent / "coverage_sample.json"
SIZE_CAP_M = 30.0  # million parameters
INPUT_CAP = 256
SAMPLE_RULE = (
    "family = timm module (timm.list_modules()); candidates = timm.list_models(module=family) (architecture names, "
    "no pretrained tags), each built with default arguments on the meta device (a name that cannot be built is "
    "skipped); the family's model = the candidate with the fewest parameters (ties: first name); the family is "
    f"eligible when that model has <= {SIZE_CAP_M:g} M parameters and timm.create_model(model, features_only=True) "
    f"builds (meta device). Input: pretrained_cfg input_size H, W, each capped at {INPUT_CAP} (when the model runs "
    "at the capped size on the meta device), rounded up to a multiple of 32 for detection (the detector's "
    "levels must line up; classifiers pool and take the size as is). Selection: the seeded order random.Random(seed).sample(sorted eligible "
    "families, k=all); --sample N takes its first N, --subset ci its first 3, --all every eligible family.")


def _meta_build(timm, torch, name: str, **kwargs):
    import warnings

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, **kwargs)


def _input_sizes(torch, model) -> Dict:
    h, w = (list(model.pretrained_cfg.get("input_size") or (3, 224, 224)) + [224, 224])[1:3]
    info = getattr(model, "feature_info", None) or [{"reduction": 32}]
    stride = int(info[-1].get("reduction", 32)) if isinstance(info, list) else 32
    rec = {"default_input": [h, w], "max_stride": stride, "input_cap": None}
    ch, cw = min(h, INPUT_CAP), min(w, INPUT_CAP)
    if (ch, cw) != (h, w):
        try:
            with torch.no_grad():
                model(torch.empty(1, 3, ch, cw, device="meta"))
            rec["input_cap"] = "applied"
        except Exception as exc:
            rec["input_cap"] = f"not accepted ({_reason(exc)[:120]}): default size kept"
            ch, cw = h, w
    up = lambda v, m: -(-v // m) * m  # noqa: E731
    rec["detection_input"] = [up(ch, 32), up(cw, 32)]
    rec["classification_input"] = [ch, cw]  # a pooled classifier takes any size
    return rec


def draw_sample(say: Callable[[str], None] = print) -> Dict:
    """Apply SAMPLE_RULE to the installed timm; returns the JSON-able sample (scripts/coverage_sample.json)."""
    import timm
    import torch

    start, families = time.time(), {}
    for module in sorted(timm.list_modules()):
        names = sorted(n for n in timm.list_models(module=module) if "." not in n)
        cands, errors = {}, {}
        for name in names:
            try:
                cands[name] = sum(p.numel() for p in _meta_build(timm, torch, name).parameters())
            except Exception as exc:
                errors[name] = _reason(exc)
        rec: Dict = {"status": "ok", "model": None, "params": None, "features_only": None, "feature_strides": None,
                     "reason": None}
        if not cands:
            rec.update(status="not constructible", reason=next(iter(errors.values()), "no model names"))
        else:
            model = min(cands, key=lambda n: (cands[n], n))
            rec.update(model=model, params=cands[model])
            if cands[model] > SIZE_CAP_M * 1e6:
                rec.update(status="over the size cap", reason=f"{cands[model] / 1e6:.1f} M > {SIZE_CAP_M:g} M")
            else:
                try:
                    rec["feature_strides"] = list(_meta_build(timm, torch, model, features_only=True)
                                                  .feature_info.reduction())
                    rec["features_only"] = True
                except Exception as exc:
                    rec.update(status="no features_only", features_only=False, reason=_reason(exc))
                rec.update(_input_sizes(torch, _meta_build(timm, torch, model)))
        rec.update(candidates=cands, not_built=errors)
        families[module] = rec
        params = "-" if rec["params"] is None else f"{rec['params'] / 1e6:.2f} M"
        say(f"  {module:<28} {rec['status']:<18} {rec['model'] or '-':<36} {params} ({len(cands)}/{len(names)} built)")
    return {"timm": timm.__version__, "torch": torch.__version__, "rule": SAMPLE_RULE, "size_cap_m": SIZE_CAP_M,
            "input_cap": INPUT_CAP, "drawn": time.strftime("%Y-%m-%d"), "draw_seconds": round(time.time() - start, 1),
            "counts": sample_counts({"families": families}), "families": families}


def sample_counts(sample: Dict) -> Dict[str, int]:
    fams = sample["families"].values()
    counts = {"families": len(sample["families"])}
    for status in ("ok", "no features_only", "over the size cap", "not constructible"):
        counts[status] = sum(r["status"] == status for r in fams)
    counts["constructible"] = counts["families"] - counts["not constructible"]
    counts["under the size cap"] = counts["ok"] + counts["no features_only"]
    counts["features_only"] = counts["ok"]
    return counts


def load_sample(path: Path = SAMPLE_FILE, resample: bool = False, say: Callable[[str], None] = print) -> Dict:
    import timm

    if resample or not Path(path).exists():
        say(f"drawing the sample from timm {timm.__version__} (every model on the meta device) -> {path}")
        sample = draw_sample(say)
        Path(path).write_text(json.dumps(sample, indent=1, sort_keys=True) + "\n")
        say(f"sample drawn in {sample['draw_seconds']:.0f} s: {sample['counts']}")
        return sample
    sample = json.loads(Path(path).read_text())
    if sample["timm"] != timm.__version__:
        say(f"note: {Path(path).name} was drawn from timm {sample['timm']}, timm {timm.__version__} is installed: "
            "using the file as it is (reproducible); --resample redraws it")
    return sample


def eligible_families(sample: Dict) -> List[str]:
    return sorted(f for f, r in sample["families"].items() if r["status"] == "ok")


def seeded_order(sample: Dict, seed: int = 0) -> List[str]:
    fams = eligible_families(sample)
    return random.Random(seed).sample(fams, len(fams))


def sample_entry(family: str, rec: Dict, task: str) -> Entry:
    hw = rec.get(f"{task}_input") or [224, 224]
    return Entry(family, rec["model"], tuple(hw), kind="", task=task, sample_params=rec.get("params"))


def select(subset: str = "full", only: Optional[str] = None, *, list_name: str = "sample", all_families: bool = False,
           n: int = 60, seed: int = 0, task: str = "both", sample: Optional[Dict] = None) -> List[Entry]:
    """The entries to run, in order (task-major; duplicates dropped)."""
    tasks = TASKS if task == "both" else (task,)
    if list_name == "curated" and task == "both":
        tasks = ("detection",)
    curated = {b.model: b for b in BACKBONES}
    curated.update({b.family: b for b in BACKBONES})
    out: List[Entry] = []
    if only:
        fams = sample["families"] if sample and list_name != "curated" else {}
        by_model = {r["model"]: f for f, r in fams.items() if r.get("model")}
        for t in tasks:
            for item in [x.strip() for x in only.split(",") if x.strip()]:
                name, _, size = item.partition("@")  # NAME@SIZE: that square input size
                fam = name if name in fams and fams[name].get("model") else by_model.get(name)
                if fam:
                    e = sample_entry(fam, fams[fam], t)
                else:
                    e = Entry(**{**asdict(curated.get(name, Entry("-", name))), "task": t})
                out.append(Entry(**{**asdict(e), "size": int(size)}) if size else e)
    elif list_name == "curated" and subset != "ci":
        out = [Entry(**{**asdict(b), "task": t}) for t in tasks for b in BACKBONES]
    else:
        order = seeded_order(sample, seed)
        fams = order[:CI_SAMPLE] if subset == "ci" else order if all_families else order[:n]
        out = [sample_entry(f, sample["families"][f], t) for t in tasks for f in fams]
        if subset == "ci":
            out += [curated[m] for m in CI_SUBSET]
    seen, unique = set(), []
    for e in out:
        if (e.task, e.model, e.hw) not in seen:
            seen.add((e.task, e.model, e.hw))
            unique.append(e)
    return unique


# ------------------------------------------------------------------------------------------------ one entry

# export_model's step names (its structured progress events) -> the stage this table reports
_STAGES = {"load": "load", "export": "export", "surgery": "surgery", "fp16": "fp16", "int8": "int8", "parity": "parity",
           "engine": "engine"}


def _options(cache_dir: Path, engine: str = "tensorrt-rtx", extra_fp32_nodes: Tuple[str, ...] = ()):
    from autotimm_deploy.exporters.fp16 import DEFAULT_ISLANDS
    from autotimm_deploy.exporters.pipeline import ExportOptions

    fp32_nodes = DEFAULT_ISLANDS.node_names + tuple(extra_fp32_nodes) if extra_fp32_nodes else None
    return ExportOptions(fp16=True, engine=engine, batch=BATCH, demo_images=DEMO_IMAGES, random_inputs=RANDOM_INPUTS,
                         cache_dir=str(cache_dir), fp32_nodes=fp32_nodes)


def _report(rep: Dict) -> Dict:
    """One parity report, generic over the output names; ``worst_*``: the output furthest over (or nearest) its atol."""
    outs = rep["outputs"]
    errs = {o["name"]: o["max_abs"] for o in outs}
    worst = max(outs, key=lambda o: o["max_abs"] / max(o["atol"], 1e-30)) if outs else {}
    det = rep.get("detections") or {}
    summary = ", ".join(f"{o['name']} err {o['max_abs']:.2g} (atol {o['atol']:g})" for o in
                        sorted(outs, key=lambda o: -o["max_abs"] / max(o["atol"], 1e-30))[:3])
    if det:
        summary += f"; detections {det['matched']}/{det['reference']} matched"
    return {"passed": bool(rep["passed"]), "errors": errs, "atol": {o["name"]: o["atol"] for o in outs},
            "worst_output": worst.get("name"), "worst_err": worst.get("max_abs"), "worst_atol": worst.get("atol"),
            "boxes_err": errs.get("boxes"), "scores_err": errs.get("scores"), "logits_err": errs.get("logits"),
            "failed_outputs": [o["name"] for o in outs if not o["passed"]], "det_matched": det.get("matched"),
            "det_reference": det.get("reference"), "det_passed": det.get("passed"), "summary": summary}


def _blank(e: Entry) -> Dict:
    return {"family": e.family, "model": e.model, "task": e.task, "kind": e.kind, "input": list(e.hw), "note": e.note,
            "sample_params": e.sample_params, "ok": False, "constructed": False, "export_ok": False, "stage": "build",
            "reason": None, "problems": [], "params_m": None, "fp32": None, "fp16": None, "engine": None,
            "timings_s": {}, "overflow_kept_fp32": None, "fp16_repair": None, "output_fmt": None, "feature_absmax": None,
            "fp16_workaround": None}


def run_entry(e: Entry, work_dir: Union[str, os.PathLike], progress: Optional[Callable[[str], None]] = None) -> Dict:
    """Build, save and export one entry in this process; never raises for a model problem.

    Returns a JSON-able dict: ``ok`` (the whole pipeline passed), ``constructed`` (the task's model was built),
    ``stage`` reached or failed at, ``reason`` (one line) on failure, params, FP32/FP16 parity and the engine build.
    """
    import torch

    from autotimm_deploy import ImageClassifier, ObjectDetector, save_model
    from autotimm_deploy.exporters.pipeline import export_model
    from autotimm_deploy.parity.random_init import randomize_norms, spread_head

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda s: None)
    res, (h, w) = _blank(e), e.hw
    start = time.time()
    try:
        torch.manual_seed(0)
        if e.task == "detection":
            model = ObjectDetector(e.model, num_classes=NUM_CLASSES, fpn_channels=FPN_CHANNELS, num_convs=NUM_CONVS)
            model = spread_head(randomize_norms(model))
        else:
            model = randomize_norms(ImageClassifier(e.model, num_classes=NUM_CLASSES))
        res["constructed"] = True
        res["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        res["output_fmt"] = str(getattr(model.backbone, "output_fmt", "NCHW")).replace("Format.", "")
        res["stage"] = "forward"
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():  # activation scale of C3/C4/C5 (classifier: the last features): explains FP16 problems
            feats = model.backbone(x) if e.task == "detection" else [model.backbone.forward_features(x)]
            res["feature_absmax"] = [float(f.abs().max()) for f in feats if isinstance(f, torch.Tensor)]
            if e.task == "classification":  # the logits' scale: what an FP32/FP16 error is relative to
                res["logits_absmax"] = float(model(x).abs().max())
        res["stage"] = "save"
        model_path = save_model(model, work / f"{e.model}.pt", input_size=(h, w))
    except Exception as exc:
        res["reason"] = f"{res['stage']}: {_reason(exc)}"
        res["traceback"] = traceback.format_exc()[-2000:]
        res["seconds"] = time.time() - start
        return res
    del model

    stage = {"now": "load"}

    def track(event) -> None:  # an exporters.events.Event: a line that names its step
        stage["now"] = _STAGES.get(getattr(event, "step", ""), stage["now"])
        say(event)

    manifest = None
    try:
        manifest = export_model(model_path, work / "export", _options(work / "cache"), progress=track)
    except Exception as exc:
        res["stage"] = stage["now"]
        res["reason"] = f"{stage['now']}: {_reason(exc)}"
        res["traceback"] = traceback.format_exc()[-2000:]
        if stage["now"] == "engine":  # export and parity went through: rerun without the engine for the numbers
            res["engine"] = {"built": False, "error": _reason(exc)}
            try:
                manifest = export_model(model_path, work / "export-no-engine", _options(work / "cache", "none"),
                                        progress=None)
            except Exception:
                manifest = None
    if manifest is not None:
        res["export_ok"] = True
        res["timings_s"] = manifest["timings_s"]
        reports = {r["artifact"]: r for r in manifest["parity"]["reports"]}
        res["fp32"] = _report(reports["model.onnx"]) if "model.onnx" in reports else None
        res["fp16"] = _report(reports["model.fp16.onnx"]) if "model.fp16.onnx" in reports else None
        plan = manifest.get("fp16") or {}
        res["overflow_kept_fp32"] = [o.get("node") for o in plan.get("overflow_kept_fp32", [])]
        res["fp16_repair"] = [k["block"] for step in plan.get("repair", []) for k in step["kept_fp32"]]
        if manifest.get("engine"):
            eng = manifest["engine"]
            art = next(a for a in manifest["artifacts"] if a["role"] == "engine")
            side = json.loads((work / "export" / eng["sidecar"]).read_text())
            res["engine"] = {"built": True, "file": art["file"], "bytes": (work / "export" / art["file"]).stat().st_size,
                             "build_s": side["build"]["seconds"], "library": f"{art['library']} {art['library_version']}",
                             "targets": art["targets"].get("compute_capabilities") or [art["targets"].get("gpu", {}).get("name")],
                             "status": eng["parity"]["status"], "status_reason": eng["parity"].get("reason"),
                             "summary": eng["parity"]["summary"]}
        if res["reason"] is None:
            res["stage"] = "done"
            problems = []
            for key, label in (("fp32", "FP32 parity failed"), ("fp16", "FP16 parity failed")):
                if res[key] is None or not res[key]["passed"]:
                    problems.append((label, f"{label}" + (f" ({res[key]['summary']})" if res[key] else "")))
            if res["engine"] and res["engine"]["status"] == "fail":
                problems.append(("engine parity failed", f"engine parity failed ({res['engine']['summary']})"))
            if problems:
                res["stage"] = "parity"
                res["problems"] = [p[0] for p in problems]
                res["reason"] = "; ".join(p[1] for p in problems)
            res["ok"] = not problems
            if res["fp16"] is not None and not res["fp16"]["passed"] and e.fp16_workaround:
                res["fp16_workaround"] = _workaround(e, model_path, work)
    res["seconds"] = time.time() - start
    return res


run_backbone = run_entry


def _workaround(e: Entry, model_path: Path, work: Path) -> Dict:
    """Export again (no engine) with ``e.fp16_workaround`` kept in FP32 and report the FP16 parity."""
    from autotimm_deploy.exporters.pipeline import export_model

    flag = "--fp32-nodes '" + ",".join("+" + g for g in e.fp16_workaround) + "'"
    try:
        m = export_model(model_path, work / "export-fp16-workaround",
                         _options(work / "cache", "none", e.fp16_workaround), progress=None)
    except Exception as exc:
        return {"flag": flag, "error": _reason(exc)}
    rep = next(r for r in m["parity"]["reports"] if r["artifact"] == "model.fp16.onnx")
    return {"flag": flag, "fp16": _report(rep), "fp16_nodes": m["fp16"]["fp16_nodes"]}


def _run_in_subprocess(e: Entry, timeout: float, tmp_root: Path, threads: int = 2) -> Dict:
    """Run :func:`run_entry` in a child process (its own session, killed as a group on timeout)."""
    work = Path(tempfile.mkdtemp(prefix=f"{e.task[:3]}-{e.model}-", dir=tmp_root))
    result = work / "result.json"
    cmd = [sys.executable, str(HERE), "--worker", json.dumps(asdict(e)), "--result", str(result), "--work", str(work),
           "--threads", str(threads)]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child we started and anything it spawned
        except ProcessLookupError:
            pass
        proc.communicate()
        return {**_blank(e), "stage": "timeout", "reason": f"timeout: no result after {timeout:.0f} s (killed)",
                "seconds": time.time() - start, "wall_s": time.time() - start}
    if result.exists():
        res = json.loads(result.read_text())
        res["wall_s"] = time.time() - start  # including the child's start-up (imports)
        return res
    tail = [ln for ln in (out or "").strip().splitlines() if ln.strip()][-1:] or ["no output"]
    return {**_blank(e), "stage": "crash", "reason": f"crash: worker exited with code {proc.returncode} ({tail[0][:200]})",
            "seconds": time.time() - start, "wall_s": time.time() - start}


def verdict(res: Dict, known: Optional[Dict[Tuple[str, str], str]] = None) -> str:
    """pass | FAIL | known failure (listed in KNOWN with its cause) | unexpected pass (listed, but passed)."""
    return verdict_of(res, KNOWN if known is None else known)


def exit_code(results: List[Dict], gate: bool = True, known: Optional[Dict[Tuple[str, str], str]] = None) -> int:
    return int(gate and any(verdict(r, known) in ("FAIL", "unexpected pass") for r in results))


# ------------------------------------------------------------------------------------------------ main


def _meta(args, argv: List[str], selection: str, sample: Optional[Dict]) -> Dict:
    meta = {**report.environment(args.threads), "command": shlex.join(["python", "scripts/coverage.py", *argv]),
            "timeout_s": args.timeout, "selection": selection, "gate": not args.no_gate,
            "known": [{"task": t, "model": m, "cause": c} for (t, m), c in KNOWN.items()],
            "ci": {"sample_families": CI_SAMPLE, "curated": CI_SUBSET, "seed": args.seed}}
    if sample is not None:
        meta["sample"] = {"file": str(SAMPLE_FILE.relative_to(HERE.parents[1])), "timm": sample["timm"],
                          "rule": sample["rule"], "size_cap_m": sample["size_cap_m"], "counts": sample_counts(sample),
                          "excluded": {f: {k: r.get(k) for k in ("status", "model", "params", "reason")}
                                       for f, r in sorted(sample["families"].items()) if r["status"] != "ok"},
                          "seed": args.seed, "n": args.sample}
    return meta


def _merge(args, argv: List[str], entries: List, out: str, sample: Optional[Dict]) -> int:
    """One report from earlier results, in the order of this selection; entries with no result are listed
    in the report's header as not run."""
    found: Dict[Tuple[str, str], Dict] = {}
    for path in map(Path, args.merge):
        rows = (json.loads(path.read_text())["results"] if path.is_file()
                else [json.loads(p.read_text()) for p in sorted(path.glob("*/result.json"))])
        for r in rows:
            found[(r["task"], r["model"])] = r
    results = []
    for e in entries:
        r = found.get((e.task, e.model))
        if r is not None:
            r["known"] = KNOWN.get((e.task, e.model))
            r["verdict"] = verdict(r)
            results.append(r)
    missing = [f"{e.task[:3]}:{e.model}" for e in entries if (e.task, e.model) not in found]
    meta = _meta(args, argv, " ".join(argv), sample)
    meta["wall_s"] = sum(r.get("wall_s", r.get("seconds", 0.0)) for r in results)
    meta["not_run"] = missing
    if out:
        Path(out).write_text(render(results, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"merged {len(results)} result(s); not run: {', '.join(missing) or 'none'}" + (f"; report: {out}" if out else ""))
    return exit_code(results, gate=not args.no_gate)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", dest="list_name", choices=["sample", "curated"], default="sample",
                    help="sample: drawn by rule from timm (default); curated: the hand-picked list (detection)")
    ap.add_argument("--all", action="store_true", help="every family of the sample with features_only support")
    ap.add_argument("--sample", type=int, default=60, help="families of the seeded order to run (default 60)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the family order (default 0)")
    ap.add_argument("--task", choices=["detection", "classification", "both"], default="both")
    ap.add_argument("--subset", choices=["full", "ci"], default="full",
                    help=f"ci: the first {CI_SAMPLE} families of the seeded order (both tasks) + the curated CI_SUBSET")
    ap.add_argument("--only", help="comma-separated timm names or families (names in neither list run at 128 px; NAME@SIZE for "
                         "another square input size)")
    ap.add_argument("--resample", action="store_true", help=f"redraw {SAMPLE_FILE.name} from the installed timm")
    ap.add_argument("--dry-run", action="store_true", help="print the selected entries and stop")
    ap.add_argument("--no-gate", action="store_true", help="exit 0 even on new failures (a table, not a gate)")
    ap.add_argument("--out", default=None, help="markdown report ('' to skip; default docs/coverage.md for --all and "
                                                "the default sample, none otherwise)")
    ap.add_argument("--json", help="also write the raw results as JSON")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per entry (default 300)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each worker")
    ap.add_argument("--keep", action="store_true", help="keep the per-entry work files (models, ONNX, engines)")
    ap.add_argument("--merge", nargs="+", metavar="PATH",
                    help="render one report from earlier runs instead of running: --json files and --keep folders "
                         "(each entry's result.json, also those of a run that was stopped)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # JSON Entry: run one in this process
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        spec = json.loads(args.worker)
        spec["fp16_workaround"] = tuple(spec.get("fp16_workaround") or ())
        res = run_entry(Entry(**spec), args.work, progress=print)
        Path(args.result).write_text(json.dumps(res, indent=2) + "\n")
        return 0

    uses_sample = args.list_name == "sample" or args.subset == "ci"
    sample = load_sample(resample=args.resample) if uses_sample or args.resample else None
    entries = select(args.subset, args.only, list_name=args.list_name, all_families=args.all, n=args.sample,
                     seed=args.seed, task=args.task, sample=sample)
    selection = " ".join(argv) or f"--sample {args.sample} --seed {args.seed}"
    full = not args.only and args.subset == "full" and args.list_name == "sample" and (args.all or (
        args.sample == 60 and args.seed == 0 and args.task == "both"))
    out = args.out if args.out is not None else ("docs/coverage.md" if full else "")
    if args.dry_run:
        for i, e in enumerate(entries, 1):
            print(f"[{i}/{len(entries)}] {e.task:<14} {e.family:<24} {e.model:<36} {e.hw[0]}x{e.hw[1]}")
        return 0
    if args.merge:
        return _merge(args, argv, entries, out, sample)
    tmp_root = Path(tempfile.mkdtemp(prefix="autotimm-coverage-"))
    os.environ.setdefault("AUTOTIMM_DEPLOY_CACHE", str(tmp_root / "cache"))
    start, results = time.time(), []
    for i, e in enumerate(entries, 1):
        res = _run_in_subprocess(e, args.timeout, tmp_root, args.threads)
        res["known"] = KNOWN.get((e.task, e.model))
        res["verdict"] = v = verdict(res)
        results.append(res)
        detail = ""
        if res["fp16"]:
            detail = (f" fp32 {res['fp32'] and res['fp32']['worst_output']} {_g(res['fp32'] and res['fp32']['worst_err'])},"
                      f" fp16 {res['fp16']['worst_output']} {_g(res['fp16']['worst_err'])}")
        if res["engine"] and res["engine"].get("built"):
            detail += f", engine {res['engine']['bytes'] / 1e6:.1f} MB/{res['engine']['build_s']:.1f}s"
        print(f"[{i}/{len(entries)}] {e.task[:3]} {e.model:<34} {v:<16} {res.get('wall_s', res['seconds']):6.1f}s "
              f"(total {time.time() - start:6.1f}s){detail}" + (f" -- {res['reason']}" if res.get("reason") else ""),
              flush=True)
    wall = time.time() - start
    meta = _meta(args, argv, selection, sample)
    meta["wall_s"] = wall
    if sample is not None:
        meta["ci_entries"] = [[e.task, e.model] for e in select("ci", sample=sample, seed=args.seed)]
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(render(results, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(tmp_root, ignore_errors=True)
    bad = [r for r in results if r["verdict"] in ("FAIL", "unexpected pass")]
    known = [r for r in results if r["verdict"] == "known failure"]
    print(f"{sum(r['ok'] for r in results)} passed / {len(results)}; {len(known)} known failure(s); {len(bad)} "
          f"unexpected: {', '.join(r['task'][:3] + ':' + r['model'] for r in bad) or 'none'}; {wall:.0f} s"
          + (f"; report: {out}" if out else "; no report (--out)") + (f"; work files: {tmp_root}" if args.keep else "")
          + ("" if not bad or not args.no_gate else " (--no-gate: exit 0)"), flush=True)
    return exit_code(results, gate=not args.no_gate)


if __name__ == "__main__":
    sys.exit(main())
