"""``autotimm-infer ARTIFACT IMAGE... [--out DIR] [--backend ...] [--score-thr ...]``: detect or classify.

ARTIFACT is an export directory (or its manifest.json), an .engine, an .onnx, a model file or an
AutoTimm checkpoint.  Thresholds default to the model's own post-processing (an AutoTimm model's
score_thresh / nms_thresh / max_detections_per_image; 0.05 / 0.6 / 100 for the seed's models).
Writes ``DIR/detections.json`` (or ``classifications.json``) and one picture per image with the boxes and
labels drawn at the image's scale (JPEG for JPEG inputs, else PNG; inputs that share a file name get
distinct pictures), and prints a table.  Images run in batches as large as the artifact takes.  An
unreadable image gives one error line and the others still run.  Exit codes: 0 all images done, 2 usage
error or any image failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from .. import _json as strict_json
from .common import add_model_arguments, make_parser, model_overrides, run_main
from .draw import draw_result, picture_names

def build_parser() -> argparse.ArgumentParser:
    p = make_parser("autotimm-infer", __doc__)
    p.add_argument("artifact", type=Path, help="export directory, manifest.json, .engine, .onnx, .pt or .safetensors")
    p.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, PPM, ...)")
    p.add_argument("--out", type=Path, default=Path("infer_out"), help="output directory (default infer_out)")
    p.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime", "pytorch"], default="auto",
                   help="auto: the engine where it can run, else ONNX Runtime (default)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="with an export directory and ONNX Runtime: which ONNX to run")
    p.add_argument("--score-thr", type=float, default=None, help="minimum score (default: the model's)")
    p.add_argument("--iou-thr", type=float, default=None, help="NMS IoU threshold (default: the model's)")
    p.add_argument("--max-det", type=int, default=None, help="detections per image (default: the model's)")
    p.add_argument("--class-agnostic", action="store_true", help="NMS across classes")
    p.add_argument("--resize", choices=["fit", "native"], default="fit",
                   help="fit (default): into the model's input size, the same on every backend; native: at the "
                        "image's resolution where the artifact takes dynamic H/W (--dynamic-hw exports, model files)")
    p.add_argument("--no-draw", action="store_true", help="do not write the pictures")
    p.add_argument("--format", choices=["auto", "jpg", "png"], default="auto",
                   help="picture format (default auto: JPEG for JPEG inputs, else PNG)")
    p.add_argument("--trust-engine-host-code", action="store_true",
                   help="let an engine run the host (CPU) code it embeds; off by default: only for engines you trust")
    add_model_arguments(p)
    return p


def _body(args: argparse.Namespace) -> int:
    from .._atomic import atomic_write_text
    from ..engines.predictor import load, load_image
    from ..errors import AutotimmError
    from ..tasks import get_task

    for flag, value, ok, rule in (("--score-thr", args.score_thr, lambda v: 0 <= v <= 1, "in [0, 1]"),
                                  ("--iou-thr", args.iou_thr, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("--max-det", args.max_det, lambda v: v >= 1, ">= 1")):
        if value is not None and not ok(value):
            raise AutotimmError(f"{flag} must be {rule}, got {value}")
    start = time.time()
    ov = model_overrides(args)
    predictor = load(args.artifact, args.backend, precision=args.precision, allow_host_code=args.trust_engine_host_code,
                     overrides=ov.to_dict() or None)
    print(f"backend: {predictor.describe()}", file=sys.stderr)
    post = (args.score_thr, args.iou_thr, args.max_det, args.class_agnostic, args.resize)
    args.out.mkdir(parents=True, exist_ok=True)
    records, failed = [], 0
    task = get_task(predictor.info.task)
    pictures = picture_names(args.images, args.format)
    width = max(len("image"), *(len(str(p)) for p in args.images))  # whole paths: never cut
    print(f"\n{'image':<{width}} {'size':>9} {'n':>4}  top results")
    per_call = max(1, predictor.info.batch[1])  # as many images per run as the profile takes
    for start_k in range(0, len(args.images), per_call):
        chunk = list(range(start_k, min(start_k + per_call, len(args.images))))
        loaded = {}
        for k in chunk:
            try:
                loaded[k] = load_image(args.images[k])
            except Exception as exc:  # one unreadable image must not stop the others
                loaded[k] = exc
        ok = [k for k in chunk if not isinstance(loaded[k], Exception)]
        results = {}
        try:
            results.update(zip(ok, predictor.predict([loaded[k] for k in ok], *post)))
        except Exception:  # a backend failing on the batch: run its images one by one to find which
            for k in ok:
                try:
                    results[k] = predictor.predict(loaded[k], *post)[0]
                except Exception as exc:
                    loaded[k] = exc
        for k in chunk:
            path, image = args.images[k], loaded[k]
            if isinstance(image, Exception):
                failed += 1
                msg = str(image) if isinstance(image, AutotimmError) else \
                    f"{path}: {type(image).__name__}: {str(image).splitlines()[0] if str(image) else ''}"
                print(f"autotimm-infer: error: {msg}", file=sys.stderr)
                records.append({"image": str(path), "error": msg})
                continue
            result = results[k]
            picture = None if args.no_draw else args.out / pictures[k]
            records.append({"image": str(path), **({"picture": picture.name} if picture else {}), **result.to_dict()})
            n, top = task.summary(result)
            h, w = image.shape[:2]
            print(f"{str(path):<{width}} {w:>4}x{h:<4} {n:>4}  {top}")
            if picture is not None:
                draw_result(image, result, picture, args.format, task)
    name = task.results_file
    post = task.settings(predictor.info.family, score_thresh=args.score_thr, iou_thresh=args.iou_thr,
                         max_detections=args.max_det)
    doc = {"artifact": str(args.artifact), "backend": predictor.backend.name, "source": predictor.source,
           "family": predictor.info.family.name, **({"postprocess": post} if post else {}),
           "images": records}
    atomic_write_text(args.out / name, strict_json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.out / name} ({len(records) - failed} ok, {failed} failed) in {time.time() - start:.1f}s")
    return 2 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
