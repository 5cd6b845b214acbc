"""``autotimm-parity MODEL ARTIFACT... [--data DIR | --random N] [--tolerances FILE] [--junit FILE] [--report DIR]``

Checks exported artifacts (FP32/FP16 ONNX, engines where this machine can run them, or whole
autotimm-export output directories) against the PyTorch model file, through Polygraphy, at three
levels: tensor (every output within per-precision tolerances, no inf/NaN), detection (matched
detections by class and IoU, score differences) and task (mAP@0.5 and mAP@0.5:0.95 on an annotated
folder, or top-1 agreement/accuracy for classifiers; pass when the artifact's metric >= PyTorch's
minus a tolerance in points).

Exit codes: 0 every level passed (or was skipped with a reason, unless --strict), 1 a parity
failure, 2 a usage or input error (bad flags, unreadable model/artifact/annotations).

examples:
  autotimm-parity model.pt out/model.onnx out/model.fp16.onnx --random 8
  autotimm-parity model.pt out/ --data val_images/ --junit parity.xml --report parity/
  autotimm-parity model.pt out/model.fp16.onnx --data val/ --map-tol 0.5 --tolerances tol.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .common import add_model_arguments, make_parser, model_overrides, run_main


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("autotimm-parity", __doc__)
    p.add_argument("model", type=Path, help="the PyTorch model file (.pt / .safetensors) or AutoTimm checkpoint (.ckpt) "
                                            "the artifacts came from")
    p.add_argument("artifacts", type=Path, nargs="+", help=".onnx, .engine (with its .json sidecar) or an export directory")
    src = p.add_argument_group("inputs (one of)")
    g = src.add_mutually_exclusive_group()
    g.add_argument("--data", type=Path, metavar="DIR",
                   help="folder of images; with COCO JSON, per-image JSON or CSV annotations (or class folders) "
                        "the task level runs (see docs/parity-ci.md)")
    g.add_argument("--random", type=int, metavar="N", help="N seeded random N(0, 1) inputs (default 8 when --data is absent)")
    src.add_argument("--annotations", type=Path, metavar="FILE", help="annotation file, when not in DIR's default place")
    src.add_argument("--limit", type=int, metavar="N", help="use the first N images of DIR")
    src.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    src.add_argument("--batch", type=int, default=8, help="images per inference, clamped to the artifact's range (default 8)")
    rules = p.add_argument_group("thresholds")
    rules.add_argument("--tolerances", type=Path, metavar="FILE",
                       help='JSON overriding the defaults, e.g. {"fp16": {"tensor": {"atol": {"boxes": 2}}, '
                            '"task": {"map_points": 0.5}}}')
    rules.add_argument("--map-tol", type=float, metavar="POINTS",
                       help="allowed mAP drop in points for every precision (default FP32 0.1, FP16 0.2, INT8 1.0)")
    rules.add_argument("--strict", action="store_true", help="a level that cannot run here (e.g. an engine without a GPU) fails")
    out = p.add_argument_group("outputs")
    out.add_argument("--junit", type=Path, metavar="FILE", help="JUnit XML: one test case per artifact and level")
    out.add_argument("--report", type=Path, metavar="DIR", help="write parity.json and parity.md (Markdown summary) here")
    out.add_argument("--summary", type=Path, metavar="FILE",
                     help="append the Markdown summary to FILE (e.g. $GITHUB_STEP_SUMMARY)")
    out.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"],
                     help="ONNX Runtime execution providers for ONNX artifacts (default CPU: deterministic)")
    out.add_argument("-q", "--quiet", action="store_true", help="print only the verdict line")
    add_model_arguments(p)  # default: what the artifacts' export was told
    return p


def _body(args: argparse.Namespace) -> int:
    from ..errors import ParityError
    from ..parity.reports import artifact_names, to_markdown, write_reports
    from ..parity.suite import load_thresholds, check_artifacts

    if args.limit is not None and args.limit < 1:
        raise ParityError(f"--limit must be >= 1, got {args.limit}")
    if args.annotations is not None and args.data is None:
        raise ParityError("--annotations needs --data DIR (the images it describes)")
    overrides = None
    if args.map_tol is not None:
        if args.map_tol < 0:
            raise ParityError(f"--map-tol must be >= 0 points, got {args.map_tol}")
        overrides = {p: {"task": {"map_points": args.map_tol}} for p in ("fp32", "fp16", "int8")}
    thresholds = load_thresholds(args.tolerances, overrides)
    say = (lambda s: None) if args.quiet else print
    result = check_artifacts(args.model, args.artifacts, data=args.data, random=args.random,
                             annotations=args.annotations, limit=args.limit, thresholds=thresholds, batch=args.batch,
                             seed=args.seed, providers=args.providers, strict=args.strict, progress=say,
                             overrides=model_overrides(args) if (args.class_names or args.mean or args.std) else None)
    for path in write_reports(result, args.report, args.junit):
        say(f"wrote {path}")
    if args.summary is not None:
        with open(args.summary, "a") as f:
            f.write(to_markdown(result))
    fails = result.failures()
    names = dict(zip([a.path for a in result.artifacts], artifact_names([a.path for a in result.artifacts])))
    levels = sum(len(a.levels) for a in result.artifacts)
    skipped = sum(lv.status == "skipped" for a in result.artifacts for lv in a.levels)
    if fails:
        print(f"autotimm-parity: FAIL: {len(fails)} of {levels} checks failed "
              f"({', '.join(f'{names[a.path]} {lv.level}' for a, lv in fails)})", file=sys.stderr)
    else:
        print(f"autotimm-parity: PASS: {levels - skipped} checks passed"
              + (f", {skipped} skipped (see the report)" if skipped else "") + f" in {result.seconds:.1f} s")
    return result.exit_code


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
