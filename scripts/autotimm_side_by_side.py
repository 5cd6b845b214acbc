#!/usr/bin/env python
"""AutoTimm's own export path and autotimm-deploy, side by side on the same AutoTimm checkpoints.

    .venv/bin/python scripts/autotimm_side_by_side.py [--write docs/autotimm.md]

For each fixture (checkpoints real AutoTimm wrote, tests/fixtures/autotimm/) it measures, in one run:

A. AutoTimm's CLI, ``python -m autotimm.export.export_onnx --checkpoint CKPT --task-class ...`` (what its docs
   say to run), offline (``HF_HUB_OFFLINE=1``: no hub here): does it produce an ONNX, in how many seconds;
B. AutoTimm's library by hand, the way that works offline: the task class built with ``pretrained=False`` and
   ``compile_model=False``, the ``_orig_mod.`` keys stripped, ``autotimm.export.export_to_onnx``; the largest
   difference of its ONNX (ONNX Runtime) from AutoTimm's forward on 4 test images;
C. AutoTimm's TensorRT converter (``autotimm.flow.tensorrt_convert.convert``) on B's ONNX, with TensorRT-RTX
   standing in for ``tensorrt`` (same Python API; full TensorRT does not install here), as it is and with the
   removed ``EXPLICIT_BATCH`` flag shimmed in, to see the next obstacle;
D. ``autotimm-export CKPT --fp16 --class-names FILE`` (TensorRT-RTX engine included), and the largest difference
   of its raw-output ONNX from AutoTimm's forward on the same images.

Each step runs in its own process with a timeout.  With ``--write`` the table replaces the part of the file
between ``<!-- side-by-side:start -->`` and ``<!-- side-by-side:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/autotimm"
CASES = ("fcos_compiled_full", "yolox_plain_full", "classifier_compiled_full")
PY = sys.executable

# B: AutoTimm's library, offline-safe; prints JSON {"seconds", "outputs", "bytes", "max_abs_err"}
_LIBRARY = r"""
import json, sys, time, numpy as np, onnxruntime as ort, torch
sys.path.insert(0, sys.argv[3])
from conftest import _autotimm_model
from autotimm.export import export_to_onnx
name, out = sys.argv[1], sys.argv[2]
model = _autotimm_model(name)
size = 128 if hasattr(model, "detection_arch") else 64
x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, size, size), dtype=np.float32))
t = time.time()
export_to_onnx(model, out, torch.randn(1, 3, size, size))
seconds = time.time() - t
sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
with torch.no_grad():
    ref = model(x)
ref = [t for group in ref if group is not None for t in group] if isinstance(ref, tuple) else [ref]
err = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref)) if len(got) == len(ref) else None
import os
size = sum(os.path.getsize(p) for p in (out, out + ".data") if os.path.exists(p))  # weights may be external
print(json.dumps({"seconds": seconds, "outputs": [o.name for o in sess.get_outputs()], "bytes": size,
                  "external_data": os.path.exists(out + ".data"),
                  "max_abs_err": err, "ref_outputs": len(ref)}))
"""

# C: AutoTimm's TensorRT converter with tensorrt_rtx as tensorrt; argv[3] == "shim" gives the network-flag enum
# the EXPLICIT_BATCH member that TensorRT 10 deprecated and TensorRT 11 / RTX removed (as STRONGLY_TYPED, which
# these libraries accept and ignore), to see what the converter does next
_TRT = r"""
import sys, types, tensorrt_rtx
sys.modules["tensorrt"] = tensorrt_rtx
if sys.argv[3] == "shim":
    flags = tensorrt_rtx.NetworkDefinitionCreationFlag
    tensorrt_rtx.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=flags.STRONGLY_TYPED)
from autotimm.flow.tensorrt_convert import convert
convert(sys.argv[1], sys.argv[2])
print("built")
"""

# D's comparison: autotimm-deploy's raw ONNX vs AutoTimm's forward on the same inputs
_COMPARE = r"""
import json, sys, numpy as np, onnxruntime as ort, torch
sys.path.insert(0, sys.argv[3])
from conftest import _autotimm_model
model = _autotimm_model(sys.argv[1])
size = 128 if hasattr(model, "detection_arch") else 64
x = np.random.default_rng(0).standard_normal((4, 3, size, size), dtype=np.float32)
sess = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))
with torch.no_grad():
    ref = model(torch.from_numpy(x))
if isinstance(ref, tuple):
    keys = ("cls", "bbox", "ctr")
    ref = {f"{k}_p{i + 3}": t for k, group in zip(keys, ref) if group is not None for i, t in enumerate(group)}
else:
    ref = {"logits": ref}
print(json.dumps({"max_abs_err": max(float(np.abs(got[k] - v.numpy()).max()) for k, v in ref.items()),
                  "compared": len(ref)}))
"""


def _run(args, timeout, env=None):
    t = time.time()
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
        return res.returncode, time.time() - t, res.stdout, res.stderr
    except subprocess.TimeoutExpired:
        return None, time.time() - t, "", f"timed out after {timeout} s"


def _last_error(text: str) -> str:
    """The last line that says error, without the library's log prefix."""
    lines = [re.sub(r"^(\[[^]]*\] )+", "", ln.strip()) for ln in text.strip().splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else "")


def _short(line: str, n: int = 140) -> str:
    return line if len(line) <= n else line[:n].rsplit(" ", 1)[0] + " ..."


def measure(name: str, work: Path, index: dict) -> dict:
    spec = index[name]
    ckpt = FIXTURES / spec["file"]
    task = "ObjectDetector" if spec["task"] == "detector" else "ImageClassifier"
    row = {"fixture": name, "arch": spec.get("arch", spec["task"])}
    helpers = str(ROOT / "tests/autotimm")
    # A
    code, sec, out, err = _run([PY, "-m", "autotimm.export.export_onnx", "--checkpoint", str(ckpt), "--output",
                                str(work / f"{name}.cli.onnx"), "--task-class", task,
                                "--input-size", str(spec["image_size"])], 900, {"HF_HUB_OFFLINE": "1"})
    row["cli"] = {"ok": code == 0 and (work / f"{name}.cli.onnx").exists(), "seconds": round(sec, 1),
                  "error": "" if code == 0 else _last_error(err + out)}
    # B
    lib_onnx = work / f"{name}.lib.onnx"
    code, sec, out, err = _run([PY, "-c", _LIBRARY, name, str(lib_onnx), helpers], 900)
    lib = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
    row["library"] = {"ok": code == 0, "error": "" if code == 0 else _last_error(err), **lib}
    # C
    if code == 0:
        row["trt"] = {}
        for mode in ("as is", "shim"):
            code, sec, out, err = _run([PY, "-c", _TRT, str(lib_onnx), str(work / f"{name}.engine"), mode], 900)
            row["trt"][mode] = {"ok": code == 0 and "built" in out, "seconds": round(sec, 1),
                                "error": "" if code == 0 else _last_error(err + out)}
    else:
        row["trt"] = {"as is": {"ok": False, "error": "no ONNX from B"}}
    # D
    names = work / f"{name}.names.json"
    names.write_text(json.dumps(spec["class_names"]))
    out_dir = work / f"{name}.deploy"
    code, sec, out, err = _run([str(Path(PY).with_name("autotimm-export")), str(ckpt), "--fp16", "--class-names",
                                str(names), "--out", str(out_dir)], 900)
    ok = code == 0
    man = json.loads((out_dir / "manifest.json").read_text()) if ok else {}
    arts = [a for a in man.get("artifacts", []) if "precision" in a]
    cmp = {}
    if ok:
        c2, _, o2, e2 = _run([PY, "-c", _COMPARE, name, str(out_dir / "model.raw.onnx"), helpers], 600)
        cmp = json.loads(o2.strip().splitlines()[-1]) if c2 == 0 else {"error": _last_error(e2)}
    row["deploy"] = {"ok": ok, "seconds": round(sec, 1), "error": "" if ok else _last_error(err),
                     "artifacts": [f"{a['file']} ({(out_dir / a['file']).stat().st_size / 1e6:.1f} MB)" for a in arts],
                     "parity": man.get("parity", {}).get("passed"), "max_abs_err": cmp.get("max_abs_err"),
                     "engine": (man.get("engine") or {}).get("parity", {}).get("status")}
    return row


def _fmt_err(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def table(rows, versions: dict, day: str) -> str:
    lines = ["| checkpoint | AutoTimm CLI `export_onnx` (offline) | AutoTimm `export_to_onnx` by hand | "
             "AutoTimm TensorRT converter | `autotimm-export --fp16` |", "|---|---|---|---|---|"]
    for r in rows:
        cli = f"{'ok' if r['cli']['ok'] else 'fails'} after {r['cli']['seconds']} s" + (
            f": `{_short(r['cli']['error'])}`" if r["cli"]["error"] else "")
        lib = r["library"]
        lib_s = (f"ok, {lib['seconds']:.1f} s, {lib['bytes'] / 1e6:.1f} MB"
                 f"{' (weights in an external .data file)' if lib.get('external_data') else ''}, "
                 f"outputs {len(lib['outputs'])} (`{'`, `'.join(lib['outputs'][:3])}`"
                 f"{', ...' if len(lib['outputs']) > 3 else ''}), max abs err vs AutoTimm "
                 f"{_fmt_err(lib['max_abs_err']) if lib['max_abs_err'] is not None else 'not comparable (' + str(len(lib['outputs'])) + ' outputs for ' + str(lib['ref_outputs']) + ')'}"
                 if lib["ok"] else f"fails: `{_short(lib['error'])}`")
        trt = "; ".join(f"{mode}: " + ("engine built" if t["ok"] else f"fails: `{_short(t['error'])}`")
                        for mode, t in r["trt"].items())
        d = r["deploy"]
        dep = (f"ok, {d['seconds']} s wall; {len(d['artifacts'])} artifacts ({', '.join(d['artifacts'])}); parity "
               f"{'PASS' if d['parity'] else 'FAIL'}; raw outputs max abs err vs AutoTimm {_fmt_err(d['max_abs_err'])}; "
               f"engine {d['engine'] or 'built'}" if d["ok"] else f"fails: `{_short(d['error'])}`")
        lines.append(f"| `{r['fixture']}` ({r['arch']}) | {cli} | {lib_s} | {trt} | {dep} |")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    return "\n".join(lines) + f"\n\nMeasured {day} on a 2-core CPU machine (no GPU), {vers}.\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", type=Path, default=None, help="replace the side-by-side table in this Markdown file")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements as JSON")
    ap.add_argument("--render", type=Path, default=None, metavar="JSON",
                    help="measure nothing: render the table of an earlier run's --json")
    args = ap.parse_args()
    if args.render:
        run = json.loads(args.render.read_text())
        rows, versions, day = run["rows"], run["versions"], run["date"]
    else:
        index = json.loads((FIXTURES / "fixtures.json").read_text())
        rows = []
        with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
            for name in CASES:
                print(f"measuring {name} ...", flush=True)
                rows.append(measure(name, Path(tmp), index["fixtures"]))
                print(json.dumps(rows[-1], indent=1), flush=True)
        import importlib.metadata as md

        versions = {p: md.version(p) for p in ("autotimm", "torch", "timm", "onnxruntime-gpu", "tensorrt-rtx")}
        day = time.strftime("%Y-%m-%d")
    text = table(rows, versions, day)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "versions": versions, "date": day}, indent=1) + "\n")
    if args.write:
        doc = args.write.read_text()
        start, end = "<!-- side-by-side:start -->", "<!-- side-by-side:end -->"
        head, rest = doc.split(start)
        _, tail = rest.split(end)
        args.write.write_text(f"{head}{start}\n{text}{end}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
