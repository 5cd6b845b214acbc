#!/usr/bin/env python
"""GPU rows for the benchmark: resnet50 FCOS (random init, 80 classes) at 640x640, batch 1 and 8, on the
CUDA GPU of this machine.  Called by ``scripts/device_check.sh``; refuses (exit 3, one line) without a GPU.

    python scripts/device_bench.py --out out/device_check [--seconds 2] [--budget-s 200]

Backends: PyTorch eager FP32 (the baseline of every ratio, measured in the same run), PyTorch eager FP16
(``.half()``), ONNX Runtime CUDA EP on model.onnx and model.fp16.onnx (IO binding, input and outputs on
the GPU), the TensorRT-RTX FP16 engine (only where the GPU is a TensorRT-RTX target; otherwise a row says
why, with no number) and torch.compile (default mode, static shapes; compile seconds recorded apart; run
last so that a slow compile cannot cost the other rows).  Latency: wall time of one call on a prepared
GPU input, with torch.cuda.synchronize() before and after, median and p90 over n calls after warm-up; each
row is time-boxed.  The ONNX graphs include the fused box decode; PyTorch returns the raw head outputs.
Writes <out>/bench.json (after every row, so a killed run keeps what it measured) and <out>/bench.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL, SIZE, BATCHES = "resnet50 FCOS (640x640)", 640, (1, 8)
ROW_CAP_S = 20.0  # hard time box of one row (warm-up apart)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def measure(fn, seconds, warmup=3, min_n=5, max_n=200):
    """Latencies (s) of ``fn`` after ``warmup`` calls, synchronising the GPU around every call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out, start = [], time.perf_counter()
    while len(out) < max_n:
        spent = time.perf_counter() - start
        if spent >= ROW_CAP_S or (len(out) >= min_n and spent >= seconds):
            break
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Bench:
    def __init__(self, out, host):
        self.out, self.host, self.rows = out, host, []

    def add(self, batch, backend, samples=None, note="", **extra):
        row = {"model": MODEL, "batch": batch, "backend": backend, "median_ms": None, "p90_ms": None, "n": 0,
               "speedup_vs_fp32_eager": None, "note": note, **extra}
        if samples:
            row.update(median_ms=statistics.median(samples) * 1e3, p90_ms=pct(samples, 90) * 1e3, n=len(samples))
            base = next((r for r in self.rows if r["batch"] == batch and r["backend"] == "pytorch eager FP32"), row)
            if base["median_ms"]:  # the baseline row itself: 1.00x
                row["speedup_vs_fp32_eager"] = base["median_ms"] / row["median_ms"]
        self.rows.append(row)
        print(f"  batch {batch} {backend}: " + (f"median {row['median_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms, "
                                                 f"n {row['n']}" if samples else "no number") + (f" ({note})" if note else ""),
              flush=True)
        self.write()

    def write(self, done=False):
        data = {"host": self.host, "rows": self.rows, "complete": done}
        tmp = self.out / "bench.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.out / "bench.json")
        lines = ["# GPU rows: resnet50 FCOS at 640x640 (scripts/device_bench.py)", "", f"Host: {self.host['line']}", "",
                 "Latency of one call on a prepared GPU input (torch.cuda.synchronize() around each call), after",
                 "warm-up; speed-up = PyTorch eager FP32 median / this median (same batch, same run).", "",
                 "| model | batch | backend | median ms | p90 ms | n | speed-up | note |", "|---|---|---|---|---|---|---|---|"]
        f = lambda v, fmt: "-" if v is None else fmt.format(v)
        for r in self.rows:
            lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {f(r['median_ms'], '{:.2f}')} | "
                         f"{f(r['p90_ms'], '{:.2f}')} | {r['n']} | {f(r['speedup_vs_fp32_eager'], '{:.2f}x')} | {r['note']} |")
        if not done:
            lines += ["", "(incomplete: the run stopped before every row was measured)"]
        (self.out / "bench.md").write_text("\n".join(lines) + "\n")


def host_probe():
    import onnxruntime as ort

    major, minor = torch.cuda.get_device_capability(0)
    host = {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}", "sm": f"SM{major}{minor}",
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "onnxruntime": ort.__version__,
            "onnxruntime_providers": ort.get_available_providers(), "cudnn_benchmark": True}
    try:
        import tensorrt_rtx

        host["tensorrt_rtx"] = tensorrt_rtx.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        host["tensorrt_rtx"] = f"not importable ({first_line(exc)})"
    host["line"] = (f"{host['gpu']} (compute capability {host['compute_capability']}), torch {host['torch']} "
                    f"(CUDA {host['torch_cuda']}), onnxruntime {host['onnxruntime']} "
                    f"({', '.join(host['onnxruntime_providers'])}), tensorrt_rtx {host['tensorrt_rtx']}")
    return host


def ort_call(path, x):
    """A zero-argument call running ``path`` in ONNX Runtime's CUDA EP on the GPU tensor ``x`` (IO binding)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"CUDAExecutionProvider did not load (session providers {sess.get_providers()})")
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    xin = x.to(torch.float16 if dtype == np.float16 else torch.float32).contiguous()
    io = sess.io_binding()
    io.bind_input(inp.name, "cuda", 0, dtype, list(xin.shape), xin.data_ptr())
    for o in sess.get_outputs():
        io.bind_output(o.name, "cuda")

    def call():
        sess.run_with_iobinding(io)
        io.synchronize_outputs()
    call.keep = (sess, xin, io)  # keep the session and the input alive
    return call


def engine_call(path, x):
    """A zero-argument call executing the engine on device buffers (the first call allocates them)."""
    from autotimm_deploy.engines.backends import EngineBackend

    be = EngineBackend(path)
    be.infer({be.input_name: x.cpu().numpy().astype(be.input_dtype)})

    def call():
        if not be.context.execute_async_v3(be.stream.cuda_stream):
            raise RuntimeError("execute_async_v3 failed")
        be.stream.synchronize()
    call.keep = be
    return call


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for bench.json and bench.md")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row (capped at 20)")
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop starting new work after this many seconds")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_bench: no GPU (torch.cuda.is_available() is False): nothing to measure")
        return 3
    t0 = time.time()
    left = lambda: args.budget_s - (time.time() - t0)
    from autotimm_deploy import ObjectDetector, save_model
    from autotimm_deploy.engines import RTX_TARGETS, check_engine, engine_runnable
    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    host = host_probe()
    print(f"host: {host['line']}", flush=True)
    bench = Bench(out, host)
    torch.manual_seed(0)
    model = ObjectDetector("resnet50", num_classes=80).eval()
    work = Path(tempfile.mkdtemp(prefix="device_bench_"))
    save_model(model, work / "r50.pt", input_size=(SIZE, SIZE))
    rtx_target = host["sm"] in RTX_TARGETS
    export_dir, export_err, t = work / "export", None, time.time()
    try:  # check=False: parity runs on the CPU and is not what this script measures
        export_model(work / "r50.pt", export_dir, ExportOptions(fp16=True, check=False, cache=False,
                                                                engine="tensorrt-rtx" if rtx_target else "none"), progress=None)
    except Exception as exc:  # noqa: BLE001 - every row below says what is missing
        export_err = first_line(exc)
    host["export_s"] = round(time.time() - t, 1)
    print(f"export ({'with' if rtx_target else 'without'} engine): {host['export_s']} s"
          + (f", failed: {export_err}" if export_err else ""), flush=True)
    model = model.cuda()
    m16 = copy.deepcopy(model).half()
    xs = {b: torch.randn(b, 3, SIZE, SIZE, device="cuda") for b in BATCHES}
    have_cuda_ep = "CUDAExecutionProvider" in host["onnxruntime_providers"]
    with torch.no_grad():
        backends = [("pytorch eager FP32", lambda b: (lambda: model(xs[b]))),
                    ("pytorch eager FP16", lambda b: (lambda x16=xs[b].half(): m16(x16)))]
        for name, fname in (("onnxruntime CUDA FP32", "model.onnx"), ("onnxruntime CUDA FP16", "model.fp16.onnx")):
            if not have_cuda_ep:
                backends.append((name, "CUDAExecutionProvider not in onnxruntime.get_available_providers()"))
            elif export_err or not (export_dir / fname).exists():
                backends.append((name, f"no {fname}: export failed ({export_err})"))
            else:
                backends.append((name, lambda b, p=export_dir / fname: ort_call(p, xs[b])))
        eng = export_dir / "model.fp16.engine"
        if not rtx_target:
            backends.append(("TensorRT-RTX engine FP16", f"not a TensorRT-RTX target ({host['sm']} = {host['gpu']}; "
                                                         f"targets {', '.join(RTX_TARGETS)})"))
        elif not eng.exists():
            backends.append(("TensorRT-RTX engine FP16", f"no engine: export failed ({export_err})"))
        else:
            ok, why = engine_runnable(check_engine(eng))
            backends.append(("TensorRT-RTX engine FP16", (lambda b: engine_call(eng, xs[b])) if ok else why))
        for name, make in backends:
            for b in BATCHES:
                if isinstance(make, str):
                    bench.add(b, name, note=make)
                elif left() < 10:
                    bench.add(b, name, note=f"skipped: time budget ({args.budget_s:.0f} s) spent")
                else:
                    try:
                        bench.add(b, name, measure(make(b), args.seconds))
                    except Exception as exc:  # noqa: BLE001 - the error line is the row
                        bench.add(b, name, note=f"failed: {first_line(exc)}")
        compiled = None
        for b in BATCHES:
            if left() < 30:
                bench.add(b, "torch.compile FP32", note=f"skipped: time budget ({args.budget_s:.0f} s) spent")
                continue
            try:
                compiled = compiled or torch.compile(model, dynamic=False)
                torch.cuda.synchronize()
                t = time.perf_counter()
                compiled(xs[b])
                torch.cuda.synchronize()
                cs = time.perf_counter() - t
                bench.add(b, "torch.compile FP32", measure(lambda: compiled(xs[b]), args.seconds, warmup=2),
                          note=f"compile {cs:.1f} s (default mode)", compile_s=round(cs, 2))
            except Exception as exc:  # noqa: BLE001 - the error line is the row
                bench.add(b, "torch.compile FP32", note=f"compile failed: {first_line(exc)}")
    bench.write(done=True)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
