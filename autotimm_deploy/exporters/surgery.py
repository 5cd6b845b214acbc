"""Graph surgery, as it was named before tasks owned their passes: the detection task's decode passes
(:mod:`autotimm_deploy.tasks.detection.graph`) and the shared graph helpers (:mod:`autotimm_deploy.graph`).

>>> # see examples/01_fuse_decode.py for a runnable walk-through
"""

from ..graph import export_graph, fold_graph, import_graph, share_identical_constants  # noqa: F401
from ..tasks.detection.graph import (DECODE_MODES, add_activations, add_box_decode, add_topk,  # noqa: F401
                                     apply_decode, static_level_sizes)

__all__ = ["import_graph", "export_graph", "add_activations", "add_box_decode", "add_topk", "apply_decode",
           "static_level_sizes", "fold_graph", "share_identical_constants", "DECODE_MODES"]
