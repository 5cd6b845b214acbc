"""Outputs of ``autotimm-parity``: JUnit XML for CI systems, ``parity.json`` and a Markdown summary.

- JUnit: one ``<testsuite>`` per artifact, one ``<testcase>`` per level (``classname`` = the artifact's
  file name, ``name`` = the level); a failed level carries ``<failure message=...>``, a level that
  could not run ``<skipped message=...>`` (``<failure>`` under ``strict``).
- ``parity.json`` (format ``autotimm-parity/1``): model, inputs, thresholds, versions and per
  artifact and level the status, message and numbers, as strict JSON (:mod:`autotimm_deploy._json`: a missing
  number is ``null``, an infinite one ``"inf"``).
- Markdown: a verdict table (artifact x level), the task metrics next to PyTorch's and each
  failure's message; written for ``$GITHUB_STEP_SUMMARY`` and similar job summaries.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path

from .._atomic import atomic_write_text
from .._json import strict
from .suite import SuiteResult

__all__ = ["to_junit", "to_json", "to_markdown", "write_reports", "REPORT_FORMAT"]

REPORT_FORMAT = "autotimm-parity/1"


def to_dict(result: SuiteResult) -> dict:
    return strict({
        "format": REPORT_FORMAT,
        "passed": result.passed,
        "exit_code": result.exit_code,
        "strict": result.strict,
        "seconds": result.seconds,
        "model": result.model,
        "inputs": result.inputs,
        "thresholds": result.thresholds,
        "versions": result.versions,
        "artifacts": [{"path": a.path, "kind": a.kind, "precision": a.precision, "decode": a.decode,
                       "status": a.status, "notes": a.notes, "metrics": a.metrics,
                       "pytorch_metrics": a.reference_metrics,
                       "levels": {lv.level: asdict(lv) for lv in a.levels}} for a in result.artifacts],
    })


def to_json(result: SuiteResult) -> str:
    return json.dumps(to_dict(result), indent=2, allow_nan=False) + "\n"


def artifact_names(paths) -> list:
    """Short names that tell the artifacts apart: the file name, or as much of the path as it takes (two export
    folders both hold a ``model.onnx``).

    >>> artifact_names(["a/x/model.onnx", "b/x/model.onnx", "a/x/model.fp16.onnx"])
    ['a/x/model.onnx', 'b/x/model.onnx', 'model.fp16.onnx']
    """
    parts = [Path(p).parts for p in paths]
    names = []
    for i, pp in enumerate(parts):
        depth = 1
        while depth < len(pp) and any(j != i and q[-depth:] == pp[-depth:] for j, q in enumerate(parts)):
            depth += 1
        names.append("/".join(pp[-depth:]))
    return names


def to_junit(result: SuiteResult) -> str:
    """JUnit XML: one testsuite per artifact, one testcase per level; names unique within the run."""
    root = ET.Element("testsuites", name="autotimm-parity", time=f"{result.seconds:.3f}")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for a, name in zip(result.artifacts, artifact_names([a.path for a in result.artifacts])):
        suite = ET.SubElement(root, "testsuite", name=f"parity {name}")
        props = ET.SubElement(suite, "properties")
        for k, v in (("model", result.model["path"]), ("model_sha256", result.model["sha256"]),
                     ("artifact", a.path), ("precision", a.precision), ("decode", a.decode),
                     ("inputs", json.dumps(result.inputs, sort_keys=True))):
            ET.SubElement(props, "property", name=k, value=str(v))
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for lv in a.levels:
            case = ET.SubElement(suite, "testcase", classname=name, name=lv.level, time=f"{lv.seconds:.3f}")
            counts["tests"] += 1
            if lv.status == "fail" or (lv.status == "skipped" and result.strict):
                el = ET.SubElement(case, "failure", message=lv.message[:1000], type=f"parity.{lv.level}")
                el.text = lv.message + ("\n" + "\n".join(a.notes) if a.notes else "")
                counts["failures"] += 1
            elif lv.status == "skipped":
                ET.SubElement(case, "skipped", message=lv.message[:1000])
                counts["skipped"] += 1
            else:
                ET.SubElement(case, "system-out").text = lv.message
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
        suite.set("errors", "0")
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_MARK = {"pass": "pass", "fail": "**FAIL**", "skipped": "skipped", "info": "info"}


def _metric(m: dict, key: str) -> str:
    return f"{100 * m[key]:.2f}" if key in m else "-"


def to_markdown(result: SuiteResult) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    inp = result.inputs
    what = (f"{inp['images']} images from `{inp['root']}` ({inp['format']})" if inp["mode"] == "data"
            else f"{inp['count']} seeded random inputs (seed {inp['seed']})")
    lines = [f"## autotimm-parity: {verdict}", "",
             f"Model `{result.model['path']}` ({result.model['task']}, {result.model.get('backbone')}, SHA-256 "
             f"`{result.model['sha256'][:12]}`), inputs: {what}. {result.seconds:.1f} s.", "",
             "| artifact | precision | decode | " + " | ".join(
                 lv for lv in ("tensor", "detection", "task") if any(a.level(lv) for a in result.artifacts)) + " |"]
    levels = [lv for lv in ("tensor", "detection", "task") if any(a.level(lv) for a in result.artifacts)]
    names = dict(zip([a.path for a in result.artifacts], artifact_names([a.path for a in result.artifacts])))
    lines.append("|---|---|---|" + "---|" * len(levels))
    for a in result.artifacts:
        cells = [_MARK[a.level(lv).status] if a.level(lv) else "-" for lv in levels]
        lines.append(f"| `{names[a.path]}` | {a.precision.upper()} | {a.decode} | " + " | ".join(cells) + " |")
    with_metrics = [a for a in result.artifacts if a.metrics]
    if with_metrics:
        keys = [k for k in ("map", "map50", "top1", "top1_agreement") if any(k in a.metrics for a in with_metrics)]
        head = {"map": "mAP@0.5:0.95", "map50": "mAP@0.5", "top1": "top-1 acc.", "top1_agreement": "top-1 agreement"}
        lines += ["", "| | " + " | ".join(head[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
        ref = with_metrics[0].reference_metrics
        lines.append("| PyTorch FP32 (reference) | " + " | ".join(_metric(ref, k) if k != "top1_agreement" else "100.00"
                                                                    for k in keys) + " |")
        for a in with_metrics:
            lines.append(f"| `{names[a.path]}` | " + " | ".join(_metric(a.metrics, k) for k in keys) + " |")
    notes = []
    for a in result.artifacts:
        rest = [lv for lv in a.levels if lv.status != "pass"]
        if len(rest) > 1 and len({(lv.status, lv.message) for lv in rest}) == 1 and len(rest) == len(a.levels):
            notes.append(f"- `{names[a.path]}` every level: {_MARK[rest[0].status]}: {rest[0].message}")
        else:
            notes += [f"- `{names[a.path]}` {lv.level}: {_MARK[lv.status]}: {lv.message}" for lv in rest]
    if notes:
        lines += ["", "### Failures and skipped levels", "", *notes]
    for a in result.artifacts:
        for n in a.notes:
            lines.append(f"- `{names[a.path]}`: note: {n}")
    return "\n".join(lines) + "\n"


def write_reports(result: SuiteResult, report_dir: str | Path | None = None, junit: str | Path | None = None) -> list:
    """Write ``parity.json`` + ``parity.md`` into ``report_dir`` and/or JUnit XML to ``junit``; returns the paths."""
    written = []
    if report_dir is not None:
        d = Path(report_dir)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "parity.md", to_markdown(result))
        atomic_write_text(d / "parity.json", to_json(result))
        written += [d / "parity.md", d / "parity.json"]
    if junit is not None:
        atomic_write_text(junit, to_junit(result))
        written.append(Path(junit))
    return written
