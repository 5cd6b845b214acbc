"""The export pipeline as a Python API: model file -> ONNX -> graph surgery -> FP16 / INT8 -> parity -> engine ->
manifest, as small named steps (:data:`STEPS`) over one :class:`~.run.ExportRun`, each announced as a structured
progress event (:mod:`.events`).  What is task-specific (outputs, decode passes, reference, agreement) the model's
task says (:mod:`autotimm_deploy.tasks`); file names come from :mod:`autotimm_deploy.layout`.

>>> from autotimm_deploy.demo import demo_model_path
>>> import tempfile
>>> manifest = export_model(demo_model_path("detector"), tempfile.mkdtemp(), ExportOptions(engine="none"), progress=None)
>>> manifest["parity"]["passed"], [a["role"] for a in manifest["artifacts"]][:2]
(True, ['onnx-raw', 'onnx'])
>>> [s.name for s in STEPS]
['load', 'export', 'surgery', 'fp16', 'int8', 'parity', 'engine']
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from .. import _json as strict_json
from .. import __version__, layout
from .._atomic import atomic_write_text, cleanup_tmp, folder_lock, remove_file, sha256_file
from .._memory import release_free_memory
from ..errors import ExportError
from ..models.readers import load_model_file
from ..tasks import GraphInfo, task_of
from .engine_step import check_engine_options, engine_parity, engine_profile, engine_step, fits
from .events import Reporter
from .networks import export_network, fp16_network, network_profile, parity_network
from .onnx_export import ExportConfig, check_input_size, export_onnx_with_forward, get_metadata, max_stride
from .options import (DECODE_MODES, DEFAULT_ISLANDS, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET,  # noqa: F401 (re-exported)
                      ExportOptions, Fp32Islands)
from .run import NOT_IN_ONNX, ExportRun, level_sizes, parity_feeds, provenance  # noqa: F401 (re-exported)

__all__ = ["ExportOptions", "export_model", "parity_feeds", "level_sizes", "provenance", "STEPS", "Step"]

Progress = Optional[Callable[[str], None]]


@dataclass(frozen=True)
class Step:
    """One named step: ``run(export)`` when ``applies(options)``."""

    name: str
    run: Callable[[ExportRun], None]
    applies: Callable[[ExportOptions], bool] = lambda options: True


# -- the steps ------------------------------------------------------------------------------------------------

def _export_step(r: ExportRun) -> None:
    import torch

    options, size = r.options, r.size
    lo, opt, hi = options.batch
    onnx_prov = provenance(options, onnx_only=True)
    cfg = ExportConfig(input_size=size, batch_size=opt, dynamic_batch=(lo != hi), dynamic_hw=options.dynamic_hw,
                       opset=options.opset,
                       metadata={"autotimm_deploy.provenance": json.dumps(onnx_prov, sort_keys=True, separators=(",", ":"))})
    r.report.start("export", f"exporting ONNX (opset {options.opset}, input {opt}x3x{size[0]}x{size[1]}, "
                             f"batch {'dynamic' if cfg.dynamic_batch else 'static'}, "
                             f"H/W {'dynamic' if cfg.dynamic_hw else 'static'})")
    r.feeds = parity_feeds(r.loaded, size, options, r.stride) if options.check else []
    first = r.feeds[0][1]["images"] if r.feeds and r.feeds[0][1]["images"].shape == (opt, 3, *size) else None
    r.raw, forward = export_onnx_with_forward(r.loaded, cfg, None if first is None else torch.from_numpy(first))
    if first is not None or r.task.extra_networks:  # the traced input's reference: the first parity input's
        r.first_reference = r.task.reference(r.model, forward, size, r.decode, options.topk)
    if first is not None:
        from ..parity.runners import cache_key

        r.reference_cache[cache_key(r.model, r.decode, options.topk, first)] = r.first_reference
    del forward
    release_free_memory()  # the exporter's buffers (about 0.6 GB at 640 px)
    r.exporter = get_metadata(r.raw).get("exporter", "torchscript")
    r.opset = r.raw.opset_import[0].version
    if r.exporter != "torchscript":
        r.say(f"      exported with the {r.exporter}, opset {r.opset}")
    # from here on the folder's files change: the old manifest goes first, so that it never describes a
    # mix of old and new files if this run dies (the new manifest is written last)
    remove_file(r.out_dir / layout.MANIFEST)
    engine_precision = None if options.engine == "none" else _engine_precision(options)
    writes = set(layout.written_files(r.task.extra_networks, fp16=options.fp16, int8=options.int8,
                                      engine_precision=engine_precision, check=options.check))
    for name in layout.all_files():  # an earlier export's files this one will not replace
        if name not in writes:
            remove_file(r.out_dir / name)
    r.write_onnx(r.raw, layout.onnx_file(raw=True), layout.onnx_role(raw=True), "fp32", "raw")


def _surgery_step(r: ExportRun) -> None:
    from ..tasks.detection.graph import static_level_sizes

    options, family = r.options, r.family
    fusing = r.decode != "raw" or r.task.per_level_roles
    r.report.start("surgery", f"graph surgery: decode={r.decode}" + (f", top-k {options.topk}" if options.topk else "")
                   + (f" ({family.name}: {family.convention})" if fusing else ", constant folding"))
    static = None
    if not options.dynamic_hw and r.task.per_level_roles:
        static = static_level_sizes(r.raw)
    info = GraphInfo(tuple(getattr(r.model, "strides", None) or ()), r.model.num_classes, static)
    r.fused = r.task.fuse(r.raw, r.decode, options.topk, family, info)
    r.raw = None  # written; 100+ MB for a large model, not needed again
    release_free_memory(collect=False)  # a protobuf has no reference cycles: no collection needed
    r.onnx_path = r.write_onnx(r.fused, layout.onnx_file(), layout.onnx_role(), "fp32", r.decode)
    for name in r.task.extra_networks:
        r.say(f"      {name} network: {layout.onnx_file(network=name)}")
        export_network(r, name, r.first_reference)
    if not options.fp16:
        r.fused = None  # on disk now: parity, INT8 and the engine read the files


def _fp16_step(r: ExportRun) -> None:
    from .fp16 import convert_to_fp16_guarded, probe_inputs

    options = r.options
    islands = options.islands(r.family)
    r.report.start("fp16", f"FP16 ONNX: FP32 islands {', '.join(islands.op_types) or '-'} + nodes "
                           f"{', '.join(islands.node_names) or '-'}"
                   + ("; overflow guard on extreme inputs" if options.overflow_guard else "; overflow guard off"))
    meta = r.loaded.metadata
    probes = [(label, {"images": x}) for label, x in
              probe_inputs((options.batch[0], 3, *r.size), meta["mean"], meta["std"], options.seed)]
    m16, r.plan = convert_to_fp16_guarded(r.fused, probes, islands, fp16_input=options.fp16_input,
                                          guard=options.overflow_guard, progress=r.say)
    for o in r.plan.overflow:
        r.say(f"      kept in FP32 to avoid FP16 overflow: {o}")
    r.fp16_path = r.write_onnx(m16, layout.onnx_file("fp16"), layout.onnx_role("fp16"), "fp16", r.decode)
    r.fused = None  # on disk now: parity, INT8 and the engine read the files
    for name in r.task.extra_networks:
        fp16_network(r, name)
    plan = r.plan
    r.entry(r.fp16_path.name)["fp16_plan"] = {"fp16_nodes": plan.fp16_nodes, "fp32_nodes": len(plan.fp32_nodes),
                                              "casts": plan.casts, "overflow_kept_fp32": [str(o) for o in plan.overflow]}


def _int8_step(r: ExportRun) -> None:
    from .int8_step import int8_step

    r.report.start("int8", _int8_title(r.options))
    fused_io = {k: r.entry(r.onnx_path.name)[k] for k in ("inputs", "outputs")}
    r.int8_report, arts = int8_step(r.say, r.options, r.loaded, r.model_path, r.onnx_path, r.out_dir, r.size)
    r.artifacts += [dict(a, decode=r.decode, **fused_io) if "precision" in a else a for a in arts]


def _int8_title(o: ExportOptions) -> str:
    return (f"INT8 ONNX: calibrating on {o.calib} ({o.calib_method}, up to {o.calib_count} images), "
            f"gate on {o.int8_eval} (max drop {o.int8_max_drop:g} points)")


def _parity_step(r: ExportRun) -> None:
    from ..parity.check import run_parity

    options = r.options
    if not options.check:
        r.report.start("parity", "parity check skipped (--no-check)")
        return
    targets = [(r.onnx_path, "fp32")] + ([(r.fp16_path, "fp16")] if r.fp16_path else [])
    r.report.start("parity", f"parity vs PyTorch on {len(r.feeds)} inputs: {', '.join(p.name for p, _ in targets)} "
                             "(Polygraphy, ONNX Runtime CPU)")
    reports = []
    for k, (path, precision) in enumerate(targets):
        rep = run_parity(r.model, path, r.feeds, r.decode, options.topk, precision=precision,
                         save_dir=r.out_dir if k == 0 else None, reference_cache=r.reference_cache, progress=r.say)
        if precision == "fp16" and not rep.passed and options.fp16_repair_steps:
            rep = _repair_fp16(r, rep)
        reports.append(rep)
        r.say(f"      {path.name}: {'PASS' if rep.passed else 'FAIL'} ({rep.summary()})")
        r.entry(path.name)["parity"] = "pass" if rep.passed else "fail"
    if r.task.extra_networks:  # on the boxes PyTorch detects on the same inputs
        main_reference = [dict(res) for res in reports[0].results[0]]
        sizes = [tuple(f["images"].shape[-2:]) for _, f in r.feeds]
        for name in r.task.extra_networks:
            reports += parity_network(r, name, main_reference, sizes)
    r.parity = {"passed": all(rep.passed for rep in reports), "reports": [rep.to_dict() for rep in reports],
                "markdown": [rep.to_markdown() for rep in reports]}
    if r.plan is not None and r.plan.repair:  # which blocks the FP16 repair kept in FP32, and their measured effect
        from .fp16_repair import repair_markdown

        r.parity["fp16_repair"] = r.plan.repair
        r.parity["markdown"].append(repair_markdown(r.plan.repair))
    if r.int8_report is not None:  # its gate already passed (a failing one stops the export)
        from .int8_repair import int8_markdown

        r.parity["int8"] = r.int8_report.to_dict()
        r.parity["markdown"].append(int8_markdown(r.int8_report))
    r.artifacts += [{"role": role, "file": file} for role, file in layout.REPORTS.items() if role.startswith("polygraphy")]


def _repair_fp16(r: ExportRun, rep):
    """FP16 parity failed: the repair of :mod:`.fp16_repair`, then the FP16 artifact's entry brought up to date."""
    from ..parity.check import run_parity
    from .fp16_repair import repair_fp16

    r.say(f"      {r.fp16_path.name}: FAIL ({rep.summary()}): repairing")
    check = lambda: run_parity(r.model, r.fp16_path, r.feeds, r.decode, r.options.topk, precision="fp16",  # noqa: E731
                               reference_cache=r.reference_cache)
    last, r.plan, history = repair_fp16(r.onnx_path, r.fp16_path, r.plan, r.options.islands(r.family), r.options.fp16_input,
                                        check, r.feeds[0][1], r.options.fp16_repair_steps, r.say)
    r.plan.repair = [{"step": 0, "kept_fp32": [], "passed": False, "summary": rep.summary()}] + [vars(h) for h in history]
    entry = r.entry(r.fp16_path.name)
    entry.update(sha256=sha256_file(r.fp16_path))
    entry["fp16_plan"].update(fp16_nodes=r.plan.fp16_nodes, fp32_nodes=len(r.plan.fp32_nodes), casts=r.plan.casts,
                              repair_kept_fp32=[k["block"] for h in history for k in h.kept_fp32])
    return last if last is not None else rep


def _engine_step(r: ExportRun) -> None:
    import time

    t = time.time()
    r.engine_info = engine_step(lambda text: r.report.start("engine", text), r.say, r.options, r.library, r.onnx_path, r.fp16_path, r.plan,
                                r.profile, r.loaded, r.out_dir, provenance(r.options))
    r.timings["engine_build"] = time.time() - t
    art = r.engine_info["artifact"]
    r.artifacts += [art, {"role": "engine-sidecar", "file": layout.sidecar_file(art["file"])}]
    for name in r.task.extra_networks:  # its inputs' profile from the main one's: batch, spatial dims, boxes
        onnx_path = r.out_dir / layout.onnx_file(network=name)
        fp16_path = r.out_dir / layout.onnx_file("fp16", name) if r.options.fp16 else None
        stride, rois = r.task.network_dims(r.family, name, r.options.batch)
        profile = network_profile(onnx_path, r.profile, stride, rois)
        info = engine_step(r.say, r.say, r.options, r.library, onnx_path, fp16_path, None, profile, r.loaded,
                           r.out_dir, provenance(r.options), network=name)
        r.engine_info.setdefault("networks", {})[name] = {k: v for k, v in info.items() if k != "artifact"}
        r.artifacts += [info["artifact"], {"role": "engine-sidecar", "file": layout.sidecar_file(info["artifact"]["file"])}]
    if r.options.check:
        t = time.time()
        r.engine_info["parity"] = engine_parity(r.say, r.model, r.out_dir / art["file"],
                                                [f for f in r.feeds if fits(f[1]["images"].shape, r.profile)],
                                                r.decode, r.options, r.parity, r.reference_cache)
        r.timings["engine_parity"] = time.time() - t
        art["parity"] = r.engine_info["parity"]["status"]


#: The export, step by step: ``load`` runs before the output folder is touched (every refusal leaves nothing
#: behind); the others in order.
STEPS = (
    Step("load", lambda r: None),
    Step("export", _export_step),
    Step("surgery", _surgery_step),
    Step("fp16", _fp16_step, lambda o: o.fp16),
    Step("int8", _int8_step, lambda o: o.int8),
    Step("parity", _parity_step),
    Step("engine", _engine_step, lambda o: o.engine != "none"),
)


# -- the pipeline --------------------------------------------------------------------------------------------

def _engine_precision(options: ExportOptions) -> str:
    return "int8" if options.int8 else ("fp16" if options.fp16 else "fp32")


def export_model(model_path: str | Path, out_dir: str | Path, options: Optional[ExportOptions] = None,
                 progress: Progress = print) -> Dict:
    """Export ``model_path`` into ``out_dir`` and return the manifest (also written as manifest.json, last).

    Crash safety: every file is written to a temporary file in ``out_dir`` and renamed into place;
    an existing ``manifest.json`` is removed before the first artifact is replaced and the new one is
    written last, so a folder with a manifest holds every file it lists, complete and matching its
    SHA-256, and an interrupted re-export leaves no manifest (``scripts/kill_test.py`` checks this).

    Artifacts (names: :mod:`autotimm_deploy.layout`): ``model.raw.onnx`` (raw outputs), ``model.onnx`` (with
    ``options.decode`` fused), with ``fp16`` ``model.fp16.onnx`` (FP32 islands, overflow guard), with ``int8`` the
    two Q/DQ forms, an engine (+ ``.json`` sidecar) unless ``engine="none"``, and the parity reports
    ``parity.json``/``parity.md`` with Polygraphy's ``inputs.json``/``pytorch_outputs.json``.  ``progress`` receives
    each line as an :class:`~.events.Event` (a ``str`` that also names its step).
    """
    options = options if options is not None else ExportOptions()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is an existing file, not a folder: choose another --out")
    steps = [s for s in STEPS if s.applies(options)]
    report = Reporter(progress, [s.name for s in steps])
    report.start("load", f"loading {model_path}")
    loaded = load_model_file(model_path, options.overrides())
    task = task_of(loaded.family)
    decode = options.decode or task.default_decode
    task.check_decode(decode, options.topk)
    if options.int8 and options.int8_task_gate:
        _check_int8_eval(options, loaded, task)
    stride = max_stride(loaded.model)
    size = loaded.metadata.get("input_size")
    if size is None:
        raise ExportError(f"{model_path} records no input size; pass --input-size H W")
    size = check_input_size(size, stride)
    profile = engine_profile(size, options, stride)  # validates --min-size/--max-size before any work
    library = None
    if options.engine != "none":
        from ..engines.library import select_library

        library = select_library(options.engine)  # an unusable --engine fails now, not after the export
        check_engine_options(options, library[0])
    r = ExportRun(model_path, out_dir, options, loaded, task, decode, size, stride, profile, library, report)
    # every refusal above leaves no folder behind; a folder this run creates goes again if the run fails
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(out_dir):  # one export per output folder at a time: a second one is refused at once
        try:
            cleanup_tmp(out_dir)  # what a killed export left behind
            for step in steps[1:]:
                step.run(r)
            report.finish()
            return _write_manifest(r)
        except BaseException:
            if created:
                shutil.rmtree(out_dir, ignore_errors=True)
            raise


def _check_int8_eval(options: ExportOptions, loaded, task) -> None:
    """The INT8 gate bounds the task metric: ``--int8-eval`` must hold annotations of the model's task (an accuracy
    gate that did not measure must not pass), unless ``--int8-no-task-gate``.  Checked before any work."""
    from ..parity.data import load_dataset

    names = loaded.metadata.get("class_names") or [f"class_{i}" for i in range(loaded.model.num_classes)]
    ds = load_dataset(options.int8_eval, names, task.name)
    if not ds.annotated:
        raise ExportError(f"--int8-eval {options.int8_eval}: no annotations of a {task.name} model there "
                          f"({task.annotation_formats}): the INT8 gate could not measure "
                          f"{task.metric_names[task.metric_keys[0]]}; add them, or pass --int8-no-task-gate to gate on "
                          "the agreement with PyTorch only")


def _write_manifest(r: ExportRun) -> Dict:
    options, loaded, out_dir = r.options, r.loaded, r.out_dir
    if r.parity is not None:
        md = r.parity.pop("markdown")
        if r.engine_info is not None:
            r.parity["engine"] = r.engine_info["parity"]
            md.append(f"# Engine `{r.engine_info['artifact']['file']}`\n\n{r.engine_info['parity']['summary']}\n")
        atomic_write_text(out_dir / layout.REPORTS["parity-report"], strict_json.dumps(r.parity, indent=2) + "\n")
        atomic_write_text(out_dir / layout.REPORTS["parity-report-md"], "\n".join(md))
        r.artifacts += [{"role": role, "file": file} for role, file in layout.REPORTS.items()
                        if role.startswith("parity")]
    for a in r.artifacts:  # the manifest records every file's SHA-256 (those not hashed when written, now)
        a.setdefault("sha256", sha256_file(out_dir / a["file"]))
    timings = {k: v for k, v in r.report.seconds.items() if k != "engine"}
    timings.update(r.timings)
    src = Path(r.model_path).resolve()
    manifest = {
        "autotimm_deploy_version": __version__,
        # absolute, so the folder works from any directory; relative to the folder too, so that moving the folder
        # and the model file together keeps it working
        "source": {"path": str(src), "relative_to_export": os.path.relpath(src, out_dir.resolve()),
                   "sha256": loaded.sha256, "task": loaded.task, "config": loaded.config,
                   "overrides": options.overrides().to_dict(), **({"autotimm": loaded.metadata["autotimm"]}
                                                                  if "autotimm" in loaded.metadata else {})},
        "family": r.family.to_dict(),
        "input_size": list(r.size),
        "batch": list(options.batch),
        "dynamic_hw": options.dynamic_hw,
        "onnx_exporter": {"path": r.exporter.split(" ")[0], "opset": r.opset,
                          "why": None if r.exporter == "torchscript" else r.exporter},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "artifacts": r.artifacts,
        "parity": r.parity,
        "engine": None if r.engine_info is None else {k: v for k, v in r.engine_info.items() if k != "artifact"},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "provenance": provenance(options),
    }
    if r.plan is not None:
        manifest["fp16"] = r.plan.to_dict()
    if r.int8_report is not None:
        manifest["int8"] = r.int8_report.to_dict()
    if getattr(r.model, "strides", None):
        manifest["strides"] = list(r.model.strides)
    manifest["class_names"] = loaded.metadata.get("class_names")
    atomic_write_text(out_dir / layout.MANIFEST, strict_json.dumps(manifest, indent=2) + "\n")  # written last
    return manifest
