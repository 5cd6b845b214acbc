#!/usr/bin/env python
"""Measure FP32 vs FP16: ONNX and engine sizes, engine build times, FP16 parity per output and at
detection level, for the demo detector, the demo classifier and resnet50 FCOS at 640x640.
Writes docs/fp16-engines.md.

    python scripts/fp16_survey.py [--out docs/fp16-engines.md] [--skip-r50]

Engines are built with TensorRT-RTX ahead of time (no GPU here); each export runs in one process,
so the FP32 and FP16 rows of a model are measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime
import timm
import torch

import autotimm_deploy
from autotimm_deploy import ObjectDetector, save_model
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.engines.library import gpu_info, import_library
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
from autotimm_deploy.parity.check import FP16_TOLERANCES
from autotimm_deploy.parity.random_init import randomize_norms, spread_head


def run(label: str, model_path: Path, **kw) -> dict:
    out = Path(tempfile.mkdtemp())
    cache = Path(tempfile.mkdtemp())  # a fresh cache: every build is timed
    start = time.time()
    m32 = export_model(model_path, out / "fp32", ExportOptions(cache_dir=str(cache), **kw), progress=None)
    m16 = export_model(model_path, out / "fp16", ExportOptions(fp16=True, cache_dir=str(cache), **kw), progress=None)
    size = lambda p: p.stat().st_size / 1e6
    reports = {r["artifact"]: r for r in m16["parity"]["reports"]}
    return {
        "label": label, "seconds": time.time() - start, "m32": m32, "m16": m16,
        "onnx32": size(out / "fp32" / "model.onnx"), "onnx16": size(out / "fp16" / "model.fp16.onnx"),
        "eng32": size(out / "fp32" / "model.engine"), "eng16": size(out / "fp16" / "model.fp16.engine"),
        "build32": m32["timings_s"]["engine_build"], "build16": m16["timings_s"]["engine_build"],
        "fp16_step": m16["timings_s"]["fp16"], "fp16_report": reports["model.fp16.onnx"],
        "fp32_report": reports["model.onnx"], "plan": m16["fp16"], "engine": m16["engine"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/fp16-engines.md")
    ap.add_argument("--skip-r50", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [run("demo detector (test_resnet, 128x128, decode boxes)", demo_model_path("detector"), batch=(1, 1, 8)),
            run("demo detector (decode raw: 15 per-level outputs)", demo_model_path("detector"), decode="raw"),
            run("demo classifier (test_resnet, 64x64)", demo_model_path("classifier"))]
    if not args.skip_r50:
        tmp = Path(tempfile.mkdtemp())
        torch.manual_seed(0)
        r50 = spread_head(randomize_norms(ObjectDetector("resnet50", num_classes=80)))
        save_model(r50, tmp / "r50.pt", input_size=(640, 640))
        del r50
        rows.append(run("resnet50 FCOS (640x640, decode boxes)", tmp / "r50.pt", batch=(1, 1, 2), demo_images=2))
        rows.append(run("resnet50 FCOS (640x640, decode raw)", tmp / "r50.pt", batch=(1, 1, 2), demo_images=2,
                        decode="raw"))
    rtx = import_library("tensorrt-rtx")
    gpu = gpu_info()
    lines = [
        "# FP16 ONNX and engines: sizes, build times, parity",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `scripts/fp16_survey.py` on {platform.machine()} "
        f"({torch.get_num_threads()} CPU threads, {'GPU ' + str(gpu['name']) if gpu else 'no GPU'}): "
        f"torch {torch.__version__}, timm {timm.__version__}, onnx {onnx.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, tensorrt-rtx {rtx.version}, autotimm-deploy {autotimm_deploy.__version__}.",
        "",
        "Each model is exported twice in the same run: `autotimm-export` (FP32 ONNX + FP32 engine) and",
        "`autotimm-export --fp16` (FP16 ONNX with FP32 islands + FP16 engine). Engines are TensorRT-RTX, built",
        "ahead of time for the default targets, with a fresh cache (no cache hits). Batch profile 1:1:8",
        "(resnet50: 1:1:2), static H/W. The resnet50 FCOS is random init with randomised BatchNorm and a",
        "He-normal head (see docs/export-parity.md).",
        "",
        "## Sizes and build times",
        "",
        "| model | FP32 ONNX MB | FP16 ONNX MB | FP32 engine MB | FP16 engine MB | FP32 build s | FP16 build s | FP16 pass s | engine targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eng = [a for a in r["m16"]["artifacts"] if a["role"] == "engine"][0]
        eng32 = [a for a in r["m32"]["artifacts"] if a["role"] == "engine"][0]
        tg16 = ",".join(eng["targets"].get("compute_capabilities", []))
        tg32 = ",".join(eng32["targets"].get("compute_capabilities", []))
        tg = tg16 if tg16 == tg32 else f"FP32: {tg32}; FP16: {tg16}"
        lines.append(f"| {r['label']} | {r['onnx32']:.2f} | {r['onnx16']:.2f} | {r['eng32']:.2f} | {r['eng16']:.2f} | "
                     f"{r['build32']:.1f} | {r['build16']:.1f} | {r['fp16_step']:.1f} | {tg} |")
    lines += ["", "## FP16 parity against PyTorch FP32 (ONNX Runtime CPU)", "",
              "Max abs error over all parity inputs (seeded random, a second batch size, synthetic shapes images);",
              f"FP16 tolerances (atol/rtol) are `FP16_TOLERANCES`: default {FP16_TOLERANCES.atol['']}/"
              f"{FP16_TOLERANCES.rtol['']}, scores {FP16_TOLERANCES.atol['scores']}/{FP16_TOLERANCES.rtol['scores']}, "
              f"boxes {FP16_TOLERANCES.atol['boxes']} px/{FP16_TOLERANCES.rtol['boxes']} (derivation: docs/fp16.md).",
              "Detections: reference detections with score >= 0.3 matched by class and IoU >= 0.9 (goal >= 99%).", "",
              "| model | output | FP32 ONNX max abs | FP16 ONNX max abs | FP16 atol / max abs (headroom) | FP16 result |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        e32 = {o["name"]: o for o in r["fp32_report"]["outputs"]}
        for o in r["fp16_report"]["outputs"]:
            lines.append(f"| {r['label']} | `{o['name']}` | {e32[o['name']]['max_abs']:.2g} | {o['max_abs']:.3g} | "
                         f"{o['atol'] / max(o['max_abs'], 1e-12):.1f}x | {'pass' if o['passed'] else '**FAIL**'} |")
    lines += ["", "| model | FP32 ONNX detections matched | FP16 ONNX detections matched | FP16 max score diff | FP16 verdict | engine |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        d32, d16 = r["fp32_report"].get("detections"), r["fp16_report"].get("detections")
        f = lambda d: f"{d['matched']}/{d['reference']} ({d['matched_fraction']:.1%})" if d else "-"
        lines.append(f"| {r['label']} | {f(d32)} | {f(d16)} | {d16['max_score_diff']:.3g} |" if d16 else
                     f"| {r['label']} | - | - | - |")
        lines[-1] += f" {'PASS' if r['fp16_report']['passed'] else '**FAIL**'} | {r['engine']['parity']['summary']} |"
    lines += ["", "Engines were built but not executed here (no GPU on this machine); where a supported GPU is",
              "present the parity step runs them through Polygraphy and records the verdict in the same table.",
              "", "## FP32 islands and the overflow guard", ""]
    for r in rows:
        p = r["plan"]
        lines.append(f"- {r['label']}: {p['fp16_nodes']} FP16 nodes, {len(p['fp32_nodes'])} FP32 nodes, "
                     f"{p['casts']} casts; kept FP32 by the overflow guard: "
                     f"{', '.join(o['node'] for o in p['overflow_kept_fp32']) or 'none'}.")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
