"""``autotimm-export MODEL [--out DIR] [--fp16] [--int8 --calib DIR --int8-eval DIR] [--engine ...] [--triton-repo DIR] ...``: model file -> verified ONNX and engines.

MODEL is a model file written by autotimm_deploy.save_model (.pt / .safetensors), an AutoTimm
checkpoint (.ckpt, e.g. best-*.ckpt of its ModelCheckpoint) or a Lightning log directory holding
checkpoints/*.ckpt and hparams.yaml.  AutoTimm checkpoints record no class names (--class-names) and
no mean/std (ImageNet's unless --mean/--std).

Exit codes: 0 export done and parity passed, 1 parity failed, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from .._options import add_arguments, from_args
from ..errors import ModelFileError
from ..exporters.options import GROUPS, ExportOptions
from .common import add_model_arguments, make_parser, model_overrides, run_main
from .triton import add_triton_arguments, print_summary, triton_options


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("autotimm-export", __doc__)
    p.add_argument("model", type=Path, help="model file (.pt / .safetensors from autotimm_deploy.save_model), an AutoTimm "
                                            ".ckpt, or a Lightning log directory with checkpoints/*.ckpt")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: <model stem>_export)")
    add_arguments(p, ExportOptions, groups=GROUPS)  # every export option, declared once in ExportOptions
    add_model_arguments(p, input_size=True)
    p.add_argument("--triton-repo", type=Path, default=None, metavar="DIR",
                   help="also write a Triton model repository from the export when parity passes (docs/serving.md)")
    add_triton_arguments(p, prefix="triton-")
    return p


def _body(args: argparse.Namespace) -> int:
    ov = model_overrides(args)
    opts = from_args(ExportOptions, args, input_size=ov.input_size, class_names=ov.class_names, mean=ov.mean,
                     std=ov.std)
    out = args.out or args.model.with_name(args.model.stem + "_export")
    triton = triton_options(args, "triton-") if args.triton_repo else None
    if not args.model.exists():  # before the heavy imports: a typo is answered at once
        raise ModelFileError(f"{args.model}: no such file or directory")
    start = time.time()
    log = lambda s: print(f"{time.time() - start:6.1f}s {s}", file=sys.stderr, flush=True)
    from ..exporters.pipeline import export_model  # torch, timm, ONNX: only now that the options are valid

    manifest = export_model(args.model, out, opts, progress=log)
    print(f"\n{'artifact':<24} {'role':<28} {'precision':<9} {'MB':>6}  parity")
    for a in manifest["artifacts"]:
        if "precision" not in a:
            continue
        mb = (out / a["file"]).stat().st_size / 1e6
        print(f"{a['file']:<24} {a['role']:<28} {a['precision']:<9} {mb:6.1f}  {a.get('parity', '-')}")
    parity = manifest["parity"]
    if parity is not None:
        for rep in parity["reports"]:
            worst = ", ".join(f"{o['name']} {o['max_abs']:.2g}" for o in rep["outputs"][:4])
            det = rep.get("detections")
            det_s = ("; detections not informative (nothing compared)" if det and det["status"] == "not informative"
                     else f"; detections matched {det['matched']}/{det['reference']}"
                     + (" (top candidates: none above the threshold)" if det["basis"] == "top-k" else "") if det else "")
            print(f"parity {rep['artifact']}: {'PASS' if rep['passed'] else 'FAIL'} (max abs err: {worst}{det_s})")
        if parity.get("int8"):
            kept = parity["int8"]["kept_fp32"]
            for form, f in parity["int8"]["forms"].items():
                g = f["gate"]
                levels = ", ".join(f"{lv} {st}" for lv, st in g["levels"].items() if lv != "tensor")
                drop = (f"drop {g['drop_points']} points" if g["drop_points"] is not None
                        else "the task metric NOT measured (--int8-no-task-gate)")
                print(f"int8 gate {f['file']}: PASS ({levels}; {drop})")
            print(f"int8 repair: {len(kept)} layers kept in FP32" + (f": {', '.join(k['node'] for k in kept)}" if kept else ""))
        if parity.get("engine"):
            print(f"parity engine: {parity['engine']['summary']}")
        print(f"\nparity: {'PASS' if parity['passed'] else 'FAIL'}")
    print(f"wrote {out}/manifest.json in {time.time() - start:.1f}s")
    passed = parity is None or parity["passed"]
    if triton is not None:
        if not passed:
            print(f"triton: no repository written to {args.triton_repo}: parity failed", file=sys.stderr)
        else:
            from ..serve.repository import write_repository

            print_summary(write_repository(out, args.triton_repo, triton), args.triton_repo)
    return 0 if passed else 1


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
