"""ONNX graph helpers every task's graph-surgery passes use (onnx-graphsurgeon): small named edits in the
disconnect -> insert -> ``cleanup().toposort()`` pattern, export with constant folding and re-inferred shapes, and
the ONNX ``metadata_props`` an export carries.  The passes themselves belong to the tasks
(:mod:`autotimm_deploy.tasks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnx_graphsurgeon as gs

__all__ = ["import_graph", "export_graph", "share_identical_constants", "fold_graph", "reinfer_shapes", "set_metadata",
           "get_metadata", "graph_outputs", "detach_output", "single", "activate_output", "to_bnc",
           "ONNX_ACTIVATION"]


def reinfer_shapes(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Drop stale value_info (the legacy exporter writes wrong dims) and re-infer with data propagation."""
    import onnx

    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def set_metadata(model: "onnx.ModelProto", meta: Dict[str, str]) -> None:
    """Replace/insert ``metadata_props`` entries (keys sorted for deterministic files)."""
    current = {p.key: p.value for p in model.metadata_props}
    current.update(meta)
    del model.metadata_props[:]
    for k in sorted(current):
        p = model.metadata_props.add()
        p.key, p.value = k, str(current[k])


def get_metadata(model: "onnx.ModelProto") -> Dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def import_graph(model: "onnx.ModelProto") -> "gs.Graph":
    import onnx_graphsurgeon as gs

    return gs.import_onnx(model)


def export_graph(graph: "gs.Graph", template: "onnx.ModelProto") -> "onnx.ModelProto":
    """Export ``graph``, fold constants, copy the template's metadata/opsets and re-infer shapes."""
    import onnx
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # folding runs ONNX Runtime, whose optimiser warnings are noise here
    graph.fold_constants().cleanup()
    share_identical_constants(graph).toposort()
    model = gs.export_onnx(graph)
    model.ir_version = template.ir_version
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    model = reinfer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def share_identical_constants(graph: "gs.Graph") -> "gs.Graph":
    """One constant per distinct value: folding turns each use of a shared weight (the head is shared by the
    five levels; the exporter reaches it through one Identity per use) into its own copy, which made fused
    graphs up to 37 % larger than the raw export."""
    import hashlib

    import onnx_graphsurgeon as gs

    kept: Dict[tuple, gs.Constant] = {}
    names: Dict[str, gs.Constant] = {}
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant):
                arr = np.asarray(t.values)  # not ascontiguousarray: it makes a 0-d scalar 1-d
                key = (arr.dtype.str, arr.shape, hashlib.sha256(arr.tobytes()).digest())
                if key not in kept:
                    while names.get(t.name, t) is not t:  # two different constants with one name: keep both
                        t.name = f"{t.name}_{len(names)}"
                    kept[key] = names[t.name] = t
                node.inputs[i] = kept[key]
    return graph.cleanup()


def fold_graph(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Constant folding and shared constants only: subgraphs on constants leave the graph, e.g. NF-Net's weight
    standardisation, a training-mode BatchNormalization on the conv weights that TensorRT cannot parse."""
    return export_graph(import_graph(model), model)


def graph_outputs(graph: "gs.Graph") -> Dict[str, "gs.Variable"]:
    return {t.name: t for t in graph.outputs}


def detach_output(graph: "gs.Graph", out: "gs.Variable", suffix: str) -> "gs.Variable":
    """Rename the producer's tensor to ``<name>_<suffix>`` and free ``out``'s name for a new graph output."""
    import onnx_graphsurgeon as gs

    name = out.name
    out.name = f"{name}_{suffix}"
    new = gs.Variable(name, dtype=out.dtype, shape=out.shape)
    graph.outputs[graph.outputs.index(out)] = new
    return new


def single(graph: "gs.Graph", op: str, inputs, name: str, attrs=None, dtype=np.float32) -> "gs.Variable":
    """One node ``<name>/<op>`` with one output tensor ``name``."""
    import onnx_graphsurgeon as gs

    (out,) = graph.layer(op=op, name=f"{name}/{op}", inputs=inputs, outputs=[gs.Variable(name, dtype=dtype)],
                         attrs=attrs or {})
    return out


#: A family's declared activations as ONNX ops.
ONNX_ACTIVATION = {"sigmoid": "Sigmoid", "exp": "Exp", "softmax": "Softmax", "identity": "Identity"}


def activate_output(graph: "gs.Graph", x: "gs.Variable", output, name: str,
                    out: Optional["gs.Variable"] = None) -> "gs.Variable":
    """``output``'s declared activation on ``x`` (a family's :class:`~autotimm_deploy.models.family.RawOutput`) (``Min(x, clamp_max)`` first when declared; softmax over the
    channel axis); into ``out`` if given."""
    import onnx_graphsurgeon as gs

    if output.clamp_max is not None:
        hi = gs.Constant(f"{name}/clamp_max", np.array(output.clamp_max, dtype=np.float32))
        x = single(graph, "Min", [x, hi], f"{name}/clamped")
    op = ONNX_ACTIVATION[output.activation]
    attrs = {"axis": 1} if op == "Softmax" else {}
    if out is None:
        return x if op == "Identity" else single(graph, op, [x], f"{name}/{op.lower()}", attrs=attrs)
    graph.layer(op=op, name=f"{out.name}/{op}", inputs=[x], outputs=[out], attrs=attrs)
    return out


def to_bnc(graph: "gs.Graph", x: "gs.Variable", channels: int, name: str) -> "gs.Variable":
    """(B, C, H, W) -> (B, H*W, C)."""
    import onnx_graphsurgeon as gs

    shape = gs.Constant(f"{name}/shape", np.array([0, channels, -1], dtype=np.int64))
    r = single(graph, "Reshape", [x, shape], f"{name}/flat")
    return single(graph, "Transpose", [r], f"{name}/bnc", attrs={"perm": [0, 2, 1]})
