"""The INT8 stage of the export pipeline: calibrate once, write both INT8 forms, gate them on the evaluation
folder and, when the gate fails, repair (:mod:`.int8_repair`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import onnx

from .._atomic import atomic_write_bytes, remove_file, sha256_file
from ..errors import ExportError
from ..models.loaded import LoadedModel
from .int8 import INT8_FORMS, calibration_set, protected_nodes, quantizable_nodes, quantize_int8
from .int8_repair import Int8Report, gate, layer_sensitivity, repair_groups, step_record
from .onnx_export import set_metadata
from .options import ExportOptions

__all__ = ["int8_step", "CALIBRATION_FILE"]

#: ONNX Runtime's calibration cache (tensor ranges), kept with the export: both forms and every repair step
#: were quantized from it.
CALIBRATION_FILE = "int8.calibration.json"


def _write_forms(onnx_path: Path, out_dir: Path, calib, options: ExportOptions, cache: Path, exclude: List[str],
                 meta: Dict[str, str], say) -> Dict[str, Path]:
    paths = {}
    for form in INT8_FORMS:
        q = quantize_int8(onnx_path, form, calib, options.calib_method, cache, exclude,
                          progress=say)
        set_metadata(q, meta)
        atomic_write_bytes(out_dir / form.file, q.SerializeToString())
        paths[form.name] = out_dir / form.file
    return paths


def int8_step(say: Callable[[str], None], options: ExportOptions, loaded: LoadedModel,
              model_path, onnx_path: Path, out_dir: Path, size: Tuple[int, int]) -> Tuple[Int8Report, List[Dict]]:
    """Write ``model.int8.onnx`` and ``model.int8-cpu.onnx`` next to ``onnx_path`` (the FP32 ONNX, decode fused) and
    return the report and the manifest entries.  Raises :class:`ExportError` when the gate still fails after
    ``options.int8_repair_steps`` repair steps."""
    t0 = time.time()
    family = loaded.family
    same = Path(options.calib).resolve() == Path(options.int8_eval).resolve()
    if same:
        say("      note: the evaluation folder is the calibration folder: the gate measures on the images the ranges "
            "were fitted to, which flatters INT8; pass a held-out --int8-eval")
    class_names = loaded.metadata.get("class_names") or [f"class_{i}" for i in range(loaded.model.num_classes)]
    calib = calibration_set(options.calib, loaded.task, class_names, size, loaded.metadata["mean"],
                            loaded.metadata["std"], family.preprocess, options.calib_count, batch=options.batch[0],
                            progress=None)
    say(f"      {calib.images} calibration images read (SHA-256 {calib.sha256[:12]})")
    fp32 = onnx.load(str(onnx_path))
    raw = family.output_names(len(getattr(loaded.model, "strides", ())))  # the family's raw outputs (classifiers: logits)
    protected = protected_nodes(fp32, raw, options.islands(family))
    quantized = quantizable_nodes(fp32, protected)
    cache = out_dir / CALIBRATION_FILE
    remove_file(cache)  # ranges from this run's images only
    meta = {"calibration": json.dumps({"method": options.calib_method, "images": calib.images,
                                       "sha256": calib.sha256}, sort_keys=True)}
    report = Int8Report(options.calib_method,
                        {"folder": str(options.calib), "images": calib.images, "sha256": calib.sha256,
                         "method": options.calib_method},
                        {"folder": str(options.int8_eval), "same_as_calibration": same,
                         "max_drop_points": options.int8_max_drop},
                        protected, len(quantized))
    t = time.time()
    paths = _write_forms(onnx_path, out_dir, calib, options, cache, protected, meta, say)
    report.seconds["calibrate_and_quantize"] = round(time.time() - t, 2)
    say(f"      {len(quantized)} layers quantized; kept in FP32: {len(protected)} nodes (islands and head outputs)")
    reference_cache: Dict = {}

    def run_gates() -> Dict:
        out = {}
        for name, p in paths.items():
            out[name] = gate(model_path, loaded, p, options.int8_eval, options.int8_max_drop, reference_cache,
                             task_gate=options.int8_task_gate)
            say(f"      gate {p.name}: {'PASS' if out[name].passed else 'FAIL'} ({out[name].summary()})")
        return out

    t = time.time()
    gates = run_gates()
    report.steps.append(step_record(0, [], {}, gates, all(g.passed for g in gates.values())))
    kept: List[str] = []
    if not report.steps[-1].passed:
        feed = {"images": calib.batches[0][: max(options.batch[0], min(4, calib.batches[0].shape[0]))]}
        sens, partners = layer_sensitivity(fp32, onnx.load(str(paths["tensorrt"])), quantized, feed)
        groups = repair_groups(sens, options.int8_repair_steps, partners)
        for k, group in enumerate(groups, 1):
            if len(set(kept + group)) >= len(quantized):  # nothing would be left in INT8: the gate fails as it is
                say(f"      repair step {k}: it would keep every quantized layer in FP32; stopping")
                break
            kept += group
            say(f"      repair step {k}/{len(groups)}: keeping {', '.join(group)} in FP32 (quantization error "
                + ", ".join(f"{sens[n]:.3g}" for n in group) + ")")
            meta["int8_kept_fp32"] = ",".join(kept)[:4000]
            paths = _write_forms(onnx_path, out_dir, None, options, cache, protected + kept, meta, say)
            gates = run_gates()
            report.steps.append(step_record(k, group, sens, gates, all(g.passed for g in gates.values())))
            if report.steps[-1].passed:
                break
    report.seconds["gate_and_repair"] = round(time.time() - t, 2)
    report.seconds["total"] = round(time.time() - t0, 2)
    report.passed = report.steps[-1].passed
    if not report.passed:
        last = report.steps[-1]
        why = "; ".join(f"{form}: " + ", ".join(f"{lv} {st}" for lv, st in g["levels"].items() if lv != "tensor")
                        + f", drop {g['drop_points']} points" for form, g in last.gate.items())
        err = ExportError(f"INT8 fails the accuracy gate (max drop {options.int8_max_drop:g} points) after "
                          f"{len(report.steps) - 1} repair steps keeping {len(kept)} layers in FP32 ({why}); raise "
                          "--int8-repair-steps or --int8-max-drop, calibrate on more representative --calib images, "
                          "or export without --int8")
        err.int8_report = report.to_dict()  # every step's gate, for callers of the Python API
        err.exit_code = 1  # a parity verdict, not a usage error
        raise err
    for form in INT8_FORMS:
        report.forms[form.name] = {"file": form.file, "runtime": form.runtime,
                                   "gate": report.steps[-1].gate[form.name]}
    artifacts = [{"role": "onnx-int8" if form.name == "tensorrt" else "onnx-int8-cpu", "file": form.file,
                  "precision": "int8", "int8_form": form.name, "runtime": form.runtime,
                  "sha256": sha256_file(out_dir / form.file), "parity": "pass"} for form in INT8_FORMS]
    artifacts.append({"role": "int8-calibration-cache", "file": CALIBRATION_FILE})
    return report, artifacts
