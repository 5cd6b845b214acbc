"""``python -m autotimm_deploy.demo split {detection,classification,segmentation,instance_segmentation} {train,val,test} COUNT OUT``

Writes a split of the synthetic shapes dataset as an annotated image folder: detection as PNGs +
COCO ``annotations.json``, classification as PNGs + ``annotations.csv`` (``file,label``), segmentation in
AutoTimm's ``png`` layout (``OUT/<split>/images`` + ``OUT/<split>/masks``, background = class 0), instance
segmentation in AutoTimm's COCO layout (``OUT/<split>/*.png`` + ``OUT/annotations/instances_<split>.json``).  The
``test`` split was used neither for training nor for model selection: it is the held-out split
that CI checks the demo models' exports on.  ``python -m autotimm_deploy.demo path detector``
prints the shipped demo model file's path.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import demo_model_path
from .shapes import (SPLIT_SEEDS, write_classification_split, write_detection_split, write_instance_split,
                     write_segmentation_split)

#: kind -> (writer, default image size)
WRITERS = {"detection": (write_detection_split, 128), "classification": (write_classification_split, 64),
           "segmentation": (write_segmentation_split, 128), "instance_segmentation": (write_instance_split, 128)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autotimm_deploy.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="write a synthetic split as an annotated folder")
    s.add_argument("task", choices=sorted(WRITERS))
    s.add_argument("split", choices=sorted(SPLIT_SEEDS))
    s.add_argument("count", type=int)
    s.add_argument("out")
    s.add_argument("--size", type=int, default=None, help="image size (default 64 classification, else 128)")
    w = sub.add_parser("path", help="print a shipped demo model's path")
    w.add_argument("kind", choices=["detector", "classifier"])
    args = p.parse_args(argv)
    if args.cmd == "path":
        print(demo_model_path(args.kind))
        return 0
    if args.count < 1:
        p.error("count must be >= 1")
    writer, size = WRITERS[args.task]
    out = writer(args.out, args.split, args.count, args.size or size)
    print(f"wrote {args.count} {args.split} {args.task} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
