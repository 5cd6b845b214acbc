#!/usr/bin/env python
"""Export-pipeline speed, side by side: two commits alternate on the same machine in one run.

    python scripts/bench_export_speed.py --old 69f67c5 --new HEAD --rounds 2 --out docs/export-speed.md

For each round, the old and the new commit (git worktrees in a temporary folder, imported through
PYTHONPATH ahead of the installed package) run the same command in a fresh process, in alternating order:

    autotimm-export r50.pt --fp16 --no-cache --out OUT          (resnet50 FCOS, 80 classes, 640x640)

timed with /usr/bin/time (wall, user CPU, peak RSS of the process), plus ``autotimm-export --help``.
The model file is written once (seeded random init, ``save_model``) and shared.  A host-speed probe is
measured in the same run, so that absolute seconds can be compared across machines: ONNX Runtime FP32
latency of that model at batch 1 (median of 5 after one warm-up) and numpy float32 GEMM GFLOP/s.
Reports medians over rounds and new/old ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
#: The tables above this line are written by the script; the text below it is kept as it is.
KEEP_MARKER = "<!-- measured tables end here; the text below is kept by scripts/bench_export_speed.py -->"


def _worktree(rev: str, where: Path) -> Path:
    path = where / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                   capture_output=True)
    return path


def _timed(cmd: List[str], env: Dict[str, str], log: Path) -> Dict[str, float]:
    """Run ``cmd`` in ``log``'s folder: ``python -m`` puts the working directory first on sys.path, which
    must not be a checkout (the commit under test comes from PYTHONPATH)."""
    fmt = "%e %U %S %M"
    stats = log.with_suffix(".time")
    with open(log, "w") as fh:
        proc = subprocess.run(["/usr/bin/time", "-f", fmt, "-o", str(stats), *cmd], env=env, stdout=fh,
                              stderr=subprocess.STDOUT, cwd=log.parent)
    wall, user, sys_, rss_kb = stats.read_text().split()[-4:]
    return {"rc": proc.returncode, "wall_s": float(wall), "user_s": float(user), "sys_s": float(sys_),
            "peak_rss_mb": int(rss_kb) / 1024}


def _silent_gaps(log: Path) -> float:
    """Longest time between two progress lines (the lines start with the elapsed seconds)."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        head = line.strip().split("s ", 1)[0]
        try:
            times.append(float(head))
        except ValueError:
            continue
    return max((b - a for a, b in zip(times, times[1:])), default=float("nan"))


def host_probe(model_path: Path, work: Path) -> Dict[str, float]:
    import numpy as np
    import onnxruntime as ort

    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

    export_model(model_path, work / "probe", ExportOptions(engine="none", check=False), progress=None)
    sess = ort.InferenceSession(str(work / "probe" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 640, 640), dtype=np.float32)
    sess.run(None, {"images": x})
    lat = []
    for _ in range(5):
        t = time.perf_counter()
        sess.run(None, {"images": x})
        lat.append((time.perf_counter() - t) * 1e3)
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    gflops = 5 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9
    return {"ort_fp32_r50_fcos_640_b1_ms": statistics.median(lat), "numpy_sgemm_gflops": gflops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default="69f67c5", help="baseline commit (default: main as landed at stop 17)")
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "export-speed.md")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from autotimm_deploy import ObjectDetector, save_model

    tmp = Path(tempfile.mkdtemp(prefix="export-speed-"))
    trees = {"old": _worktree(args.old, tmp), "new": _worktree(args.new, tmp)}
    revs = {k: subprocess.run(["git", "-C", str(v), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() for k, v in trees.items()}
    torch.manual_seed(0)
    model_path = tmp / "r50.pt"
    save_model(ObjectDetector("resnet50", num_classes=80).eval(), model_path, input_size=(640, 640))
    probe = host_probe(model_path, tmp)
    print(f"host probe: {probe}", flush=True)
    runs: Dict[str, List[Dict]] = {"old": [], "new": []}
    helps: Dict[str, List[float]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
            env = {**os.environ, "PYTHONPATH": str(trees[which])}
            out = tmp / f"{which}-{r}"
            log = tmp / f"{which}-{r}.log"
            res = _timed([sys.executable, "-m", "autotimm_deploy.cli.export", str(model_path), "--fp16", "--no-cache",
                          "--out", str(out)], env, log)
            res["longest_silence_s"] = _silent_gaps(log)
            res["folder_mb"] = sum(f.stat().st_size for f in out.glob("*") if f.is_file()) / 1e6 if out.exists() else 0
            runs[which].append(res)
            h = _timed([sys.executable, "-m", "autotimm_deploy.cli.export", "--help"], env, tmp / f"{which}-{r}-help.log")
            helps[which].append(h["wall_s"])
            where = subprocess.run([sys.executable, "-c", "import autotimm_deploy, os; print(os.path.dirname("
                                    "os.path.dirname(autotimm_deploy.__file__)))"], env=env, cwd=tmp,
                                   capture_output=True, text=True).stdout.strip()
            if Path(where).resolve() != trees[which].resolve():
                raise SystemExit(f"{which}: imported autotimm_deploy from {where}, not {trees[which]}")
            print(f"round {r} {which} {revs[which]}: {res} --help {h['wall_s']:.2f}s", flush=True)
            if res["rc"] != 0:
                print(log.read_text()[-3000:], file=sys.stderr)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "user_s", "peak_rss_mb", "longest_silence_s",
                                                                 "folder_mb")} for k, v in runs.items()}
    for k in med:
        med[k]["help_s"] = statistics.median(helps[k])
    lines = [
        "# Export pipeline speed, side by side",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python scripts/bench_export_speed.py --old {args.old} --new {args.new} "
        f"--rounds {args.rounds}` on {platform.machine()} ({os.cpu_count()} CPUs, no GPU), torch {torch.__version__}.",
        f"Old = `{revs['old']}`, new = `{revs['new']}`, alternating in one run; each figure is the median over "
        f"{args.rounds} rounds of a fresh `python -m autotimm_deploy.cli.export r50.pt --fp16 --no-cache` "
        "(resnet50 FCOS, 80 classes, 640x640, default options: batch 1:1:8, parity, TensorRT-RTX engine built ahead "
        "of time, not executed).",
        "",
        f"Host-speed probe (same run): ONNX Runtime FP32 resnet50-FCOS 640 batch 1: "
        f"**{probe['ort_fp32_r50_fcos_640_b1_ms']:.0f} ms** (median of 5); numpy float32 GEMM "
        f"{probe['numpy_sgemm_gflops']:.0f} GFLOP/s.",
        "",
        "| | old | new | new / old |",
        "|---|---|---|---|",
    ]
    for m, label in (("wall_s", "wall time s"), ("user_s", "user CPU s"), ("peak_rss_mb", "peak RSS MB"),
                     ("longest_silence_s", "longest gap between progress lines s"), ("folder_mb", "export folder MB"),
                     ("help_s", "`--help` s")):
        o, n = med["old"][m], med["new"][m]
        lines.append(f"| {label} | {o:.1f} | {n:.1f} | {n / o:.2f} |" if o else f"| {label} | {o} | {n} | - |")
    lines += ["", "Per run:", "", "| round | commit | wall s | user s | peak RSS MB | exit |", "|---|---|---|---|---|---|"]
    for k in ("old", "new"):
        for r, x in enumerate(runs[k]):
            lines.append(f"| {r} | {revs[k]} | {x['wall_s']:.1f} | {x['user_s']:.1f} | {x['peak_rss_mb']:.0f} | {x['rc']} |")
    kept = ""  # the written analysis below the tables survives a re-run
    if args.out.exists() and KEEP_MARKER in args.out.read_text():
        kept = args.out.read_text().split(KEEP_MARKER, 1)[1]
    args.out.write_text("\n".join(lines) + "\n\n" + KEEP_MARKER + (kept or "\n"))
    if args.json:
        args.json.write_text(json.dumps({"probe": probe, "runs": runs, "help": helps, "revs": revs}, indent=2))
    for t in trees.values():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(t)], capture_output=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
