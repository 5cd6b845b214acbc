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

from ..engines.library import ENGINE_CHOICES, RTX_TARGETS
from ..exporters.options import CALIB_METHODS, DEFAULT_ISLANDS
from ..errors import ModelFileError
from .common import add_model_arguments, make_parser, model_overrides, run_main
from .triton import add_triton_arguments, print_summary, triton_options


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
    p.add_argument("model", type=Path, help="model file (.pt / .safetensors from autotimm_deploy.save_model), an AutoTimm "
                                            ".ckpt, or a Lightning log directory with checkpoints/*.ckpt")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: <model stem>_export)")
    p.add_argument("--decode", choices=["raw", "activations", "boxes"], default="boxes",
                   help="what the graph computes: raw head outputs, activations, or fused boxes/scores (default)")
    p.add_argument("--topk", type=int, default=None, help="with --decode boxes: keep the K best candidates per image")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--batch", type=_batch, default=(1, 1, 8), metavar="MIN:OPT:MAX",
                   help="batch range; dynamic batch unless MIN == MAX (default 1:1:8)")
    p.add_argument("--dynamic-hw", action="store_true", help="make input height and width dynamic")
    p.add_argument("--min-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="with --dynamic-hw: smallest H W of the engine profile (default: half the input size)")
    p.add_argument("--max-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="with --dynamic-hw: largest H W of the engine profile (default: twice the input size)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    add_model_arguments(p, input_size=True)
    g = p.add_argument_group("FP16", "an FP16-typed ONNX with FP32 islands (TensorRT 11 and TensorRT-RTX are strongly typed)")
    g.add_argument("--fp16", action="store_true", help="write model.fp16.onnx, check it, and build an FP16 engine")
    g.add_argument("--fp16-input", action="store_true", help="FP16 input tensor instead of FP32 + Cast")
    g.add_argument("--fp32-ops", type=_names, default=None, metavar="OP,OP",
                   help=f"op types kept in FP32 (default: {','.join(DEFAULT_ISLANDS.op_types)}); "
                        "'+OP,...' adds to the default, '' keeps none")
    g.add_argument("--fp32-nodes", type=_names, default=None, metavar="GLOB,GLOB",
                   help=f"node-name globs kept in FP32 (default: {','.join(DEFAULT_ISLANDS.node_names)}); "
                        "'+GLOB,...' adds to the default")
    g.add_argument("--no-overflow-guard", action="store_true",
                   help="do not probe for FP16 overflow (layers that would overflow are otherwise kept in FP32)")
    g.add_argument("--fp16-repair-steps", type=int, default=6, metavar="N",
                   help="when FP16 parity fails, keep the nodes that add the most FP16 error in FP32, up to N groups "
                        "(default 6; 0: report the failure as is)")
    q = p.add_argument_group("INT8", "calibrated INT8 ONNX with explicit Q/DQ (ONNX Runtime's quantization), gated on "
                                     "accuracy and repaired automatically; the engine is then built from it")
    q.add_argument("--int8", action="store_true",
                   help="write model.int8.onnx (TensorRT form) and model.int8-cpu.onnx (ONNX Runtime CPU form)")
    q.add_argument("--calib", type=str, default=None, metavar="DIR", help="calibration images (any image folder)")
    q.add_argument("--calib-count", type=int, default=256, metavar="N", help="calibration images used (default 256)")
    q.add_argument("--calib-method", choices=CALIB_METHODS, default="minmax",
                   help="how activation ranges are chosen (default minmax: see docs/int8.md)")
    q.add_argument("--int8-eval", type=str, default=None, metavar="DIR",
                   help="held-out folder for the accuracy gate (annotated: mAP / top-1), not the calibration folder")
    q.add_argument("--int8-max-drop", type=float, default=1.0, metavar="POINTS",
                   help="largest mAP@0.5:0.95 / top-1 drop vs PyTorch FP32 allowed, in points (default 1.0)")
    q.add_argument("--int8-repair-steps", type=int, default=6, metavar="N",
                   help="groups of layers the repair may keep in FP32 before the export fails (default 6; 0: no repair)")
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                   help="auto (default): full TensorRT if it imports and a GPU is present, else TensorRT-RTX; none: skip")
    e.add_argument("--target-cc", type=_names, default=(), metavar="SM86,SM89",
                   help=f"TensorRT-RTX compute capabilities (default: the GPU present, else all of {','.join(RTX_TARGETS)})")
    e.add_argument("--workspace", type=int, default=None, metavar="MIB", help="builder workspace limit in MiB")
    e.add_argument("--cache-dir", type=str, default=None,
                   help="engine cache folder (default: $AUTOTIMM_DEPLOY_CACHE or ~/.cache/autotimm-deploy)")
    e.add_argument("--no-cache", action="store_true", help="always rebuild the engine; do not store it")
    p.add_argument("--triton-repo", type=Path, default=None, metavar="DIR",
                   help="also write a Triton model repository from the export when parity passes (docs/serving.md)")
    add_triton_arguments(p, prefix="triton-")
    return p


def _names(text: str):
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _with_default(given, default):
    """``--fp32-ops +Softmax`` extends the default list; ``--fp32-ops Softmax`` replaces it."""
    if given is None:
        return None
    if given and all(t.startswith("+") for t in given):
        return tuple(default) + tuple(t[1:] for t in given)
    return given


def _body(args: argparse.Namespace) -> int:
    from ..exporters.options import ExportOptions

    ov = model_overrides(args)
    opts = ExportOptions(decode=args.decode, opset=args.opset, input_size=ov.input_size, class_names=ov.class_names,
                         mean=ov.mean, std=ov.std, batch=args.batch,
                         dynamic_hw=args.dynamic_hw, topk=args.topk, check=not args.no_check,
                         min_size=tuple(args.min_size) if args.min_size else None,
                         max_size=tuple(args.max_size) if args.max_size else None,
                         fp16=args.fp16, fp16_input=args.fp16_input,
                         fp32_ops=_with_default(args.fp32_ops, DEFAULT_ISLANDS.op_types),
                         fp32_nodes=_with_default(args.fp32_nodes, DEFAULT_ISLANDS.node_names),
                         overflow_guard=not args.no_overflow_guard, fp16_repair_steps=args.fp16_repair_steps,
                         int8=args.int8, calib=args.calib,
                         calib_count=args.calib_count, calib_method=args.calib_method, int8_eval=args.int8_eval,
                         int8_max_drop=args.int8_max_drop, int8_repair_steps=args.int8_repair_steps, engine=args.engine,
                         target_cc=tuple(t.upper() for t in args.target_cc),
                         workspace_mib=args.workspace, cache=not args.no_cache, cache_dir=args.cache_dir)
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
                print(f"int8 gate {f['file']}: PASS (detection {g['levels'].get('detection', '-')}, task "
                      f"{g['levels'].get('task', '-')}, drop {g['drop_points']} points)")
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
