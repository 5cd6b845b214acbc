"""Rendering of scripts/coverage.py's results: docs/coverage.md (per-task pass rates and tables, failures grouped by
a normalised cause, FP16 failures for the precision repair, the families left out of the sample) and the verdicts.

Pure functions of the JSON-able result dicts of ``coverage.run_entry`` plus the run's ``meta`` (``environment``
imports torch and the package lazily, for the header).
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

#: FP32 parity targets of issue 14 (share of the constructible models of each task)
TARGETS = {"detection": 0.90, "classification": 0.95}
CI_COMMAND = "python scripts/coverage.py --subset ci --out out/ci/coverage-ci.md --json out/ci/coverage-ci.json"
FULL_COMMAND = "python scripts/coverage.py --all --no-gate --json out/coverage-all.json"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:220]}"


def _g(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2g}"


def _task(r: Dict) -> str:
    return r.get("task", "detection")


def verdict_of(res: Dict, known: Dict[Tuple[str, str], str]) -> str:
    """pass | FAIL | known failure (listed in ``known`` with its cause) | unexpected pass (listed, but passed)."""
    if (_task(res), res["model"]) in known:
        return "unexpected pass" if res["ok"] else "known failure"
    return "pass" if res["ok"] else "FAIL"


def _verdict(r: Dict) -> str:
    return r.get("verdict") or ("pass" if r["ok"] else "FAIL")


def environment(threads: int) -> Dict:
    """Date, machine (CPU, cores, GPU) and library versions for the report's header."""
    import onnx
    import onnxruntime
    import timm
    import torch

    import autotimm_deploy
    from autotimm_deploy.engines.library import gpu_info

    try:
        from autotimm_deploy.engines.library import import_library

        rtx = import_library("tensorrt-rtx").version
    except Exception as exc:
        rtx = f"unavailable ({_reason(exc)})"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = gpu_info()
    return {"date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {cpu}, {os.cpu_count()} CPU cores ({threads} torch threads), "
                       + (f"GPU {gpu['name']}" if gpu else "no GPU"),
            "gpu": gpu["name"] if gpu else None,
            "versions": {"torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__, "tensorrt_rtx": rtx,
                         "autotimm-deploy": autotimm_deploy.__version__}}


# ------------------------------------------------------------------------------------------------ causes

_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure|Fail)): ?(.*)$")
_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_KEEP = re.compile(r"(?:b?float|u?int|fp|bf)\d+|\d+[dD]|[A-Z][A-Za-z]*\d[dD]|opset|FP\d+|NCHW|NHWC", re.I)


def normalise_cause(reason: Optional[str], words: int = 12) -> str:
    """``stage: ExceptionType: first words`` with quoted strings, names (tokens with ``_``, ``/`` or letters and
    digits: models, nodes, layers) and numbers replaced, so that the same failure on two models gives one key."""
    if not reason:
        return "-"
    stage, sep, rest = reason.partition(": ")
    if not sep or " " in stage:
        stage, rest = "", reason
    m = _EXC.match(rest)
    etype, msg = (m.group(1), m.group(2)) if m else ("", rest)
    msg = re.sub(r"(['\"`]).*?\1", "<name>", msg)
    msg = re.sub(r"0x[0-9a-fA-F]+", "<addr>", msg)
    tokens = []
    for tok in msg.split():
        core = tok.strip(".,;:()[]{}<>")
        if core and core != "name" and not _KEEP.fullmatch(core) and not _NUM.fullmatch(core) and (
                re.search(r"[/_]", core) or (re.search(r"[A-Za-z]", core) and re.search(r"\d", core))):
            tok = tok.replace(core, "<name>")
        tokens.append(tok)
    msg = " ".join(tokens)
    msg = re.sub(r"(?<![\w<])" + _NUM.pattern + r"(?![\w>])", "#", msg)
    msg = re.sub(r"#(?:\s*[,x*:]\s*#)+", "#", msg)  # lists, shapes, ranges
    msg = re.sub(r"<name>(?:\s*[,.]\s*<name>)+", "<name>", msg)
    head = " ".join(msg.split()[:words])
    return ": ".join(x for x in (stage, etype, head) if x)


def cause_of(r: Dict) -> str:
    """The grouping key of a failing row: parity failures by which checks and outputs failed, others normalised."""
    if r.get("problems"):
        parts = []
        for label in r["problems"]:
            key = {"FP32 parity failed": "fp32", "FP16 parity failed": "fp16"}.get(label)
            outs = (r.get(key) or {}).get("failed_outputs") if key else None
            det = key and (r.get(key) or {}).get("det_passed") is False
            parts.append(label + (f" ({', '.join(outs)})" if outs else "") + (" (detections)" if det and not outs else ""))
        return "parity: " + "; ".join(parts)
    return normalise_cause(r.get("reason"))


def group_causes(results: List[Dict]) -> List[Tuple[str, List[Dict]]]:
    groups: Dict[str, List[Dict]] = {}
    for r in results:
        if not r["ok"]:
            groups.setdefault(cause_of(r), []).append(r)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


# ------------------------------------------------------------------------------------------------ cells


def _parity_cell(p: Optional[Dict]) -> str:
    if p is None:
        return "-"
    errs = p.get("errors") or {k: p.get(f"{k}_err") for k in ("boxes", "scores") if p.get(f"{k}_err") is not None}
    parts = [f"{k} {_g(v)}{' px' if k == 'boxes' else ''}" for k, v in errs.items()]
    if p.get("det_reference") is not None:
        parts.append(f"det {p['det_matched']}/{p['det_reference']}")
    return f"{'pass' if p['passed'] else '**FAIL**'} ({', '.join(parts)})"


def _engine_cell(e: Optional[Dict]) -> str:
    if e is None:
        return "-"
    if not e.get("built"):
        return f"**build failed**: {e.get('error', '')}"
    run = {"not executed": "not executed (no GPU)", "pass": "executed: pass", "fail": "executed: **FAIL**"}
    return f"built, {e['bytes'] / 1e6:.1f} MB in {e['build_s']:.1f} s; {run.get(e['status'], e['status'])}"


def _export_cell(r: Dict) -> str:
    return "ok" if r["export_ok"] else f"**failed** ({r['stage']})"


def _absmax_note(r: Dict) -> str:
    mx = r.get("feature_absmax") or []
    if not mx:
        return ""
    what = "C3/C4/C5" if _task(r) == "detection" else "features"
    return (f"{what} max \\|x\\| on a random input: " + " / ".join(f"{v:,.0f}" for v in mx)
            + f" (FP16 spacing at {max(mx):.2g}: {2.0 ** (int(max(mx)).bit_length() - 11):g})")


def _notes(r: Dict) -> str:
    notes = []
    if r.get("reason") and not (r.get("engine") and r["engine"].get("error") and r["stage"] == "engine"):
        notes.append(r["reason"])  # (an engine build error is in the engine cell already)
    if r.get("logits_absmax") is not None:
        notes.append(f"logits max \\|x\\| {r['logits_absmax']:.2g}")
    if r.get("known"):
        notes.append(f"known: {r['known']}")
    if r.get("fp16") is not None and not r["fp16"]["passed"] and _absmax_note(r):
        notes.append(_absmax_note(r))
    if r.get("overflow_kept_fp32"):
        notes.append(f"FP16 overflow guard kept {len(r['overflow_kept_fp32'])} node(s) in FP32")
    if r.get("fp16_repair"):
        notes.append(f"FP16 repair kept {', '.join(r['fp16_repair'])} in FP32")
    w = r.get("fp16_workaround")
    if w:
        notes.append(f"with `{w['flag']}`: {w['error']}" if w.get("error") else
                     f"with `{w['flag']}` ({w['fp16_nodes']} FP16 nodes): FP16 {_parity_cell(w['fp16'])}")
    if r.get("note"):
        notes.append(r["note"])
    return "; ".join(notes).replace("|", "\\|").replace("\\\\|", "\\|")


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100.0 * k / n:.0f} %)" if n else f"{k}/0"


def task_stats(results: List[Dict], task: str) -> Dict[str, int]:
    rows = [r for r in results if _task(r) == task]
    built = [r for r in rows if r.get("constructed", r.get("params_m") is not None)]
    return {"entries": len(rows), "constructible": len(built),
            "fp32": sum(bool(r["fp32"] and r["fp32"]["passed"]) for r in built),
            "fp16": sum(bool(r["fp16"] and r["fp16"]["passed"]) for r in built),
            "engine": sum(bool(r["engine"] and r["engine"].get("built")) for r in built),
            "ok": sum(bool(r["ok"]) for r in built),
            "known": sum(_verdict(r) == "known failure" for r in rows),
            "new": sum(_verdict(r) in ("FAIL", "unexpected pass") for r in rows)}


# ------------------------------------------------------------------------------------------------ document


def _method(meta: Dict) -> List[str]:
    gpu = meta.get("gpu")
    return [
        "Each row is one random-init model through the whole `autotimm-export --fp16 --engine tensorrt-rtx` pipeline, "
        f"in its own subprocess (timeout {meta['timeout_s']:.0f} s). Detection: `ObjectDetector(backbone, "
        "num_classes=4, fpn_channels=64, num_convs=1)` with randomised BatchNorm statistics and a He-normal head; "
        "classification: `ImageClassifier(backbone, num_classes=4)` with randomised BatchNorm statistics "
        "(`autotimm_deploy.parity.random_init`). Export: `ExportOptions(fp16=True, engine=\"tensorrt-rtx\", "
        "batch=(1, 1, 2), random_inputs=2, demo_images=2)`: opset 17, dynamic batch 1:1:2, static H/W, FP16 ONNX "
        "with the default FP32 islands and the overflow guard, a fresh engine cache per entry.",
        "",
        "Parity: Polygraphy, ONNX Runtime CPU vs PyTorch FP32 on 2 seeded random inputs, a second batch size and 2 "
        "synthetic images, with the package's tolerances (`FP32_TOLERANCES`: boxes 1e-2 px, scores/logits 1e-4; "
        "`FP16_TOLERANCES`: boxes 1 px, scores 1e-2, logits 5e-2; see docs/fp16.md). Errors are max abs over all "
        "inputs. Engines are TensorRT-RTX, built ahead of time for the default compute-capability targets; "
        + (f"this machine has a GPU ({gpu}): engines run against PyTorch." if gpu else
           "this machine has no GPU, so they are built, not executed (the FP16 ONNX verdict stands)."),
    ]


def _sample_lines(meta: Dict) -> List[str]:
    s = meta.get("sample")
    if not s:
        return []
    c = s["counts"]
    return [
        "## Sample", "",
        f"Drawn by rule from timm {s['timm']} (`{s['file']}`, redrawn by `--resample`): {s['rule']}", "",
        f"timm {s['timm']} has **{c['families']} families** (modules): {c['constructible']} constructible, "
        f"{c['under the size cap']} of them with a smallest model under {s['size_cap_m']:g} M parameters, "
        f"**{c['features_only']} of those with features_only support (eligible)**; left out: "
        f"{c['no features_only']} without features_only, {c['over the size cap']} over the size cap, "
        f"{c['not constructible']} not constructible (listed at the end). This run: {meta['selection']}.", ""]


def _table(results: List[Dict]) -> List[str]:
    lines = ["| family | timm model | params M | input | export | FP32 parity | FP16 parity | engine | seconds | result "
             "| notes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = f"`{r['model']}`" + ("" if r.get("kind", "CNN") in ("CNN", "") else f" ({r['kind']})")
        params = "-" if r.get("params_m") is None else f"{r['params_m']:.1f}"
        v = _verdict(r)
        v = v if v in ("pass", "known failure") else f"**{v}**"
        lines.append(f"| {r['family']} | {name} | {params} | {r['input'][0]}x{r['input'][1]} | {_export_cell(r)} | "
                     f"{_parity_cell(r['fp32'])} | {_parity_cell(r['fp16'])} | {_engine_cell(r['engine'])} | "
                     f"{r.get('wall_s', r.get('seconds', 0.0)):.1f} | {v} | {_notes(r)} |")
    return lines


def render(results: List[Dict], meta: Dict) -> str:
    tasks = [t for t in ("detection", "classification") if any(_task(r) == t for r in results)]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines = ["# Backbone coverage: export, FP32/FP16 parity, TensorRT-RTX engines (detection and classification)", "",
             f"Measured {meta['date']} by `{meta['command']}` on {meta['machine']}"
             + (f": {versions}." if versions else "."), "", *_method(meta), "", *_sample_lines(meta),
             "## Pass rates", "",
             "Rates are over the **constructible** entries of each task (the task's model could be built; an entry "
             "whose model cannot be built is a failure at `build`, grouped below).", "",
             "| task | entries | constructible | FP32 parity | FP16 parity | engine built | whole pipeline | "
             "known failures | new failures |", "|---|---|---|---|---|---|---|---|---|"]
    stats = {t: task_stats(results, t) for t in tasks}
    for t, s in stats.items():
        n = s["constructible"]
        lines.append(f"| {t} | {s['entries']} | {s['constructible']} | {_pct(s['fp32'], n)} | {_pct(s['fp16'], n)} | "
                     f"{_pct(s['engine'], n)} | {_pct(s['ok'], n)} | {s['known']} | {s['new']} |")
    lines.append("")
    for t, s in stats.items():
        if s["constructible"]:
            rate = s["fp32"] / s["constructible"]
            lines.append(f"- {t}: FP32 parity {100 * rate:.0f} % of constructible models, target >= "
                         f"{100 * TARGETS[t]:.0f} %: **{'met' if rate >= TARGETS[t] else 'not met'}**.")
    total = len(results)
    lines += ["", f"**Result: {sum(r['ok'] for r in results)} passed / {total}** entries; "
                  f"wall time {meta['wall_s']:.0f} s ({meta['wall_s'] / 60:.1f} min)"
                  + ("" if meta.get("gate", True) else " (`--no-gate`: a table, not a gate)") + "."]
    if meta.get("not_run"):
        lines += ["", f"**Not run** ({len(meta['not_run'])} entries of this selection have no result): "
                  + ", ".join(f"`{n}`" for n in meta["not_run"]) + "."]
    for t in tasks:
        lines += ["", f"## {t.capitalize()}", "", *_table([r for r in results if _task(r) == t])]
    lines += ["", "`seconds`: the entry's subprocess wall time (imports, model build and save, export, surgery, FP16 "
                  "conversion, parity, engine build, and the FP16 workaround export where one is listed)."]
    lines += ["", "## Failures grouped by cause", "",
              "Cause: the failing stage, the exception type and the first words of its message with numbers and names "
              "replaced (`#`, `<name>`); parity failures by the checks and outputs that failed.", ""]
    groups = group_causes(results)
    if not groups:
        lines.append("None: every entry passed export, FP32 and FP16 parity and built its engine.")
    for cause, rows in groups:
        lines.append(f"- **{cause}** ({len(rows)}): " + ", ".join(
            f"{_task(r)[:3]} `{r['model']}`" + (" (known)" if _verdict(r) == "known failure" else "") for r in rows))
        lines.append(f"  e.g. {rows[0].get('reason') or '-'}")
    lines += ["", "## FP16 failures (for the automatic precision repair)", "",
              "Entries whose FP32 parity passed and FP16 parity failed, with the worst outputs' errors.", ""]
    fp16 = [r for r in results if r.get("fp32") and r["fp32"]["passed"] and r.get("fp16") and not r["fp16"]["passed"]]
    if not fp16:
        lines.append("None.")
    for r in fp16:
        p = r["fp16"]
        extra = [x for x in (_absmax_note(r), f"overflow guard kept {len(r['overflow_kept_fp32'])} node(s) in FP32"
                             if r.get("overflow_kept_fp32") else "") if x]
        w = r.get("fp16_workaround")
        if w and not w.get("error"):
            extra.append(f"with `{w['flag']}`: FP16 {_parity_cell(w['fp16'])}")
        lines.append(f"- {_task(r)} `{r['model']}` ({r['input'][0]}x{r['input'][1]}): worst `{p.get('worst_output')}` "
                     f"err {_g(p.get('worst_err'))} (atol {_g(p.get('worst_atol'))}); {p['summary']}"
                     + "".join(f"; {x}" for x in extra))
    excluded = (meta.get("sample") or {}).get("excluded") or {}
    if excluded:
        lines += ["", "## Families left out of the sample", ""]
        for status in ("no features_only", "over the size cap", "not constructible"):
            fams = {f: r for f, r in excluded.items() if r["status"] == status}
            lines.append(f"- **{status}** ({len(fams)}): " + ("; ".join(
                f"{f}" + (f" (`{r['model']}`, {r['params'] / 1e6:.1f} M)" if r.get("model") else "")
                + (f": {r['reason']}" if r.get("reason") and status != "over the size cap" else "")
                for f, r in fams.items()) or "none"))
    lines += ["", "## Timing and CI", "", *_ci_lines(results, meta)]
    return "\n".join(lines) + "\n"


def _ci_lines(results: List[Dict], meta: Dict) -> List[str]:
    wall = meta["wall_s"]
    lines = [f"This run: {len(results)} entries in {wall:.0f} s ({wall / 60:.1f} min) wall time on this machine, one "
             "after another, each in a fresh subprocess (~4-5 s of each are imports)."]
    ci = {tuple(x) for x in meta.get("ci_entries") or []}
    rows = [r for r in results if (_task(r), r["model"]) in ci]
    if ci and len(rows) == len(ci):
        t = sum(r.get("wall_s", r.get("seconds", 0.0)) for r in rows)
        lines.append(f"The CI subset's {len(rows)} rows add up to {t:.0f} s ({t / 60:.1f} min).")
    n_ci = (meta.get("ci") or {}).get("sample_families", "the first")
    lines += ["", f"CI runs the fast subset (`--subset ci`: the first {n_ci} families of the seeded order, both tasks, and "
                  "the curated list's CI_SUBSET, detection) and gates on the exit code (0: every entry passed or failed "
                  "as recorded in KNOWN; 1: a new failure, or a known failure that now passes):", "",
              f"    {CI_COMMAND}", "",
              "The table in this file: `" + meta["command"] + "`. Every eligible family, both tasks:", "",
              f"    {FULL_COMMAND}"]
    return lines
