#!/usr/bin/env python
"""Serving, measured: throughput and p50/p99 latency through a real Triton server (the generated CPU repository,
Triton 2.51 from the nvidia-pytriton wheel) against the in-process Predictor, same model, same images, same machine,
in one run.  Writes the tables at the top of docs/serving.md (the text below its marker is kept).

    python scripts/bench_serving.py [--requests 200] [--out docs/serving.md]

Rows per model: the in-process ``engines.load(export).predict([image])`` called back to back (one image per call:
letterbox, ONNX Runtime FP32, decode/NMS); Triton with one client sending one encoded image per request (the same
work plus encoding, HTTP, the ensemble's three steps and their copies: the overhead ratio is this row's p50 over the
Predictor's); Triton with 8 concurrent clients (dynamic batching: throughput under load); and, for reference, the
Predictor on batches of 8.  Triton's ``perf_analyzer`` is not used: the ``perf-analyzer`` package on PyPI is a
0.1.0 placeholder without the binary (checked), so the clients are the project's own bounded ones
(``autotimm_deploy.serve.client.run_load``), each request with a timeout, every failure counted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEEP_MARKER = "<!-- measured tables end here; the text below is kept by scripts/bench_serving.py -->"


def models(work: Path) -> Dict[str, Dict]:
    """name -> export folder and sample images: the two demo models and a resnet18-FCOS at 320 (random weights)."""
    import torch

    from autotimm_deploy import ObjectDetector, save_model
    from autotimm_deploy.demo import demo_model_path
    from autotimm_deploy.demo.shapes import render_classification_sample, render_detection_sample
    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
    from autotimm_deploy.parity.random_init import randomize_norms

    torch.manual_seed(0)
    r18 = randomize_norms(ObjectDetector("resnet18", num_classes=3, fpn_channels=64, num_convs=2)).eval()
    save_model(r18, work / "resnet18_fcos.pt", class_names=["a", "b", "c"], input_size=(320, 320))
    out = {}
    for name, path, images in (
            ("demo_detector", demo_model_path("detector"),
             [render_detection_sample(3_000_000 + i, size=128)[0] for i in range(16)]),
            ("demo_classifier", demo_model_path("classifier"),
             [render_classification_sample(3_000_000 + i)[0] for i in range(16)]),
            ("resnet18_fcos", work / "resnet18_fcos.pt",
             [render_detection_sample(3_000_000 + i, size=320)[0] for i in range(16)])):
        export_model(path, work / name, ExportOptions(engine="none", check=False), progress=None)
        out[name] = {"export": work / name, "images": images}
    return out


def predictor_rows(export: Path, images: List[np.ndarray], requests: int) -> Dict[str, Dict]:
    from autotimm_deploy.engines import load

    pred = load(export)
    for im in images[:4]:
        pred.predict([im])  # warm-up
    lat = []
    t0 = time.perf_counter()
    for r in range(requests):
        t = time.perf_counter()
        pred.predict([images[r % len(images)]])
        lat.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - t0
    rows = {"Predictor, in process, 1 image per call": _row(lat, requests / wall, 0)}
    lat8 = []
    t0 = time.perf_counter()
    for r in range(requests // 8):
        t = time.perf_counter()
        pred.predict([images[(r * 8 + j) % len(images)] for j in range(8)])
        lat8.append((time.perf_counter() - t) * 1000)
    rows["Predictor, in process, batches of 8"] = _row(lat8, (requests // 8) * 8 / (time.perf_counter() - t0), 0)
    return rows


def triton_rows(server, name: str, images: List[np.ndarray], requests: int) -> Dict[str, Dict]:
    from autotimm_deploy.serve.client import TritonModelClient, run_load

    make = lambda: TritonModelClient(server.http_url, name, timeout_s=120)
    run_load(make, images, clients=1, requests=8)  # warm-up
    rows = {}
    for clients, label in ((1, "Triton, 1 client, 1 image per request"), (8, "Triton, 8 clients, 1 image per request")):
        res = run_load(make, images, clients=clients, requests=max(requests // clients, 8))
        rows[label] = _row(res.latencies_ms, res.throughput, len(res.failures))
    return rows


def _row(lat: List[float], throughput: float, failures: int) -> Dict:
    return {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "throughput": throughput,
            "requests": len(lat), "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per row (default 200)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serving.md")
    args = ap.parse_args()

    from autotimm_deploy.serve.repository import TritonOptions, write_repository
    from autotimm_deploy.serve.server import LocalTriton

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    t0 = time.time()
    print("exporting...", file=sys.stderr, flush=True)
    ms = models(work)
    repo = work / "repo"
    for name, m in ms.items():
        write_repository(m["export"], repo, TritonOptions(network="python", max_queue_delay_us=2000))
    results = {}
    print("starting tritonserver...", file=sys.stderr, flush=True)
    with LocalTriton(repo) as server:
        for name, m in ms.items():
            print(f"measuring {name}...", file=sys.stderr, flush=True)
            rows = predictor_rows(m["export"], m["images"], args.requests)
            rows.update(triton_rows(server, name, m["images"], args.requests))
            results[name] = rows
    lines = ["# Serving with Triton: measured", "",
             f"`scripts/bench_serving.py --requests {args.requests}` on {platform.machine()} with {os.cpu_count()} "
             f"CPU cores, {time.strftime('%Y-%m-%d')}, in one run ({time.time() - t0:.0f} s): tritonserver 2.51 (the "
             "nvidia-pytriton 0.7.0 wheel) serving the generated CPU repository (`--network python`: ONNX Runtime FP32 "
             "on the Python backend, one instance per step, `max_queue_delay_microseconds` 2000) against the "
             "in-process Predictor on the same FP32 ONNX. Latency is per request as the client sees it; throughput is "
             "images per second over the whole row. The overhead ratio is a row's p50 over the in-process 1-image p50.",
             ""]
    for name, rows in results.items():
        base = rows["Predictor, in process, 1 image per call"]["p50"]
        lines += [f"## {name}", "", "| path | requests | failed | p50 ms | p99 ms | images/s | p50 / in-process |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, r in rows.items():
            lines.append(f"| {label} | {r['requests']} | {r['failures']} | {r['p50']:.1f} | {r['p99']:.1f} | "
                         f"{r['throughput']:.1f} | {r['p50'] / base:.2f}x |")
        lines.append("")
    kept = None
    if args.out.exists() and KEEP_MARKER in args.out.read_text():
        kept = args.out.read_text().split(KEEP_MARKER, 1)[1]
    args.out.write_text("\n".join(lines) + "\n" + KEEP_MARKER + (kept or "\n"))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
