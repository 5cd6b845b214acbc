"""The INT8 accuracy gate and the automatic precision repair.

**Gate.**  An INT8 graph is checked against the PyTorch model on the evaluation folder with the ``int8`` rules of
``autotimm-parity`` (:mod:`autotimm_deploy.parity.thresholds`): the tensor level is reported for information,
the detection level (PyTorch's detections matched at IoU 0.5) and the task level (mAP@0.5:0.95 and mAP@0.5, or
top-1, at most ``max_drop`` points below PyTorch FP32 on the same images) decide.

**Repair.**  When the gate fails, each quantized layer's sensitivity is measured on a few calibration images: the
largest relative error of the quantization points (Q/DQ pairs) it owns, on its input and output activations and
its weights (:func:`layer_sensitivity`).  The layers are ranked by that number and kept in FP32 one group at a time, most sensitive first (the tensor ranges come from the one
calibration, so a step costs a re-quantization of a few seconds and one gate run), until the gate passes, or
``max_steps`` groups were tried: then the export fails with what was tried.  Every step is recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from .repair import channel_error, repair_groups, run_tensors

__all__ = ["GateResult", "RepairStep", "gate", "layer_sensitivity", "repair_groups", "DEFAULT_REPAIR_STEPS"]

#: Ops through which a quantization point's owners are looked for: ONNX Runtime quantizes them with their input's
#: scale (or they only move values).
_KEEPS_SCALE = {"Relu", "MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Resize",
                "Slice", "Concat", "Split", "QuantizeLinear", "DequantizeLinear", "Clip", "GlobalAveragePool",
                "AveragePool", "Add"}

#: Groups of layers the repair may move back to FP32 before it gives up.
DEFAULT_REPAIR_STEPS = 6


@dataclass
class GateResult:
    """One INT8 graph on the evaluation folder."""

    passed: bool
    levels: Dict[str, str]  # level -> status
    messages: Dict[str, str]
    metrics: Dict[str, float]
    reference_metrics: Dict[str, float]
    metric: str = ""  # the task's gated metric (its first metric key: mAP@0.5:0.95, top-1, mIoU, mask mAP)

    def drop_points(self) -> Optional[float]:
        """The task metric's drop against PyTorch FP32, in points."""
        key = self.metric
        if key not in self.metrics or key not in self.reference_metrics:
            return None
        return round(100 * (self.reference_metrics[key] - self.metrics[key]), 3)

    def summary(self) -> str:
        drop = self.drop_points()
        text = ", ".join(f"{lv} {st}" for lv, st in self.levels.items())
        return text + (f"; task metric drop {drop:+.2f} points" if drop is not None else "")


@dataclass
class RepairStep:
    """One step of the repair: the layers moved back to FP32 in it, and the gate after it."""

    step: int
    kept_fp32: List[Dict]  # {"node", "quant_error"}
    gate: Dict[str, Dict]  # form -> GateResult as a dict
    passed: bool


def gate(model_path, loaded, artifact: Path, eval_dir, max_drop: float, reference_cache: Dict,
         annotations=None, limit: Optional[int] = None, task_gate: bool = True) -> GateResult:
    """Check one INT8 graph on ``eval_dir`` (see the module docstring).  With ``task_gate`` a task level that did not
    run (no annotations) fails the gate: an accuracy gate that did not measure does not pass."""
    from ..parity.suite import check_artifacts
    from ..parity.thresholds import load_thresholds

    from ..tasks import task_of

    task = task_of(loaded.family)
    th = load_thresholds(overrides={"int8": {"task": {task.points_field: max_drop}}})
    res = check_artifacts(model_path, [artifact], data=eval_dir, annotations=annotations, limit=limit, thresholds=th,
                          progress=None, loaded=loaded, reference_cache=reference_cache)
    a = res.artifacts[0]
    levels = {lv.level: lv.status for lv in a.levels}
    passed = res.passed and not (task_gate and levels.get("task") != "pass")
    return GateResult(passed=passed, levels=levels,
                      messages={lv.level: lv.message for lv in a.levels}, metrics=dict(a.metrics),
                      reference_metrics=dict(a.reference_metrics), metric=task.metric_keys[0])


def layer_sensitivity(fp32: onnx.ModelProto, int8: onnx.ModelProto, nodes: Sequence[str],
                      feed: Dict[str, np.ndarray]) -> Tuple[Dict[str, float], Dict[str, List[str]]]:
    """Per quantized node: the largest relative error that one of its quantization points makes, on ``feed``, and
    the other nodes owning that point (all of them must stay FP32 for the point to go).

    A quantization point is a QuantizeLinear/DequantizeLinear pair of the INT8 graph: its error is
    ||DQ(Q(x)) - x|| / ||x|| per channel (:func:`~.repair.channel_error`) for the activation x it reads (in the INT8 graph
    itself), or, for a weight, the
    dequantized INT8 weight against the FP32 one.  A node owns the points on its inputs (their DQ feeds it,
    directly or through ops that keep the scale, such as a ReLU, and through further Q/DQ pairs: ONNX Runtime
    gives a ReLU's output its input's scale, so the damage of a stretched range is done where the values are first
    put on the grid) and on its outputs.  An outlier channel that stretches a tensor's per-tensor
    range shows up here as the large error it is, at the layers on both sides of the tensor."""
    producer = {o: n for n in int8.graph.node for o in n.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in int8.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    wanted = set(nodes)

    def through(t: str, forward: bool) -> List[onnx.NodeProto]:
        """The nodes next to tensor ``t``, seen through Q/DQ pairs (transparent here)."""
        if forward:
            return list(consumers.get(t, []))
        p = producer.get(t)
        return [p] if p is not None else []

    def owners_of(q: onnx.NodeProto, dq: onnx.NodeProto) -> set:
        """Quantized nodes reached from this point within a few ops, through ops that keep its scale (ReLU,
        pooling, reshapes) and through further Q/DQ pairs: keeping all of them in FP32 removes the point."""
        found: set = set()
        for start, forward in ((dq.output[0], True), (q.input[0], False)):
            frontier, seen = [start], set()
            for _ in range(6):
                nxt = []
                for t in frontier:
                    for n in through(t, forward):
                        if n.name in seen:
                            continue
                        seen.add(n.name)
                        if n.name in wanted:
                            found.add(n.name)
                        elif n.op_type in _KEEPS_SCALE:
                            nxt += list(n.output) if forward else [n.input[0]]
                frontier = nxt
        return found

    points = []  # (x, x_hat, owners)
    for q in (n for n in int8.graph.node if n.op_type == "QuantizeLinear"):
        for dq in (c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"):
            owners = owners_of(q, dq)
            if owners:
                points.append((q.input[0], dq.output[0], owners))
    names = sorted({t for x, xh, _ in points for t in (x, xh)} - set(feed))
    vals = {**feed, **run_tensors(int8, feed, names)}
    sens = {n: 0.0 for n in nodes}
    partners: Dict[str, List[str]] = {n: [] for n in nodes}
    for x, xh, owners in points:
        err = channel_error(vals[x], vals[xh])
        for o in owners:
            if err > sens[o]:
                sens[o], partners[o] = err, sorted(owners - {o})
    # weights: stored as INT8 initializers behind a DequantizeLinear
    w32 = {i.name: onnx.numpy_helper.to_array(i) for i in fp32.graph.initializer}
    by_name = {n.name: n for n in fp32.graph.node}
    inits = {i.name: i for i in int8.graph.initializer}
    for n in int8.graph.node:
        if n.name not in wanted or len(n.input) < 2:
            continue
        dq = producer.get(n.input[1])
        orig = by_name.get(n.name)
        if dq is None or dq.op_type != "DequantizeLinear" or orig is None or orig.input[1] not in w32:
            continue
        wq = onnx.numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        w = w32[orig.input[1]].astype(np.float64)
        shape = [-1] + [1] * (w.ndim - 1) if scale.ndim == 1 and scale.size == w.shape[0] else [1] * w.ndim
        err = float(np.linalg.norm(wq * scale.reshape(shape) - w) / max(np.linalg.norm(w), 1e-12))
        if err > sens[n.name]:
            sens[n.name], partners[n.name] = err, []
    return sens, partners


def step_record(step: int, group: Sequence[str], sensitivity: Dict[str, float], gates: Dict[str, GateResult],
                passed: bool) -> RepairStep:
    return RepairStep(step, [{"node": n, "quant_error": round(sensitivity.get(n, float("nan")), 6)} for n in group],
                      {form: asdict(g) | {"drop_points": g.drop_points()} for form, g in gates.items()}, passed)


def describe_kept(steps: Sequence[RepairStep]) -> List[Dict]:
    """Every layer the repair kept in FP32, with its measured quantization error and the step that kept it."""
    return [dict(k, step=s.step) for s in steps for k in s.kept_fp32]


@dataclass
class Int8Report:
    """What the INT8 stage did: recorded in the manifest and the parity report."""

    method: str
    calibration: Dict
    evaluation: Dict
    protected: List[str]
    quantized_layers: int
    forms: Dict[str, Dict] = field(default_factory=dict)  # form -> {file, runtime, gate, ...}
    steps: List[RepairStep] = field(default_factory=list)
    passed: bool = False
    seconds: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["kept_fp32"] = describe_kept(self.steps)
        return d


def int8_markdown(report: Int8Report) -> str:
    """The INT8 section of parity.md: the gate per form and step, and every layer kept in FP32 with why."""
    lines = [f"# INT8 accuracy gate ({report.method} calibration on {report.calibration['images']} images of "
             f"`{report.calibration['folder']}`; evaluated on `{report.evaluation['folder']}`"
             + (", the same folder: optimistic" if report.evaluation["same_as_calibration"] else "") + ")", "",
             f"{report.quantized_layers} layers quantized; {len(report.protected)} nodes never quantized (FP32 islands "
             "and head outputs). Max drop allowed: "
             f"{report.evaluation['max_drop_points']:g} points.", "",
             "| step | layers kept in FP32 (quantization error) | form | detection | task | drop (points) |",
             "|---|---|---|---|---|---|"]
    for s in report.steps:
        kept = ", ".join(f"`{k['node']}` ({k['quant_error']:.3g})" for k in s.kept_fp32) or "-"
        for form, g in s.gate.items():
            lines.append(f"| {s.step} | {kept} | {form} | {g['levels'].get('detection', '-')} | "
                         f"{g['levels'].get('task', '-')} | {g['drop_points'] if g['drop_points'] is not None else '-'} |")
    lines.append("")
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines) + "\n"
