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

def add_triton_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The repository's options (:class:`~autotimm_deploy.serve.options.TritonOptions`, declared there once);
    ``prefix`` ``triton-`` names them ``--triton-network``... in ``autotimm-export``."""
    from .._options import add_arguments
    from ..serve.options import TritonOptions

    add_arguments(parser, TritonOptions, prefix, {"Triton": "the generated model repository (docs/serving.md)"},
                  group="Triton")


def triton_options(args: argparse.Namespace, prefix: str = ""):
    """The :class:`~autotimm_deploy.serve.options.TritonOptions` of :func:`add_triton_arguments`, validated."""
    from .._options import from_args
    from ..serve.options import TritonOptions

    return from_args(TritonOptions, args, prefix).validate()


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
