"""Load/unload soak: create and close a runtime backend N times and measure memory growth after warm-up.

    python scripts/load_unload.py                       # n=1000 for every target, exports the demo models
    python scripts/load_unload.py --n 300 --targets ort-detector predictor-detector --json out.json
    python scripts/load_unload.py --export-dir DIR      # reuse an export (DIR/classifier, DIR/detector)

Targets: ``ort-classifier`` / ``ort-detector`` (an :class:`OnnxRuntimeBackend` on the demo model's FP32
ONNX: session created, one inference, ``close()``), ``predictor-detector`` (``load(model.onnx)`` ->
``Predictor.predict`` on one image, then dropped) and ``leak-control`` (the ``ort-classifier`` loop
plus a deliberately leaked, touched 64 KiB buffer per load: the positive control; it must fail the
budget).  Each target runs in its own fresh interpreter.

Memory is VmRSS from ``/proc/self/status`` after ``gc.collect()``; ``tracemalloc`` (``--tracemalloc``)
adds the Python-level heap growth.  The verdict per target: growth from the end of warm-up to the end
of the loop must stay under ``--budget-mib`` (default :data:`BUDGET_MIB`).  Exit status 1 when a
non-control target exceeds the budget or the control does not.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

#: Growth allowed from the end of warm-up to the end of the loop, whatever n (up to 1000).  Measured on a
#: 2-core CPU machine with onnxruntime 1.31 / torch 2.14 (docs/reliability.md): the real targets stay
#: within about 1 MiB over 1000 loads; a leak of 16 KiB per load (a small session object or one
#: output buffer kept per load) crosses 16 MiB by 1000 loads, and the 64 KiB control by ~260 loads.
BUDGET_MIB = 16.0
LEAK_KIB = 64
TARGETS = ("ort-classifier", "ort-detector", "predictor-classifier", "predictor-detector", "leak-control")


def rss_kib() -> int:
    """Resident set size of this process in KiB (``VmRSS`` from ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def load_unload_growth(make: Callable[[], object], n: int, warmup: int, use_tracemalloc: bool = False) -> Dict:
    """Call ``make()`` ``n`` times; each call creates a backend, uses it and closes it (and returns
    nothing worth keeping).  RSS (KiB) is read before the loop, after ``warmup`` iterations and at the
    end, each after ``gc.collect()``; ``growth_kib`` is end minus after-warm-up."""
    if not 0 < warmup < n:
        raise ValueError(f"need 0 < warmup < n, got warmup={warmup}, n={n}")
    import tracemalloc

    gc.collect()
    start = rss_kib()
    t0 = time.perf_counter()
    py_warm = py_end = None
    for i in range(n):
        make()
        if i + 1 == warmup:
            gc.collect()
            warm = rss_kib()
            t_warm = time.perf_counter()
            if use_tracemalloc:
                tracemalloc.start()
                py_warm = tracemalloc.get_traced_memory()[0]
    gc.collect()
    end = rss_kib()
    seconds = time.perf_counter() - t0
    if use_tracemalloc:
        py_end = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    out = {"iterations": n, "warmup": warmup, "rss_start_kib": start, "rss_after_warmup_kib": warm,
           "rss_end_kib": end, "growth_kib": end - warm,
           "growth_per_iteration_kib": round((end - warm) / (n - warmup), 3),
           "seconds": round(seconds, 2), "ms_per_iteration": round(1000 * (time.perf_counter() - t_warm) / (n - warmup), 2)}
    if use_tracemalloc:
        out["python_heap_growth_kib"] = round((py_end - py_warm) / 1024, 1)
    return out


def make_factory(target: str, export_dir: Path) -> Callable[[], None]:
    """The ``make`` of one target: create, run once, close."""
    import numpy as np

    from autotimm_deploy.engines.backends import OnnxRuntimeBackend

    cpu = ["CPUExecutionProvider"]
    kind = "detector" if "detector" in target else "classifier"
    onnx_path = export_dir / kind / "model.onnx"
    size = 128 if kind == "detector" else 64
    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}

    if target in ("ort-classifier", "ort-detector", "leak-control"):
        leaked = []

        def make() -> None:
            be = OnnxRuntimeBackend(onnx_path, cpu, threads=1)
            be.infer(feed)
            be.close()
            if target == "leak-control":  # the deliberate leak: a touched 64 KiB buffer kept per load
                leaked.append(np.ones(LEAK_KIB * 256, np.float32))

        return make
    if target in ("predictor-classifier", "predictor-detector"):
        from autotimm_deploy.demo.shapes import render_classification_sample, render_detection_sample
        from autotimm_deploy.engines import load

        image = (render_detection_sample(2_000_000, size=128)[0] if kind == "detector"
                 else render_classification_sample(2_000_000, size=64)[0])

        def make() -> None:
            p = load(onnx_path, backend="onnxruntime", providers=cpu)
            p.predict(image, score_thresh=0.3)
            p.backend.close()

        return make
    raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")


def export_demo(export_dir: Path) -> None:
    from autotimm_deploy.demo import demo_model_path
    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

    for kind in ("classifier", "detector"):
        if not (export_dir / kind / "manifest.json").exists():
            export_model(demo_model_path(kind), export_dir / kind, ExportOptions(fp16=True, engine="none", check=False),
                         progress=None)


def measure(specs: Sequence[Tuple[str, int]], export_dir: Path, warmup: int = 50, budget_mib: float = BUDGET_MIB,
            use_tracemalloc: bool = False, timeout: float = 1800) -> List[Dict]:
    """Measure ``(target, n)`` pairs one after another in ONE fresh interpreter (so that nothing else's
    memory interferes; each target's growth counts from the end of its own warm-up, so put
    ``leak-control`` last).  Adds ``target``, ``budget_kib`` and ``within_budget`` to each result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--export-dir", str(export_dir), "--warmup", str(warmup),
           "--child", *[f"{t}:{n}" for t, n in specs]] + (["--tracemalloc"] if use_tracemalloc else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"load/unload child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (target, _), r in zip(specs, results):
        r["target"] = target
        r["budget_kib"] = int(budget_mib * 1024)
        r["within_budget"] = r["growth_kib"] < r["budget_kib"]
    return results


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    ap.add_argument("--export-dir", type=Path, default=None, help="an export of the demo models (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap after warm-up (slower)")
    ap.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)  # TARGET:N ... in this interpreter
    args = ap.parse_args(argv)
    if args.child:
        out = []
        for spec in args.child:
            target, n = spec.rsplit(":", 1)
            out.append(load_unload_growth(make_factory(target, args.export_dir), int(n), args.warmup,
                                          args.tracemalloc))
        print(json.dumps(out))
        return 0
    import tempfile

    export_dir = args.export_dir or Path(tempfile.mkdtemp(prefix="load-unload-"))
    export_demo(export_dir)
    results, ok = [], True
    for target in args.targets:  # one fresh interpreter per target
        r = measure([(target, args.n)], export_dir, args.warmup, args.budget_mib, args.tracemalloc)[0]
        results.append(r)
        good = r["within_budget"] != (target == "leak-control")
        ok &= good
        print(f"{target:20s} n={r['iterations']} growth {r['growth_kib']:7d} KiB "
              f"({r['growth_per_iteration_kib']:.2f} KiB/iter; budget {r['budget_kib']} KiB) "
              f"rss {r['rss_start_kib']}->{r['rss_after_warmup_kib']}->{r['rss_end_kib']} KiB "
              f"{r['seconds']:.1f} s  {'ok' if good else 'FAIL'}"
              + (f"  python heap +{r['python_heap_growth_kib']} KiB" if "python_heap_growth_kib" in r else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
