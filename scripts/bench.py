#!/usr/bin/env python
"""Benchmark runtimes: latency (median/p90/p99), throughput and peak memory per backend and batch
size, network-only and end-to-end (pre-processing + network + decode + NMS), with speed ratios
taken in the same run (backends alternate call by call).  Also the export pipeline's wall time per
step for resnet50 FCOS at 640x640 up to the FP16 engine.  Writes docs/benchmarks.md.

    python scripts/bench.py [--models detector,classifier,r50] [--seconds 3] [--out docs/benchmarks.md]

Backends: PyTorch eager (FP32, CPU), ONNX Runtime on the FP32 ONNX, the FP16 ONNX (fused decode) and, for the demo
models, the INT8 ONNX (its CPU form, U8S8; resnet50-FCOS INT8 speed is in docs/int8.md, `scripts/bench_int8.py`).
With a GPU, ONNX Runtime uses its CUDA provider and the engine is added where it runs; PyTorch
FP16 / torch.compile rows are not implemented yet (no GPU was available to validate them).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import onnx
import onnxruntime
import timm
import torch

import autotimm_deploy
from autotimm_deploy import ObjectDetector, save_model
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import (SPLIT_SEEDS, render_classification_sample, render_detection_sample,
                                         write_classification_split, write_detection_split)
from autotimm_deploy.engines import load
from autotimm_deploy.engines.library import gpu_info
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
from autotimm_deploy.parity.random_init import randomize_norms, spread_head



def pct(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def alternate(calls: Dict[str, Callable[[], object]], seconds: float, min_iters: int, max_iters: int,
              warmup: int = 1) -> Dict[str, List[float]]:
    """Time each call in turn (rotating the order every round) until ``seconds`` per call have passed."""
    for f in calls.values():
        for _ in range(warmup):
            f()
    names = list(calls)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    spent = 0.0
    r = 0
    while r < max_iters and (r < min_iters or spent < seconds * len(names)):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            calls[n]()
            dt = time.perf_counter() - t
            samples[n].append(dt)
            spent += dt
        r += 1
    return samples


_PEAK_SNIPPET = """
import sys
from pathlib import Path
from autotimm_deploy.engines import load
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_classification_sample, render_detection_sample
artifact, backend, precision, kind, size, batch = sys.argv[1:7]
size, batch = int(size), int(batch)
render = render_classification_sample if kind == "classifier" else render_detection_sample
imgs = [render(SPLIT_SEEDS["test"] + k, size=size)[0] for k in range(batch)]
p = load(artifact, backend=backend, precision=None if precision == "-" else precision)
p.predict(imgs)
status = Path("/proc/self/status").read_text()
print(int([l for l in status.splitlines() if l.startswith("VmHWM")][0].split()[1]) / 1024)
"""


def peak_rss_mb(artifact: Path, backend: str, precision: str, kind: str, size: int, batch: int) -> float:
    """Peak resident memory (MB) of a fresh process that loads the artifact and runs one end-to-end call."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _PEAK_SNIPPET, str(artifact), backend, precision, kind, str(size),
                          str(batch)], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def make_images(kind: str, n: int, size: int) -> List[np.ndarray]:
    if kind == "classifier":
        return [render_classification_sample(SPLIT_SEEDS["test"] + k, size=size)[0] for k in range(n)]
    return [render_detection_sample(SPLIT_SEEDS["test"] + k, size=size)[0] for k in range(n)]


def bench_model(label: str, kind: str, model_path: Path, size: int, batches: List[int], seconds: float,
                options: ExportOptions) -> Tuple[List[Dict], Dict]:
    out = Path(tempfile.mkdtemp())
    manifest = export_model(model_path, out, options, progress=None)
    specs = {"pytorch eager FP32": (model_path, "pytorch", "-"), "onnxruntime FP32": (out, "onnxruntime", "fp32"),
             "onnxruntime FP16": (out, "onnxruntime", "fp16")}
    if options.int8:  # the CPU form on CPU (U8S8), the TensorRT form with CUDA
        specs["onnxruntime INT8"] = (out, "onnxruntime", "int8")
    if gpu_info() is not None:
        specs["engine"] = (out, "tensorrt", "-")
    predictors = {}
    for name, (art, be, prec) in specs.items():
        try:
            predictors[name] = load(art, backend=be, precision=None if prec == "-" else prec)
        except Exception as exc:  # e.g. SM90 is not a TensorRT-RTX target: say so, keep going
            print(f"{name} not benchmarked: {exc}")
    rows = []
    for b in batches:
        imgs = make_images(kind, b, size)
        ref = predictors["onnxruntime FP32"]
        feed32, _ = ref.preprocess(imgs, (size, size))
        net, e2e = {}, {}
        for name, p in predictors.items():
            feed = {p.backend.input_name: feed32.astype(p.backend.input_dtype)}
            net[name] = (lambda p=p, feed=feed: p.infer(feed))
            e2e[name] = (lambda p=p: p.predict(imgs, score_thresh=0.05))
        iters = (3, 30) if size >= 512 and b > 1 else (5, 200)
        s_net = alternate(net, seconds, *iters)
        s_e2e = alternate(e2e, seconds, *iters)
        for name in predictors:
            rows.append({
                "model": label, "batch": b, "backend": name,
                "net_med": statistics.median(s_net[name]), "net_p90": pct(s_net[name], 90), "net_p99": pct(s_net[name], 99),
                "e2e_med": statistics.median(s_e2e[name]), "e2e_p90": pct(s_e2e[name], 90), "e2e_p99": pct(s_e2e[name], 99),
                "n": len(s_e2e[name]), "peak_mb": peak_rss_mb(*specs[name], kind, size, b),
            })
            print(rows[-1], flush=True)
    return rows, manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="detector,classifier,r50")
    ap.add_argument("--seconds", type=float, default=3.0, help="time budget per backend and measurement")
    ap.add_argument("--out", default="docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    wanted = args.models.split(",")
    rows: List[Dict] = []
    pipeline = None
    data = Path(tempfile.mkdtemp())  # INT8: calibrated on the synthetic train split, gated on the test split
    if "detector" in wanted:
        int8 = dict(int8=True, calib=str(write_detection_split(data / "dc", "train", 256)),
                    int8_eval=str(write_detection_split(data / "de", "test", 200)))
        rows += bench_model("demo detector (128x128)", "detector", demo_model_path("detector"), 128, [1, 8, 32],
                            args.seconds, ExportOptions(fp16=True, batch=(1, 1, 32), **int8))[0]
    if "classifier" in wanted:
        int8 = dict(int8=True, calib=str(write_classification_split(data / "cc", "train", 256)),
                    int8_eval=str(write_classification_split(data / "ce", "test", 200)))
        rows += bench_model("demo classifier (64x64)", "classifier", demo_model_path("classifier"), 64, [1, 8, 32],
                            args.seconds, ExportOptions(fp16=True, batch=(1, 1, 32), **int8))[0]
    if "r50" in wanted:
        tmp = Path(tempfile.mkdtemp())
        torch.manual_seed(0)
        r50 = spread_head(randomize_norms(ObjectDetector("resnet50", num_classes=80)))
        save_model(r50, tmp / "r50.pt", input_size=(640, 640))
        del r50
        r, pipeline = bench_model("resnet50 FCOS (640x640)", "detector", tmp / "r50.pt", 640, [1, 8], args.seconds,
                                  ExportOptions(fp16=True, cache=False))
        rows += r
    gpu = gpu_info()
    lines = [
        "# Benchmarks",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `scripts/bench.py` on {platform.machine()} "
        f"({torch.get_num_threads()} CPU threads, {gpu['name'] if gpu else 'no GPU'}): torch {torch.__version__}, "
        f"timm {timm.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"autotimm-deploy {autotimm_deploy.__version__}.",
        "",
        "Backends alternate call by call in one process (the order rotates every round), after one warm-up",
        "call each, so ratios compare like with like. *network*: `predictor.infer` on a prepared batch (ONNX",
        "graphs include the fused decode; PyTorch returns raw head outputs). *end-to-end*: `predictor.predict`",
        "on uint8 images: letterbox + normalise, network, decode, class-aware NMS (score > 0.05), boxes mapped",
        "back. Latency in ms (median / p90 / p99 over n calls), throughput in images/s from the median,",
        "*peak RSS MB*: peak resident memory (VmHWM) of a fresh Python process that imports the toolkit, loads",
        "the backend and runs one end-to-end call at this batch size (includes PyTorch, which the toolkit imports).",
        "",
        "| model | batch | backend | network ms (med / p90 / p99) | end-to-end ms (med / p90 / p99) | n | images/s (e2e) | peak RSS MB | e2e speed-up vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["model"], r["batch"]): r for r in rows if r["backend"] == "pytorch eager FP32"}
    for r in rows:
        ms = lambda a, b, c: f"{a * 1e3:.2f} / {b * 1e3:.2f} / {c * 1e3:.2f}"
        speed = base[(r["model"], r["batch"])]["e2e_med"] / r["e2e_med"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {ms(r['net_med'], r['net_p90'], r['net_p99'])} | "
                     f"{ms(r['e2e_med'], r['e2e_p90'], r['e2e_p99'])} | {r['n']} | {r['batch'] / r['e2e_med']:.1f} | "
                     f"{r['peak_mb']:.0f} | {speed:.2f}x |")
    det1 = [r for r in rows if r["model"].startswith("demo detector") and r["batch"] == 1]
    if det1:
        t = {r["backend"]: r["e2e_med"] for r in det1}
        ratio = t["pytorch eager FP32"] / t["onnxruntime FP32"]
        lines += ["", f"Goal (issue 5): ONNX Runtime end-to-end >= 1.5x faster than PyTorch eager end-to-end for the "
                      f"detector at batch 1: **{ratio:.2f}x** ({'met' if ratio >= 1.5 else 'not met'})."]
    lines += ["", "INT8 rows: the CPU form of `--int8` (calibrated on 256 synthetic train images, gated on 200 test "
              "images); accuracy, repair and resnet50-FCOS INT8 speed: [int8.md](int8.md)."]
    lines += ["", "## Export pipeline wall time: resnet50 FCOS at 640x640 up to the FP16 engine", "",
              "The figure a user reproduces, measured side by side against the previous main with a host-speed probe "
              "beside", "it, is in [export-speed.md](export-speed.md) (`scripts/bench_export_speed.py`)."]
    if pipeline is not None:
        steps = pipeline["timings_s"]
        lines += ["", "In this run (in-process, no start-up): " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())
                  + f"; total {sum(steps.values()):.1f} s."]
    if gpu is None:
        lines += ["", "## GPU", "", "No GPU on the machine that produced this table (none was lent to this task), so "
                  "there are no GPU rows here.", "On a machine with an NVIDIA GPU, `scripts/device_check.sh` runs the "
                  "GPU tests and measures PyTorch FP16 eager,", "torch.compile, ONNX Runtime CUDA and engine rows in "
                  "under 10 minutes: [device-check.md](device-check.md)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
