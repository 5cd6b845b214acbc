"""``autotimm-triton EXPORT_DIR REPO_DIR [--network auto|tensorrt|onnxruntime|python] ...``: a Triton Inference Server
model repository from an export folder (``autotimm-export ... --triton-repo DIR`` does the same at the end of an
export).

Writes NAME (ensemble: encoded image bytes in), NAME_uint8 (ensemble: uint8 HxWx3 in), NAME_preprocess[_uint8],
NAME_network and NAME_postprocess; every config.pbtxt is derived from the export's manifest and checked against
Triton's ModelConfig schema.  Serve it with tritonserver --model-repository REPO_DIR (docs/serving.md).

Exit codes: 0 written, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .common import make_parser, run_main

NETWORKS = ("auto", "tensorrt", "onnxruntime", "python")  # serve.repository.NETWORKS, without importing it


def _sizes(text: str):
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 4,8, got {text!r}") from None


def add_triton_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The repository's options; ``prefix`` ``triton-`` names them ``--triton-network``... in ``autotimm-export``."""
    g = parser.add_argument_group("Triton", "the generated model repository (docs/serving.md)")
    f = lambda name: f"--{prefix}{name}"
    g.add_argument(f("network"), choices=NETWORKS, default="auto",
                   help="auto (default): the engine as tensorrt_plan when full TensorRT built it, else the ONNX as "
                        "onnxruntime_onnx; python: ONNX Runtime on Triton's Python backend (CPU variant)")
    g.add_argument(f("precision"), choices=("auto", "fp32", "fp16", "int8"), default="auto",
                   help="which ONNX the network runs (default auto: FP16 on a GPU when exported, else FP32)")
    g.add_argument(f("kind"), choices=("auto", "gpu", "cpu"), default="auto",
                   help="the network's instance kind (default: gpu, cpu for --network python)")
    g.add_argument(f("instances"), type=int, default=1, metavar="N", help="network instances (default 1)")
    g.add_argument(f("step-instances"), type=int, default=1, metavar="N",
                   help="instances of each pre/post-processing step (default 1)")
    g.add_argument(f("max-batch"), type=int, default=None, metavar="N",
                   help="max_batch_size (default: the export's largest batch)")
    g.add_argument(f("preferred-batch"), type=_sizes, default=None, metavar="N,N",
                   help="dynamic batching's preferred sizes (default: the export's optimum and largest batch)")
    g.add_argument(f("max-queue-delay-us"), type=int, default=1000, metavar="US",
                   help="longest wait to form a batch, in microseconds (default 1000)")
    g.add_argument(f("name"), default=None, help="model name (default: the model file's stem)")
    g.add_argument(f("score-thr"), type=float, default=None, help="score threshold (default: the model's own)")
    g.add_argument(f("iou-thr"), type=float, default=None, help="NMS IoU threshold (default: the model's own)")
    g.add_argument(f("max-det"), type=int, default=None, help="detections per image (default: the model's own)")
    g.add_argument(f("top-k"), type=int, default=5, help="classifiers: classes in top_labels/top_scores (default 5)")
    g.add_argument(f("threads"), type=int, default=0, metavar="N",
                   help="--network python: ONNX Runtime threads per instance (default 0: its own choice)")


def triton_options(args: argparse.Namespace, prefix: str = ""):
    """The :class:`~autotimm_deploy.serve.repository.TritonOptions` of :func:`add_triton_arguments`, validated."""
    from ..serve.repository import TritonOptions

    a = lambda name: getattr(args, (prefix + name).replace("-", "_"))
    return TritonOptions(name=a("name"), network=a("network"), precision=a("precision"), kind=a("kind"),
                         instances=a("instances"), step_instances=a("step-instances"), max_batch_size=a("max-batch"),
                         preferred_batch=a("preferred-batch"), max_queue_delay_us=a("max-queue-delay-us"),
                         score_thresh=a("score-thr"), iou_thresh=a("iou-thr"), max_detections=a("max-det"),
                         top_k=a("top-k"), threads=a("threads")).validate()


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("autotimm-triton", __doc__)
    p.add_argument("export", type=Path, help="an export folder (with manifest.json) written by autotimm-export")
    p.add_argument("repo", type=Path, help="the Triton model repository to write into (created if missing)")
    add_triton_arguments(p)
    return p


def print_summary(summary, repo: Path) -> None:
    print(f"{repo}: {summary['name']} ({summary['task']}), network {summary['network']} on {summary['kind'].upper()} "
          f"from {summary['why']}, max_batch_size {summary['max_batch_size']}, preferred {summary['preferred_batch']}")
    print("models: " + ", ".join(summary["models"]))


def _body(args: argparse.Namespace) -> int:
    from ..serve.repository import write_repository

    summary = write_repository(args.export, args.repo, triton_options(args))
    print_summary(summary, args.repo)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
