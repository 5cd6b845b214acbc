"""What the FP16 and INT8 precision repairs share: reading intermediate tensors, a per-channel relative error, and
the grouping of layers by sensitivity into repair steps."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx

__all__ = ["run_tensors", "channel_error", "repair_groups"]


def run_tensors(model: onnx.ModelProto, feed: Dict[str, np.ndarray], names: Sequence[str],
                default_type: Optional[int] = onnx.TensorProto.FLOAT) -> Dict[str, np.ndarray]:
    """The named tensors of ``model`` on ``feed`` (ONNX Runtime CPU, graph as written), typed from the graph's
    value_info; a name without one is read as ``default_type`` (a Q/DQ graph written without value_info), or left
    out when that is None."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in m.graph.value_info}
    fetch = [n for n in names if n in have or n in types or default_type is not None]
    for n in fetch:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, types.get(n, default_type), None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as written
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip(fetch, sess.run(fetch, feed)))


def channel_error(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Mean over channels (axis 1) of ||x_hat_c - x_c|| / ||x_c||, channels that are all zero left out.  Per
    channel, because one outlier channel that stretches a per-tensor scale leaves the tensor's overall relative
    error small (the outlier dominates the norm) while every other channel loses most of its bits.

    >>> x = np.ones((1, 2, 2, 2)); x[:, 0] *= 100.0
    >>> round(channel_error(x, x + 0.5), 3)  # the small channel's error counts as much as the big one's
    0.253
    """
    a, b = x.astype(np.float64), x_hat.astype(np.float64)
    if a.ndim < 2:
        return float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12))
    axes = tuple(k for k in range(a.ndim) if k != 1)
    norm = np.sqrt((a * a).sum(axis=axes))
    diff = np.sqrt(((b - a) ** 2).sum(axis=axes))
    live = norm > 1e-12
    return float((diff[live] / norm[live]).mean()) if live.any() else 0.0


def repair_groups(sensitivity: Dict[str, float], steps: int,
                  partners: Optional[Dict[str, List[str]]] = None) -> List[List[str]]:
    """The layers in order of sensitivity, cut into ``steps`` groups growing geometrically (1, 1, 2, 4, ...
    layers, up to a quarter of them in the last group): the few worst layers first, cheaply.  A layer's
    ``partners`` (the other owners of its worst quantization point) join its group.

    >>> repair_groups({"a": 0.5, "b": 0.1, "c": 0.3, "d": 0.0, "e": 0.2}, 3)
    [['a'], ['c'], ['e', 'b']]
    >>> repair_groups({"a": 0.5, "b": 0.1, "c": 0.3}, 2, {"a": ["b"]})
    [['a', 'b'], ['c']]
    """
    partners = partners or {}
    order = sorted(sensitivity, key=lambda n: -sensitivity[n])
    groups: List[List[str]] = []
    taken: set = set()
    size, k = 1, 0
    while len(groups) < steps:
        group: List[str] = []
        for n in order:
            if len(group) >= size:
                break
            if n in taken:
                continue
            for m in [n] + [p for p in partners.get(n, []) if p in sensitivity]:
                if m not in taken:
                    group.append(m)
                    taken.add(m)
        if not group:
            break
        groups.append(group)
        if k >= 1:
            size = min(size * 2, max(1, math.ceil(len(order) / 4)))
        k += 1
    return groups
