"""The detection task's graph-surgery passes (onnx-graphsurgeon): a detector family's decoding fused into the graph.

Each pass is a small named function ``pass(graph, ...) -> graph`` that edits a
:class:`onnx_graphsurgeon.Graph` in place in three steps: disconnect the raw output, insert
the new nodes, then ``cleanup().toposort()`` (helpers: :mod:`autotimm_deploy.graph`).  What the nodes compute comes from the model's
:class:`~autotimm_deploy.models.family.Family` (recorded in the ONNX metadata as ``family``): each
raw output's activation and clamp, which output holds the distances, which outputs multiply into scores.

- :func:`add_activations`: each raw output's activation (``Sigmoid`` on class and centerness logits,
  ``Min(x, clamp)`` + ``Exp`` on the seed's log-distances, nothing on pixel distances); outputs keep
  their names (values become probabilities / pixel distances).
- :func:`add_box_decode`: the full decode of :mod:`autotimm_deploy.models.decode`: outputs
  ``boxes`` (B, N, 4) xyxy in input pixels and ``scores`` (B, N, num_classes).
- :func:`add_topk`: keep the K candidates with the best class score per image.

>>> # see examples/01_fuse_decode.py for a runnable walk-through
"""

from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...errors import ExportError
from ...graph import activate_output as _activate
from ...graph import detach_output as _detach
from ...graph import export_graph, get_metadata, graph_outputs, import_graph, set_metadata
from ...graph import single as _single
from ...graph import to_bnc as _to_bnc
from ...models.decode import anchor_points
from ...models.families.seed import SEED_FCOS
from ...models.family import LEVELS, PER_LEVEL_ROLES, Family

__all__ = [
    "add_activations",
    "add_box_decode",
    "add_topk",
    "apply_decode",
    "static_level_sizes",
    "DECODE_MODES",
]

#: What the graph surgery can fuse into a detector's ONNX.
DECODE_MODES = ("raw", "activations", "boxes")


def _level_outputs(graph: gs.Graph, prefix: str) -> List[gs.Variable]:
    outs = graph_outputs(graph)
    found = [outs[f"{prefix}_{l}"] for l in LEVELS if f"{prefix}_{l}" in outs]
    if not found:
        raise ExportError(
            f"graph has no {prefix}_p3..p7 outputs (outputs: {sorted(outs)}); "
            "surgery passes apply to raw detector exports"
        )
    return found


def add_activations(graph: gs.Graph, family: Family = SEED_FCOS) -> gs.Graph:
    """Each raw output's activation as ``family`` declares it; every output keeps its name.  Outputs whose
    activation is the identity (already pixel distances) are left as they are."""
    for output in family.outputs:
        if output.role not in PER_LEVEL_ROLES or (output.activation == "identity" and output.clamp_max is None):
            continue
        for out in _level_outputs(graph, output.key):
            new = _detach(graph, out, "logits")
            _activate(graph, out, output, new.name, new)
    return graph.cleanup().toposort()


def _points_const(graph: gs.Graph, h: int, w: int, stride: int, level: str) -> gs.Constant:
    """(H*W, 4) constant (px, py, px, py) for a static level size."""
    pts = anchor_points(h, w, stride).numpy().astype(np.float32)
    return gs.Constant(f"anchors_{level}/pxyxy", np.ascontiguousarray(np.concatenate([pts, pts], axis=1)))


def _points_dynamic(graph: gs.Graph, feat: gs.Variable, stride: int, level: str) -> gs.Variable:
    """(H*W, 4) anchor points (px, py, px, py) computed in-graph from the feature map's runtime H and W."""
    n = f"anchors_{level}"
    shape = _single(graph, "Shape", [feat], f"{n}/shape", dtype=np.int64)
    ids = itertools.count()
    i64 = lambda v: gs.Constant(f"{n}/const{next(ids)}", np.array(v, dtype=np.int64))
    f32 = lambda v: gs.Constant(f"{n}/const{next(ids)}", np.array(v, dtype=np.float32))
    h = _single(graph, "Gather", [shape, i64(2)], f"{n}/h", dtype=np.int64, attrs={"axis": 0})
    w = _single(graph, "Gather", [shape, i64(3)], f"{n}/w", dtype=np.int64, attrs={"axis": 0})
    hf = _single(graph, "Cast", [h], f"{n}/hf", attrs={"to": onnx.TensorProto.FLOAT})
    wf = _single(graph, "Cast", [w], f"{n}/wf", attrs={"to": onnx.TensorProto.FLOAT})
    ys = _single(graph, "Range", [f32(0.5), _single(graph, "Add", [hf, f32(0.5)], f"{n}/hend"), f32(1.0)], f"{n}/ys")
    xs = _single(graph, "Range", [f32(0.5), _single(graph, "Add", [wf, f32(0.5)], f"{n}/wend"), f32(1.0)], f"{n}/xs")
    ys = _single(graph, "Mul", [ys, f32(float(stride))], f"{n}/ys_px")
    xs = _single(graph, "Mul", [xs, f32(float(stride))], f"{n}/xs_px")
    hw = _single(graph, "Concat", [_single(graph, "Unsqueeze", [h, i64([0])], f"{n}/h1", dtype=np.int64),
                                   _single(graph, "Unsqueeze", [w, i64([0])], f"{n}/w1", dtype=np.int64)],
                 f"{n}/hw", dtype=np.int64, attrs={"axis": 0})
    yy = _single(graph, "Expand", [_single(graph, "Unsqueeze", [ys, i64([1])], f"{n}/ycol"), hw], f"{n}/yy")
    xx = _single(graph, "Expand", [_single(graph, "Unsqueeze", [xs, i64([0])], f"{n}/xrow"), hw], f"{n}/xx")
    col = i64([-1, 1])
    px = _single(graph, "Reshape", [xx, col], f"{n}/px")
    py = _single(graph, "Reshape", [yy, col], f"{n}/py")
    return _single(graph, "Concat", [px, py, px, py], f"{n}/pxyxy", attrs={"axis": 1})


def add_box_decode(
    graph: gs.Graph,
    strides: Sequence[int],
    num_classes: int,
    static_hw: Optional[Sequence[Tuple[int, int]]] = None,
    family: Family = SEED_FCOS,
) -> gs.Graph:
    """Replace the raw per-level outputs with ``boxes`` (B, N, 4) and ``scores`` (B, N, num_classes),
    decoded as ``family`` declares.

    ``static_hw`` lists each level's (H, W) when the input size is static: anchor points and the
    clip bounds are then folded to constants; otherwise they are computed from runtime shapes.
    """
    per_key = {o.key: _level_outputs(graph, o.key) for o in family.outputs if o.role in PER_LEVEL_ROLES}
    if any(len(v) != len(strides) for v in per_key.values()):
        found = ", ".join(f"{k}: {len(v)}" for k, v in per_key.items())
        raise ExportError(f"box decode needs {', '.join(family.keys)} outputs for every stride (found {found}; "
                          f"strides {list(strides)})")
    ltrb = family.output("ltrb")
    images = graph.inputs[0]
    if static_hw is None:
        ishape = _single(graph, "Shape", [images], "decode/input_shape", dtype=np.int64)
        hw = _single(graph, "Gather", [ishape, gs.Constant("decode/hw_idx", np.array([3, 2, 3, 2], dtype=np.int64))],
                     "decode/whwh_i", dtype=np.int64, attrs={"axis": 0})
        limits = _single(graph, "Cast", [hw], "decode/whwh", attrs={"to": onnx.TensorProto.FLOAT})
    else:
        ih, iw = images.shape[2], images.shape[3]
        limits = gs.Constant("decode/whwh", np.array([iw, ih, iw, ih], dtype=np.float32))
    zero = gs.Constant("decode/zero", np.array(0.0, dtype=np.float32))
    level_boxes, level_scores = [], []
    for k, stride in enumerate(strides):
        lv = LEVELS[k]
        for outs in per_key.values():
            graph.outputs.remove(outs[k])
        if static_hw is None:
            pxyxy = _points_dynamic(graph, per_key[family.keys[0]][k], stride, lv)
        else:
            pxyxy = _points_const(graph, *static_hw[k], stride, lv)
        dist = _activate(graph, per_key[ltrb.key][k], ltrb, f"decode_{lv}/dist")
        dist = _to_bnc(graph, dist, 4, f"decode_{lv}/dist")  # (B, HW, 4)
        sign = gs.Constant(f"decode_{lv}/sign", np.array([-1, -1, 1, 1], dtype=np.float32))
        raw_boxes = _single(graph, "Add", [pxyxy, _single(graph, "Mul", [dist, sign], f"decode_{lv}/signed")],
                            f"decode_{lv}/raw_boxes")
        clipped = _single(graph, "Min", [_single(graph, "Max", [raw_boxes, zero], f"decode_{lv}/lo"), limits],
                          f"decode_{lv}/boxes")
        prob = None
        for key in family.score:  # the product of the activated score outputs, in the declared order
            p = _activate(graph, per_key[key][k], family.output_by_key(key), f"decode_{lv}/{key}_prob")
            prob = p if prob is None else _single(graph, "Mul", [prob, p], f"decode_{lv}/prob_{key}")
        level_boxes.append(clipped)
        level_scores.append(_to_bnc(graph, prob, num_classes, f"decode_{lv}/scores"))
    boxes = _single(graph, "Concat", level_boxes, "boxes", attrs={"axis": 1})
    scores = _single(graph, "Concat", level_scores, "scores", attrs={"axis": 1})
    batch = images.shape[0]
    boxes.shape, scores.shape = [batch, "num_candidates", 4], [batch, "num_candidates", num_classes]
    graph.outputs[:0] = [boxes, scores]  # first; outputs that are not per level (mask features) stay after them
    return graph.cleanup().toposort()


def add_topk(graph: gs.Graph, k: int) -> gs.Graph:
    """Keep the ``k`` candidates with the highest max-class score: ``boxes`` (B, k', 4),
    ``scores`` (B, k', C) and ``indices`` (B, k') into the full candidate list, k' = min(k, N)."""
    if k < 1:
        raise ExportError(f"top-k must be >= 1, got {k}")
    outs = graph_outputs(graph)
    if "boxes" not in outs or "scores" not in outs:
        raise ExportError("add_topk needs the boxes/scores outputs of add_box_decode; run it first")
    boxes, scores = outs["boxes"], outs["scores"]
    rest = [t for t in graph.outputs if t.name not in ("boxes", "scores")]
    graph.outputs.clear()
    if graph.opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        best = _single(graph, "ReduceMax", [scores, gs.Constant("topk/axes", np.array([2], dtype=np.int64))],
                       "topk/best", attrs={"keepdims": 0})
    else:
        best = _single(graph, "ReduceMax", [scores], "topk/best", attrs={"axes": [2], "keepdims": 0})
    n = _single(graph, "Gather", [_single(graph, "Shape", [best], "topk/shape", dtype=np.int64),
                                  gs.Constant("topk/one", np.array([1], dtype=np.int64))], "topk/n",
                dtype=np.int64, attrs={"axis": 0})
    kk = _single(graph, "Min", [n, gs.Constant("topk/k", np.array([k], dtype=np.int64))], "topk/kk", dtype=np.int64)
    boxes.name, scores.name = "boxes_all", "scores_all"
    vals = gs.Variable("topk/values", dtype=np.float32)
    idx = gs.Variable("indices", dtype=np.int64)
    graph.layer(op="TopK", name="topk/TopK", inputs=[best, kk], outputs=[vals, idx], attrs={"axis": 1, "largest": 1, "sorted": 1})
    idx3 = _single(graph, "Unsqueeze", [idx, gs.Constant("topk/ax2", np.array([2], dtype=np.int64))], "topk/idx3", dtype=np.int64)

    def gather(src: gs.Variable, width: int, name: str) -> gs.Variable:
        shp = _single(graph, "Concat", [_single(graph, "Shape", [idx], f"{name}/ishape", dtype=np.int64),
                                        gs.Constant(f"{name}/w", np.array([width], dtype=np.int64))],
                      f"{name}/shape", dtype=np.int64, attrs={"axis": 0})
        full = _single(graph, "Expand", [idx3, shp], f"{name}/idx", dtype=np.int64)
        return _single(graph, "GatherElements", [src, full], name, attrs={"axis": 1})

    num_classes = scores.shape[2] if scores.shape else None
    out_boxes = gather(boxes, 4, "boxes")
    out_scores = gather(scores, int(num_classes), "scores")
    batch = graph.inputs[0].shape[0]
    out_boxes.shape, out_scores.shape, idx.shape = [batch, "topk", 4], [batch, "topk", num_classes], [batch, "topk"]
    graph.outputs.extend([out_boxes, out_scores, idx] + rest)
    return graph.cleanup().toposort()


def static_level_sizes(model: onnx.ModelProto) -> Optional[List[Tuple[int, int]]]:
    """Each level's (H, W) as the exported network produces it (read from the raw graph's output shapes,
    not from a formula), or ``None`` when a level's size is symbolic (dynamic H/W)."""
    from ...models.families import family_from_metadata

    family = family_from_metadata(get_metadata(model))
    first = family.keys[0]
    dims = {o.name: [d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output}
    sizes = [dims[f"{first}_{lv}"][2:4] for lv in LEVELS if f"{first}_{lv}" in dims]
    if not sizes or any(len(s) != 2 or None in s for s in sizes):
        return None
    return [(int(h), int(w)) for h, w in sizes]


def apply_decode(
    model: onnx.ModelProto,
    mode: str,
    strides: Sequence[int],
    num_classes: int,
    static_hw: Optional[Sequence[Tuple[int, int]]] = None,
    topk: Optional[int] = None,
    family: Optional[Family] = None,
) -> onnx.ModelProto:
    """Run the passes for ``mode`` ("raw", "activations" or "boxes", optionally + top-k) and return a checked
    model.  ``family`` defaults to the one the model's metadata declares."""
    if mode not in DECODE_MODES:
        raise ExportError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
    if topk is not None and mode != "boxes":
        raise ExportError("--topk needs --decode boxes")
    if family is None:
        from ...models.families import family_from_metadata

        family = family_from_metadata(get_metadata(model))
    graph = import_graph(model)
    if mode == "activations":
        add_activations(graph, family)
    elif mode == "boxes":
        add_box_decode(graph, strides, num_classes, static_hw, family)
        if topk is not None:
            add_topk(graph, topk)
    out = export_graph(graph, model)
    set_metadata(out, {"decode": mode, "topk": str(topk) if topk else "none"})
    return out
