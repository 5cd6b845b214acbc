#!/usr/bin/env python
"""Measure the demo models' parity and task metrics (PyTorch FP32, ONNX FP32, ONNX FP16, engine where it
runs) on the synthetic held-out split with autotimm-parity, and write docs/demo-parity.md.

    python scripts/demo_parity.py [--images 500] [--out docs/demo-parity.md]

The test split (seeds 2,000,000+) was used neither for training nor for model selection.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import autotimm_deploy
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import write_classification_split, write_detection_split
from autotimm_deploy.engines.library import gpu_info
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
from autotimm_deploy.parity.reports import to_markdown
from autotimm_deploy.parity.suite import check_artifacts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("docs/demo-parity.md"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    sections, rows, versions = [], [], {}
    for kind, task, writer in (("detector", "detection", write_detection_split),
                               ("classifier", "classification", write_classification_split)):
        model = demo_model_path(kind)
        t = time.time()
        export_model(model, tmp / kind, ExportOptions(fp16=True, engine="tensorrt-rtx", check=False), progress=None)
        export_s = time.time() - t
        data = writer(tmp / f"{kind}_test", "test", args.images)
        res = check_artifacts(model, [tmp / kind], data=data, progress=print)
        versions = res.versions
        sections.append(f"### Demo {kind} (export {export_s:.1f} s, parity {res.seconds:.1f} s)\n\n"
                        + to_markdown(res).split("\n", 2)[2].replace(str(tmp) + "/", "").replace(str(Path.cwd()) + "/", "")
                        .replace("### Failures", "#### Failures"))
        first = next(a for a in res.artifacts if a.reference_metrics)
        keys = ["map", "map50"] if task == "detection" else ["top1"]
        rows.append((kind, "PyTorch FP32 (eager, CPU)", {k: first.reference_metrics[k] for k in keys}, "reference", ""))
        for a in res.artifacts:
            name = Path(a.path).name
            verdict = ", ".join(f"{lv.level} {lv.status}" for lv in a.levels)
            tensor = a.level("tensor")
            worst = ""
            if tensor.status != "skipped":
                outs = tensor.details["outputs"]
                o = max(outs, key=lambda o: o["max_abs"] / max(o["atol"], 1e-30))
                worst = f"{o['name']} {o['max_abs']:.2g}"
            label = f"{name} ({'ONNX Runtime CPU' if name.endswith('.onnx') else 'engine'})"
            rows.append((kind, label, {k: a.metrics.get(k) for k in keys}, verdict, worst))
    lines = ["# Demo models: parity and task metrics", "",
             f"Measured by `scripts/demo_parity.py` with `autotimm-parity` on {args.images} images of the synthetic "
             "held-out **test** split (never used for training or model selection), "
             f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             f"{'GPU ' + gpu_info()['name'] if gpu_info() else 'no GPU'}; "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
             "Metrics in points (mAP x 100, top-1 accuracy in %). Engines are built with TensorRT-RTX ahead of time; "
             "where no GPU is present they are not executed and every level says so.", "",
             "| model | artifact | mAP@0.5:0.95 / top-1 | mAP@0.5 | levels | worst output error |",
             "|---|---|---|---|---|---|"]
    for kind, label, m, verdict, worst in rows:
        fmt = lambda v: "-" if v is None else f"{100 * v:.2f}"
        first = m.get("map", m.get("top1"))
        lines.append(f"| {kind} | {label} | {fmt(first)} | {fmt(m.get('map50')) if 'map50' in m else '-'} | "
                     f"{verdict} | {worst} |")
    lines += ["", "## Reports", "", *sections]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} (autotimm-deploy {autotimm_deploy.__version__})")


if __name__ == "__main__":
    main()
