"""FP16 ONNX with FP32 islands: the graph a strongly typed TensorRT (11, TensorRT-RTX) builds FP16 from.

TensorRT 11 has no FP16 builder flag: every tensor's type is the type written in the network, so the
precision plan lives in the ONNX graph.  :func:`convert_to_fp16` rewrites a float32 graph so that
weights and activations are float16, except for *FP32 islands*: nodes picked by :class:`Fp32Islands`
(data, not code; see ``DEFAULT_ISLANDS`` and docs/fp16.md) plus any node the overflow guard finds.
``Cast`` nodes are inserted on every edge that crosses a precision boundary; graph outputs stay
float32 by default and the input is float32 with a Cast unless ``fp16_input=True``.

:func:`find_overflows` is the guard: it measures the value range of every intermediate tensor of the float32
graph on the probes (:mod:`.ranges`) and lists the nodes whose inputs or outputs leave the FP16 range (with a
safety margin).
:func:`convert_to_fp16_guarded` keeps those nodes in FP32, converts, runs the FP16 graph on the same
probes and, if any output is still inf/NaN, keeps the first node producing a non-finite value in
FP32 too, until the graph is finite.  Everything it kept is reported.

>>> import onnx, numpy as np
>>> from onnx import helper, TensorProto
>>> w = onnx.numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
>>> g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
...                        helper.make_node("Exp", ["y"], ["z"], name="exp")], "g",
...                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
...                       [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])], [w])
>>> m16, plan = convert_to_fp16(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
>>> [n.op_type for n in m16.graph.node]
['Cast', 'MatMul', 'Cast', 'Exp']
>>> plan.fp32_nodes, m16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
(['exp'], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import ExportError
from .onnx_export import reinfer_shapes, set_metadata
from .options import DEFAULT_ISLANDS, Fp32Islands
from .ranges import measure_ranges
from .repair import run_tensors

__all__ = ["Fp32Islands", "DEFAULT_ISLANDS", "Fp16Plan", "Overflow", "convert_to_fp16", "find_overflows",
           "convert_to_fp16_guarded", "FP16_MAX", "probe_inputs"]

FP16_MAX = float(np.finfo(np.float16).max)  # 65504

# Inputs that the ONNX spec types independently of the node's data type: never converted.
_KEEP_INPUTS: Dict[str, Set[int]] = {"Resize": {1, 2}, "Upsample": {1}, "Pow": {1}}
# Ops whose float output type comes from an attribute or that accept any type: left untouched.
_PASSTHROUGH = {"Cast", "CastLike", "Constant", "ConstantOfShape", "Shape", "Size", "RandomNormal", "RandomUniform",
                "RandomNormalLike", "RandomUniformLike", "EyeLike", "NonZero"}


@dataclass
class Overflow:
    """A node kept in FP32 by the overflow guard."""

    node: str
    op: str
    max_abs: float  # largest |value| seen in FP32 on the probes (inf when found by the FP16 run)
    tensor: str
    probe: str

    def __str__(self) -> str:
        v = "inf/NaN in FP16" if not np.isfinite(self.max_abs) else f"|x| up to {self.max_abs:.4g}"
        return f"{self.node} ({self.op}): {v} at {self.tensor} on {self.probe}"


@dataclass
class Fp16Plan:
    """What :func:`convert_to_fp16` did."""

    fp16_nodes: int = 0
    fp32_nodes: List[str] = field(default_factory=list)  # float nodes kept FP32 (islands + forced)
    casts: int = 0
    overflow: List[Overflow] = field(default_factory=list)
    islands: Dict[str, List[str]] = field(default_factory=dict)
    fp16_input: bool = False
    fp32_outputs: bool = True
    repair: List[Dict] = field(default_factory=list)  # the FP16 repair's steps (exporters.fp16_repair), if it ran

    def to_dict(self) -> Dict:
        return {"fp16_nodes": self.fp16_nodes, "fp32_nodes": self.fp32_nodes, "casts": self.casts,
                "overflow_kept_fp32": [vars(o) for o in self.overflow], "islands": self.islands,
                "fp16_input": self.fp16_input, "fp32_outputs": self.fp32_outputs, "repair": self.repair}


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) == np.float32


def convert_to_fp16(
    model: onnx.ModelProto,
    islands: Fp32Islands = DEFAULT_ISLANDS,
    force_fp32: Sequence[str] = (),
    fp16_input: bool = False,
    fp32_outputs: bool = True,
) -> Tuple[onnx.ModelProto, Fp16Plan]:
    """Return an FP16 copy of ``model`` (float32) and its :class:`Fp16Plan`.

    ``force_fp32`` names extra nodes to keep in FP32 (the overflow guard's findings).  Constants
    consumed by both FP16 and FP32 nodes are stored once per precision.
    """
    model = reinfer_shapes(model)  # every intermediate gets a dtype
    graph = gs.import_onnx(model)
    if any(np.dtype(t.dtype) == np.float16 for t in graph.inputs + graph.outputs if t.dtype is not None):
        raise ExportError("the model already has float16 inputs or outputs; convert_to_fp16 takes a float32 graph")
    forced = set(force_fp32)
    unknown = forced - {n.name for n in graph.nodes}
    if unknown:
        raise ExportError(f"nodes to keep in FP32 not found in the graph: {sorted(unknown)}")
    plan = Fp16Plan(islands=islands.to_dict(), fp16_input=fp16_input, fp32_outputs=fp32_outputs)
    dtype: Dict[str, type] = {}  # current dtype of every float tensor, by name
    casts: Dict[Tuple[str, type], gs.Variable] = {}
    const16: Dict[str, gs.Constant] = {}
    new_nodes: List[gs.Node] = []

    for inp in graph.inputs:
        if _is_float(inp):
            if fp16_input:
                inp.dtype = np.float16
            dtype[inp.name] = inp.dtype

    def cast(t: gs.Variable, to: type) -> gs.Variable:
        key = (t.name, to)
        if key not in casts:
            suffix = "fp16" if to == np.float16 else "fp32"
            out = gs.Variable(f"{t.name}/{suffix}", dtype=to, shape=t.shape)
            new_nodes.append(gs.Node("Cast", f"{t.name}/cast_{suffix}", {"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(to))},
                                     inputs=[t], outputs=[out]))
            casts[key] = out
        return casts[key]

    graph.toposort()
    for node in list(graph.nodes):
        float_io = [t for t in node.inputs + node.outputs if _is_float(t) or dtype.get(t.name) == np.float16]
        if not float_io:
            continue
        if node.op in _PASSTHROUGH:
            for o in node.outputs:  # any input type is accepted; the output type is the node's own
                if _is_float(o):
                    dtype[o.name] = np.float32
            continue
        subgraph = any(isinstance(v, gs.Graph) for v in node.attrs.values())
        constant_too_big = any(isinstance(t, gs.Constant) and _is_float(t) and t.values.size
                               and float(np.abs(t.values).max()) > FP16_MAX for t in node.inputs)
        want = np.float32 if (islands.matches(node) or node.name in forced or subgraph or constant_too_big
                              or (node.domain or "") not in ("", "ai.onnx")) else np.float16
        keep = _KEEP_INPUTS.get(node.op, set())
        for i, t in enumerate(node.inputs):
            if i in keep or t.name == "":
                continue
            if isinstance(t, gs.Constant):
                if _is_float(t) and want == np.float16:
                    if t.name not in const16:
                        const16[t.name] = gs.Constant(f"{t.name}/fp16", t.values.astype(np.float16))
                    node.inputs[i] = const16[t.name]
                continue
            have = dtype.get(t.name)
            if have is not None and have != want:
                node.inputs[i] = cast(t, want)
        for o in node.outputs:
            if _is_float(o):
                o.dtype = want
                dtype[o.name] = want
        if want == np.float16:
            plan.fp16_nodes += 1
        else:
            plan.fp32_nodes.append(node.name)

    if fp32_outputs:
        for k, out in enumerate(graph.outputs):
            if dtype.get(out.name) == np.float16:
                name = out.name
                out.name = f"{name}/fp16"
                final = gs.Variable(name, dtype=np.float32, shape=out.shape)
                new_nodes.append(gs.Node("Cast", f"{name}/cast_fp32", {"to": onnx.TensorProto.FLOAT},
                                         inputs=[out], outputs=[final]))
                graph.outputs[k] = final
    graph.nodes.extend(new_nodes)
    plan.casts = sum(1 for n in new_nodes if n.op == "Cast")
    graph.cleanup().toposort()
    out_model = gs.export_onnx(graph)
    out_model.ir_version = model.ir_version
    del out_model.metadata_props[:]
    out_model.metadata_props.extend(model.metadata_props)
    del out_model.graph.value_info[:]
    out_model = reinfer_shapes(out_model)
    onnx.checker.check_model(out_model, full_check=True)
    set_metadata(out_model, {"precision": "fp16", "fp32_islands": ",".join(plan.fp32_nodes)[:4000]})
    return out_model, plan


def probe_inputs(shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 seed: int = 0) -> List[Tuple[str, np.ndarray]]:
    """Extreme but valid normalised images for the overflow guard: all black, all white, a one-pixel
    black/white checkerboard (maximal edge responses) and uniform noise over the full pixel range."""
    mean_a = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std_a = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    norm = lambda x: ((x - mean_a) / std_a).astype(np.float32)
    b, c, h, w = shape
    rng = np.random.default_rng(seed)
    checker = ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2).astype(np.float32)
    return [
        ("black", norm(np.zeros(shape, np.float32))),
        ("white", norm(np.ones(shape, np.float32))),
        ("checkerboard", norm(np.broadcast_to(checker, shape).copy())),
        ("uniform noise", norm(rng.uniform(0, 1, size=shape).astype(np.float32))),
    ]


def find_overflows(model: onnx.ModelProto, probes: Sequence[Tuple[str, Dict[str, np.ndarray]]],
                   margin: float = 2.0, progress: Optional[Callable[[str], None]] = None) -> List[Overflow]:
    """Nodes of the float32 ``model`` with an input or output whose |value| exceeds ``FP16_MAX / margin``
    on any probe.  ``margin`` 2 leaves room for inputs a little more extreme than the probes."""
    model = reinfer_shapes(model)  # a fresh copy, ours to change
    limit = FP16_MAX / margin
    nodes = [(n.name, n.op_type, list(n.input) + list(n.output)) for n in model.graph.node]
    float_vi = {v.name for v in list(model.graph.value_info) + list(model.graph.output)
                if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names = sorted({t for n in model.graph.node for t in n.output if t in float_vi})
    found: Dict[str, Overflow] = {}
    say = progress or (lambda line: None)
    announce = lambda k: say(f"      overflow guard: FP32 probe {k + 1}/{len(probes)} ({probes[k][0]})")  # noqa: E731
    ranges = measure_ranges(model, [feed for _, feed in probes], names, announce)
    del model
    for (label, feed), values in zip(probes, ranges):
        big = {t: max(abs(lo), abs(hi)) for t, (lo, hi) in values.items() if max(abs(lo), abs(hi)) > limit}
        for name, op, io in nodes:
            if op in _PASSTHROUGH:
                continue
            for t in io:
                if t in big and name not in found:
                    found[name] = Overflow(name, op, big[t], t, label)
    order = {name: i for i, (name, _, _) in enumerate(nodes)}
    return sorted(found.values(), key=lambda o: order[o.node])


def convert_to_fp16_guarded(
    model: onnx.ModelProto,
    probes: Sequence[Tuple[str, Dict[str, np.ndarray]]],
    islands: Fp32Islands = DEFAULT_ISLANDS,
    fp16_input: bool = False,
    fp32_outputs: bool = True,
    margin: float = 2.0,
    max_rounds: int = 20,
    guard: bool = True,
    progress: Optional[Callable[[str], None]] = None,
) -> Tuple[onnx.ModelProto, Fp16Plan]:
    """:func:`convert_to_fp16` plus the overflow guard (see the module docstring)."""
    if not guard:
        return convert_to_fp16(model, islands, (), fp16_input, fp32_outputs)
    over = find_overflows(model, probes, margin, progress)
    forced = [o.node for o in over]
    for _ in range(max_rounds):
        m16, plan = convert_to_fp16(model, islands, forced, fp16_input, fp32_outputs)
        bad = _first_nonfinite(m16, model, probes, fp16_input, progress)
        if bad is None:
            plan.overflow = over
            return m16, plan
        if bad.node in forced:
            break
        over.append(bad)
        forced.append(bad.node)
    raise ExportError("FP16 conversion still produces inf/NaN after keeping these nodes in FP32: "
                      + "; ".join(str(o) for o in over) + ". Export without --fp16, or keep more ops in FP32 "
                      "with --fp32-ops / --fp32-nodes")


def _first_nonfinite(m16: onnx.ModelProto, m32: onnx.ModelProto, probes, fp16_input: bool,
                     progress: Optional[Callable[[str], None]] = None) -> Optional[Overflow]:
    """First node of the original graph (in the FP16 model's order) reading or writing a non-finite
    tensor, or None when every output is finite on every probe."""
    original = {n.name for n in m32.graph.node}
    import onnxruntime as ort

    sess = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o for n in m16.graph.node for o in n.output]
    for i, (label, feed) in enumerate(probes):
        if progress is not None:
            progress(f"      overflow guard: FP16 check {i + 1}/{len(probes)} ({label})")
        feed = {k: (v.astype(np.float16) if fp16_input else v) for k, v in feed.items()}
        if all(np.isfinite(v).all() for v in sess.run(None, feed) if v.dtype.kind == "f"):
            continue
        values = {**feed, **run_tensors(m16, feed, names, default_type=None)}  # only now: expose every tensor
        bad = lambda t: t in values and values[t].dtype.kind == "f" and not np.isfinite(values[t]).all()
        for n in m16.graph.node:
            if n.name in original:
                t = next((t for t in list(n.input) + list(n.output) if bad(t)), None)
                if t is not None:
                    return Overflow(n.name, n.op_type, float("inf"), t, label)
        raise ExportError(f"the FP16 graph has inf/NaN outputs on probe {label!r} that no node explains")
    return None
