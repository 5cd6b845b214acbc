"""``autotimm-export MODEL [--out DIR] ...``: model file -> verified ONNX artifacts.

Exit codes: 0 export done and parity passed, 1 parity failed, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from .common import make_parser, run_main


def _batch(text: str):
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:OPT:MAX, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected N or MIN:OPT:MAX, got {text!r}")
    return tuple(parts)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("autotimm-export", __doc__)
    p.add_argument("model", type=Path, help="model file written by autotimm_deploy.save_model (.pt or .safetensors)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: <model stem>_export)")
    p.add_argument("--decode", choices=["raw", "activations", "boxes"], default="boxes",
                   help="what the graph computes: raw head outputs, activations, or fused boxes/scores (default)")
    p.add_argument("--topk", type=int, default=None, help="with --decode boxes: keep the K best candidates per image")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="static input size (default: the model file's)")
    p.add_argument("--batch", type=_batch, default=(1, 1, 8), metavar="MIN:OPT:MAX",
                   help="batch range; dynamic batch unless MIN == MAX (default 1:1:8)")
    p.add_argument("--dynamic-hw", action="store_true", help="make input height and width dynamic")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    return p


def _body(args: argparse.Namespace) -> int:
    from ..exporters.pipeline import ExportOptions, export_model

    opts = ExportOptions(decode=args.decode, opset=args.opset,
                         input_size=tuple(args.input_size) if args.input_size else None, batch=args.batch,
                         dynamic_hw=args.dynamic_hw, topk=args.topk, check=not args.no_check)
    out = args.out or args.model.with_name(args.model.stem + "_export")
    start = time.time()
    log = lambda s: print(f"{time.time() - start:6.1f}s {s}", file=sys.stderr, flush=True)
    manifest = export_model(args.model, out, opts, progress=log)
    print(f"\n{'artifact':<24} {'role':<30} {'precision':<9} parity")
    for a in manifest["artifacts"]:
        print(f"{a['file']:<24} {a['role']:<30} {a.get('precision', '-'):<9} {a.get('parity', '-')}")
    parity = manifest["parity"]
    if parity is not None:
        worst = ", ".join(f"{o['name']} {o['max_abs']:.2g}" for o in parity["outputs"][:4])
        det = parity.get("detections")
        det_s = f"; detections matched {det['matched']}/{det['reference']}" if det else ""
        print(f"\nparity: {'PASS' if parity['passed'] else 'FAIL'} (max abs err: {worst}{det_s})")
    print(f"wrote {out}/manifest.json in {time.time() - start:.1f}s")
    return 0 if parity is None or parity["passed"] else 1


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
