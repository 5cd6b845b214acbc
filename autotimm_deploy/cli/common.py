"""Shared CLI plumbing: one user-facing error type, printed on one line, exit code 2."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import AutotimmError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: exit 2 with one line, like AutotimmError
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_model_arguments(parser: argparse.ArgumentParser, input_size: bool = False) -> None:
    """What a model file may not record (AutoTimm checkpoints record no class names and no mean/std)."""
    g = parser.add_argument_group("model", "for checkpoints that do not record them (AutoTimm .ckpt), or to override")
    g.add_argument("--class-names", type=Path, metavar="FILE", default=None,
                   help="class names: a JSON list or one name per line (default: the file's, else class_0, ...)")
    g.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), default=None,
                   help="normalisation mean in 0-1 (default: the file's, else ImageNet's)")
    g.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), default=None,
                   help="normalisation std in 0-1 (default: the file's, else ImageNet's)")
    if input_size:
        g.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="static input size (default: the model file's; an AutoTimm checkpoint's datamodule image_size)")


def model_overrides(args: argparse.Namespace):
    """The :class:`~autotimm_deploy.models.io.ModelOverrides` of :func:`add_model_arguments`' flags."""
    from ..models.overrides import ModelOverrides, read_class_names

    size = getattr(args, "input_size", None)
    return ModelOverrides(class_names=read_class_names(args.class_names) if args.class_names else None,
                          input_size=tuple(size) if size else None,
                          mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def run_main(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Optional[List[str]] = None) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2) and --help (exit 0): main() returns the code
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return body(args)
    except AutotimmError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # unwritable output folder, a file where a folder should be, disk full...
        if args.debug:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{parser.prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
