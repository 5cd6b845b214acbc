"""Automatic FP16 precision repair: the INT8 repair's search (:mod:`.int8_repair`), for an FP16 graph whose parity
against PyTorch fails.

The FP16 nodes are grouped into blocks (their module path: a residual block, an FPN level, a head tower) and each
block gets a sensitivity: on one parity input, how much keeping that block alone in FP32 lowers the worst output
error (:func:`fp16_sensitivity`).  FP16 rounding errors are small at every node and grow through the network, so
what matters is where they are amplified, which this measures and a per-node error does not.  The blocks are kept
in FP32 by that order, a group at a time (:func:`~.repair.repair_groups`), the FP16 graph re-converted and its
parity run again (PyTorch's outputs are cached: only ONNX Runtime runs), until parity passes or the steps are
spent.  This replaces the hand-picked
``--fp32-nodes`` a user would otherwise find by bisection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import onnx

from .._atomic import atomic_write_bytes
from .fp16 import Fp16Plan, convert_to_fp16
from .options import Fp32Islands
from .repair import repair_groups

#: Ops with no float arithmetic of their own: never worth a repair step.
_NOT_FLOAT = {"Shape", "Constant", "ConstantOfShape", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
              "Gather", "Concat", "Slice", "Flatten", "Identity"}

__all__ = ["blocks", "fp16_sensitivity", "repair_fp16", "repair_markdown", "Fp16RepairStep"]


@dataclass
class Fp16RepairStep:
    step: int
    kept_fp32: List[Dict]  # {"block", "nodes", "error_reduction"}
    passed: bool
    summary: str


def blocks(names: Sequence[str], depth: int = 4) -> Dict[str, List[str]]:
    """Node names grouped by their first ``depth`` path components (``/model/backbone/layer2/layer2.0``: a residual
    block), in graph order.

    >>> blocks(["/model/backbone/layer2/layer2.0/conv1/Conv", "/model/backbone/layer2/layer2.0/act1/Relu",
    ...         "/model/fpn/lateral/Conv", "decode_p3/exp"])
    {'/model/backbone/layer2/layer2.0': ['/model/backbone/layer2/layer2.0/conv1/Conv', '/model/backbone/layer2/layer2.0/act1/Relu'], '/model/fpn/lateral': ['/model/fpn/lateral/Conv'], 'decode_p3': ['decode_p3/exp']}
    """
    out: Dict[str, List[str]] = {}
    for n in names:
        parts = n.split("/")
        key = "/".join(parts[: depth + 1]) if n.startswith("/") else "/".join(parts[:depth])
        if key == n:  # a node directly under the prefix: its parent path
            key = n.rsplit("/", 1)[0] or n
        out.setdefault(key, []).append(n)
    return out


def _score(got: Sequence[np.ndarray], ref: Sequence[np.ndarray], atol: Sequence[float]) -> float:
    """The worst output error in units of its FP16 atol."""
    return max(float(np.abs(g.astype(np.float64) - r).max()) / a for g, r, a in zip(got, ref, atol))


def fp16_sensitivity(m32: onnx.ModelProto, islands: Fp32Islands, forced: Sequence[str], fp16_input: bool,
                     groups: Dict[str, List[str]], feed: Dict[str, np.ndarray]) -> Tuple[float, Dict[str, float]]:
    """How much keeping each group (block) in FP32 alone lowers the FP16 graph's worst output error on ``feed``
    (in units of the FP16 atol of each output, against the FP32 graph): an error that grows layer by layer shows
    at the block where it is amplified, which a per-node error would not.  Returns the error with no group kept
    and the reduction per group."""
    import onnxruntime as ort

    from ..parity.check import FP16_TOLERANCES

    def run(model: onnx.ModelProto) -> List[np.ndarray]:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {k: (v.astype(np.float16) if fp16_input and k == "images" else v) for k, v in feed.items()})

    ref = [r.astype(np.float64) for r in run(m32)]
    atol = [FP16_TOLERANCES.for_output(o.name)[0] for o in m32.graph.output]
    base = _score(run(convert_to_fp16(m32, islands, list(forced), fp16_input)[0]), ref, atol)
    sens = {}
    for key, names in groups.items():
        sens[key] = base - _score(run(convert_to_fp16(m32, islands, list(forced) + names, fp16_input)[0]), ref, atol)
    return base, sens


def repair_fp16(m32_path: Path, fp16_path: Path, plan: Fp16Plan, islands: Fp32Islands, fp16_input: bool,
                check: Callable[[], "object"], feed: Dict[str, np.ndarray], steps: int,
                say: Callable[[str], None]) -> Tuple["object", Fp16Plan, List[Fp16RepairStep]]:
    """Keep the blocks whose FP32 precision lowers the output error most in FP32, a group at a time, re-writing
    ``fp16_path`` and calling ``check()`` (the FP16 parity run, returning a report with ``passed`` and
    ``summary()``) after each group.  Returns the last report, the last plan and the steps."""
    m32 = onnx.load(str(m32_path))
    fp32 = set(plan.fp32_nodes)
    float_nodes = [n.name for n in m32.graph.node if n.name not in fp32 and n.op_type not in _NOT_FLOAT]
    grouped = blocks(float_nodes)
    forced = [o.node for o in plan.overflow]
    t = time.time()
    base, sens = fp16_sensitivity(m32, islands, forced, fp16_input, grouped, feed)
    order = repair_groups({k: v for k, v in sens.items() if v > 0}, steps)
    say(f"      FP16 repair: {len(grouped)} blocks measured in {time.time() - t:.1f}s (worst output error "
        f"{base:.3g} x atol); up to {len(order)} groups to keep in FP32")
    kept: List[str] = []
    history: List[Fp16RepairStep] = []
    rep = None
    for k, group in enumerate(order, 1):
        names = [n for key in group for n in grouped[key]]
        kept += names
        say(f"      FP16 repair step {k}/{len(order)}: keeping {', '.join(group)} in FP32 ({len(names)} nodes; error "
            "reduction " + ", ".join(f"{sens[key]:.3g}" for key in group) + " x atol)")
        m16, new_plan = convert_to_fp16(m32, islands, forced + kept, fp16_input)
        new_plan.overflow = plan.overflow
        atomic_write_bytes(fp16_path, m16.SerializeToString())
        del m16
        rep = check()
        history.append(Fp16RepairStep(k, [{"block": key, "nodes": len(grouped[key]), "error_reduction": round(sens[key], 6)}
                                          for key in group], rep.passed, rep.summary()))
        if not rep.passed:  # the passing verdict is the export's own parity line
            say(f"      {fp16_path.name}: FAIL ({rep.summary()})")
        plan = new_plan
        if rep.passed:
            break
    return rep, plan, history


def repair_markdown(steps: Sequence[Dict]) -> str:
    """The FP16 repair's section of parity.md: each step's blocks kept in FP32, their measured error reduction (in
    units of the FP16 atol) and the parity verdict after it (step 0: as converted)."""
    lines = ["# FP16 repair", "", "| step | blocks kept in FP32 (error reduction x atol) | parity |", "|---|---|---|"]
    for s in steps:
        kept = ", ".join(f"`{k['block']}` ({k['error_reduction']:.3g})" for k in s["kept_fp32"]) or "-"
        lines.append(f"| {s['step']} | {kept} | {'pass' if s['passed'] else 'FAIL'}: {s['summary']} |")
    return "\n".join(lines) + "\n"
