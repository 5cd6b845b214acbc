"""A task's extra networks (:attr:`~autotimm_deploy.tasks.base.Task.extra_networks`; instance segmentation's
``mask`` head, which runs on the final detections after NMS): exported, converted to FP16, checked and built as
the main network is, each step as :mod:`.pipeline` calls it.  Their inputs come from the main network's own
PyTorch reference (:meth:`~autotimm_deploy.tasks.instance.InstanceSegmentationTask.network_feeds`)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .. import layout
from ..errors import ExportError
from .run import ExportRun

__all__ = ["export_network", "fp16_network", "parity_network", "network_profile", "MIN_OPSET_ROIALIGN"]

#: RoiAlign's ``coordinate_transformation_mode`` (aligned boxes) exists from opset 16 on.
MIN_OPSET_ROIALIGN = 16


def export_network(r: ExportRun, name: str, reference: Dict[str, np.ndarray]) -> Path:
    """``<name>.onnx``: the task's network ``name`` traced on inputs made from the main network's ``reference``
    output, with the main network's metadata plus ``network``."""
    import onnx
    import torch

    from ..graph import fold_graph, get_metadata, reinfer_shapes, set_metadata

    if r.options.opset < MIN_OPSET_ROIALIGN:
        raise ExportError(f"--opset {r.options.opset}: the {name} network's RoiAlign needs opset "
                          f"{MIN_OPSET_ROIALIGN} or newer (aligned boxes)")
    task = r.task
    module = task.network(r.model, name, export=True).eval()
    inputs, outputs, axes = task.network_io(r.family, name)
    feeds = task.network_feeds(r.model, [reference], [r.size], r.decode, r.options.seed)
    example = feeds[0][1]
    dyn = {k: {a: s for a, s in v.items() if s not in ("height", "width") or r.options.dynamic_hw}
           for k, v in axes.items()}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(example[n]) for n in inputs), buf, input_names=list(inputs),
                          output_names=list(outputs), opset_version=r.options.opset,
                          dynamic_axes={k: v for k, v in dyn.items() if v}, do_constant_folding=True, dynamo=False)
    model = reinfer_shapes(onnx.load_from_string(buf.getvalue()))
    main_meta = get_metadata(onnx.load(str(r.onnx_path), load_external_data=False))
    set_metadata(model, {**main_meta, "network": name, "decode": "raw", "topk": "none"})
    model = fold_graph(model)
    onnx.checker.check_model(model, full_check=True)
    r.network_feeds[name] = feeds
    return r.write_onnx(model, layout.onnx_file(network=name), layout.onnx_role(network=name), "fp32", "raw")


def fp16_network(r: ExportRun, name: str) -> Path:
    """``<name>.fp16.onnx`` with the export's FP32 islands, guarded against overflow on the network's own inputs."""
    import onnx

    from .fp16 import convert_to_fp16_guarded

    fp32 = onnx.load(str(r.out_dir / layout.onnx_file(network=name)))
    m16, plan = convert_to_fp16_guarded(fp32, r.network_feeds[name][:2], r.options.islands(r.family),
                                        guard=r.options.overflow_guard, progress=r.say)
    r.say(f"      {layout.onnx_file('fp16', name)}: {plan.fp16_nodes} nodes FP16, {len(plan.fp32_nodes)} FP32")
    path = r.write_onnx(m16, layout.onnx_file("fp16", name), layout.onnx_role("fp16", name), "fp16", "raw")
    r.entry(path.name)["fp16_plan"] = {"fp16_nodes": plan.fp16_nodes, "fp32_nodes": len(plan.fp32_nodes),
                                       "casts": plan.casts, "overflow_kept_fp32": [str(o) for o in plan.overflow]}
    return path


def parity_network(r: ExportRun, name: str, main_reference: Sequence[Dict[str, np.ndarray]],
                   sizes: Sequence[Tuple[int, int]]) -> List:
    """The network's ONNX files (FP32, FP16) against its PyTorch module, on the boxes the main network's PyTorch
    reference detects on the parity inputs (and seeded random ones)."""
    from ..parity.check import run_parity

    feeds = r.task.network_feeds(r.model, main_reference, sizes, r.decode, r.options.seed)
    reports = []
    for precision in ("fp32", "fp16") if r.options.fp16 else ("fp32",):
        path = r.out_dir / layout.onnx_file(precision, name)
        rep = run_parity(r.model, path, feeds, "raw", precision=precision, network=name, progress=r.say)
        reports.append(rep)
        r.say(f"      {path.name}: {'PASS' if rep.passed else 'FAIL'} ({rep.summary()})")
        r.entry(path.name)["parity"] = "pass" if rep.passed else "fail"
    return reports


def network_profile(onnx_path: Path, main_profile: Dict[str, Tuple], stride: int, max_rois: Tuple[int, int, int]
                    ) -> Dict[str, Tuple]:
    """An engine profile for an extra network's inputs: batch as the main profile's, spatial dims the main input's
    divided by ``stride``, a ``rois`` dim from ``max_rois`` (min, opt, max), static dims as the graph has them."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    lo, opt, hi = main_profile["images"]
    out = {}
    for inp in m.graph.input:
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                shape.append((d, d, d))
            elif d == "batch":
                shape.append((lo[0], opt[0], hi[0]))
            elif d in ("height", "width"):
                k = 2 if d == "height" else 3
                shape.append(tuple(-(-v[k] // stride) for v in (lo, opt, hi)))
            else:
                shape.append(max_rois)
        out[inp.name] = tuple(tuple(s[i] for s in shape) for i in range(3))
    return out
