"""The export pipeline as a Python API: model file -> ONNX -> graph surgery -> parity -> manifest.

>>> from autotimm_deploy.demo import demo_model_path
>>> import tempfile
>>> manifest = export_model(demo_model_path("detector"), tempfile.mkdtemp(), ExportOptions(), progress=None)
>>> manifest["parity"]["passed"], [a["role"] for a in manifest["artifacts"]][:2]
(True, ['onnx-raw', 'onnx'])
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch

from .. import _json as strict_json
from .. import __version__
from .._atomic import atomic_write_bytes, atomic_write_text, cleanup_tmp, remove_file, sha256_file
from .._memory import release_free_memory
from ..errors import ExportError
from ..models.io import LoadedModel, load_model_file
from .onnx_export import ExportConfig, check_input_size, export_onnx_with_forward, get_metadata, max_stride
from .engine_step import check_engine_options, engine_parity, engine_profile, engine_step, fits
from .options import (DECODE_MODES, DEFAULT_ISLANDS, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET,  # noqa: F401 (re-exported)
                      ExportOptions, Fp32Islands)
from .surgery import apply_decode, fold_graph, static_level_sizes

__all__ = ["ExportOptions", "export_model", "parity_feeds", "level_sizes", "provenance"]

Progress = Optional[Callable[[str], None]]


#: ExportOptions left out of all recorded provenance: a local folder, which would make the records
#: depend on where the cache lives (it changes no artifact).
_NOT_PROVENANCE = ("cache_dir", "calib", "int8_eval")  # INT8: the images are identified by their SHA-256 instead
#: ExportOptions that change no ONNX file (verification, engine build and cache settings): left out of
#: the ONNX metadata, so that re-exporting with, say, ``--no-check`` or another ``--engine`` gives the same
#: ONNX bytes and so the same engine cache key.  Sidecars and the manifest record them.
NOT_IN_ONNX = ("check", "random_inputs", "demo_images", "min_size", "max_size", "engine", "target_cc",
               "workspace_mib", "cache", "int8", "calib_count", "calib_method", "int8_max_drop", "int8_repair_steps")


def provenance(options: ExportOptions, onnx_only: bool = False) -> Dict:
    """What made an export: toolchain versions and the options (the CLI flags), as recorded in the engine
    sidecars and the manifest; with ``onnx_only`` the options that shape the ONNX files (all but
    :data:`NOT_IN_ONNX`), as written into their metadata (key ``autotimm_deploy.provenance``).  No paths,
    clocks or host names: the same model file and flags give byte-identical ONNX files.

    >>> sorted(set(provenance(ExportOptions())["options"]) - set(provenance(ExportOptions(), onnx_only=True)["options"]))
    ['cache', 'calib_count', 'calib_method', 'check', 'demo_images', 'engine', 'int8', 'int8_max_drop', 'int8_repair_steps', 'max_size', 'min_size', 'random_inputs', 'target_cc', 'workspace_mib']
    """
    from .._compat import toolchain_versions

    skip = _NOT_PROVENANCE + (NOT_IN_ONNX if onnx_only else ())
    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items() if k not in skip}
    return {"versions": toolchain_versions(), "options": opts}


def level_sizes(size: Tuple[int, int], strides: Sequence[int]) -> List[Tuple[int, int]]:
    """(H, W) of each FPN level for an input of ``size`` (ceil division, as the max-pool levels)."""
    out, (h, w) = [], size
    for s in strides:
        out.append((-(-h // s), -(-w // s)))
    return out


def parity_feeds(loaded: LoadedModel, size: Tuple[int, int], options: ExportOptions,
                 stride: int) -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """Seeded random inputs at the traced shape and synthetic demo images (one batch of ``demo_images``),
    plus a random input of a second shape where no feed has one yet: another batch size when the demo batch
    does not already give one (it does at the default 1:1:8 profile: batch 4 next to batch 1), and
    with ``dynamic_hw`` another H/W always."""
    from ..demo.shapes import render_classification_sample, render_detection_sample, SPLIT_SEEDS
    from ..demo.train import to_tensor

    rng = np.random.default_rng(options.seed)
    lo, opt, hi = options.batch
    h, w = size
    feeds = []
    for i in range(options.random_inputs):
        feeds.append((f"random#{i} {opt}x3x{h}x{w}", {"images": rng.standard_normal((opt, 3, h, w), dtype=np.float32)}))
    second_b = min(hi, opt + 1)  # another batch size (a larger one would only cost time)
    second_hw = (h + stride, w + 2 * stride) if options.dynamic_hw else (h, w)
    second = rng.standard_normal((second_b, 3, *second_hw), dtype=np.float32)  # drawn always: same seeds
    demo = []
    if options.demo_images:
        n = min(options.demo_images, hi)
        base = SPLIT_SEEDS["val"]
        if loaded.family.task == "detection":
            imgs = [render_detection_sample(base + k, size=max(h, w))[0][:h, :w] for k in range(n)]
        else:
            imgs = [render_classification_sample(base + k, size=max(h, w))[0][:h, :w] for k in range(n)]
        demo.append((f"{n} synthetic shapes images", {"images": to_tensor(imgs, loaded.metadata["mean"], loaded.metadata["std"]).numpy()}))
    shapes = {f[1]["images"].shape for f in feeds + demo}
    other_batch = any(s[0] != opt for s in shapes)
    if (second_b, second_hw) != (opt, (h, w)) and (options.dynamic_hw or not other_batch):
        feeds.append((f"random second shape {second_b}x3x{second_hw[0]}x{second_hw[1]}", {"images": second}))
    return feeds + demo


def _io_info(model: onnx.ModelProto) -> Dict[str, List[Dict]]:
    def info(vs):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in vs]
    return {"inputs": info(model.graph.input), "outputs": info(model.graph.output)}


#: Every file an export may write (the manifest apart).
_ARTIFACTS = ("model.raw.onnx", "model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx",
              "int8.calibration.json", "model.engine", "model.engine.json", "model.fp16.engine",
              "model.fp16.engine.json", "model.int8.engine", "model.int8.engine.json", "parity.json", "parity.md",
              "inputs.json", "pytorch_outputs.json")


def _stale_artifacts(options: ExportOptions) -> List[str]:
    """The files of :data:`_ARTIFACTS` this export does not write: left from an earlier export into the same
    folder (with --fp16, another precision's engine, a parity check), they would sit beside the new manifest.

    >>> _stale_artifacts(ExportOptions(engine="none", check=False))[:5]
    ['model.fp16.onnx', 'model.int8.onnx', 'model.int8-cpu.onnx', 'int8.calibration.json', 'model.engine']
    """
    writes = {"model.raw.onnx", "model.onnx"}
    if options.fp16:
        writes.add("model.fp16.onnx")
    if options.int8:
        writes |= {"model.int8.onnx", "model.int8-cpu.onnx", "int8.calibration.json"}
    if options.engine != "none":
        engine = "model.int8.engine" if options.int8 else ("model.fp16.engine" if options.fp16 else "model.engine")
        writes |= {engine, engine + ".json"}
    if options.check:
        writes |= {"parity.json", "parity.md", "inputs.json", "pytorch_outputs.json"}
    return [n for n in _ARTIFACTS if n not in writes]


class _Steps:
    """Numbered progress lines with the total known up front."""

    def __init__(self, say: Callable[[str], None], total: int) -> None:
        self.say, self.total, self.n = say, total, 0

    def __call__(self, text: str) -> None:
        self.n += 1
        self.say(f"[{self.n}/{self.total}] {text}")


def export_model(model_path: str | Path, out_dir: str | Path, options: Optional[ExportOptions] = None,
                 progress: Progress = print) -> Dict:
    """Export ``model_path`` into ``out_dir`` and return the manifest (also written as manifest.json, last).

    Crash safety: every file is written to a temporary file in ``out_dir`` and renamed into place;
    an existing ``manifest.json`` is removed before the first artifact is replaced and the new one is
    written last, so a folder with a manifest holds every file it lists, complete and matching its
    SHA-256, and an interrupted re-export leaves no manifest (``scripts/kill_test.py`` checks this).

    Artifacts: ``model.raw.onnx`` (raw per-level outputs), ``model.onnx`` (with ``options.decode``
    fused), with ``fp16`` ``model.fp16.onnx`` (FP32 islands, overflow guard), an engine
    (``model.engine`` / ``model.fp16.engine`` + ``.json`` sidecar) unless ``engine="none"``, and the
    parity reports ``parity.json``/``parity.md`` with Polygraphy's ``inputs.json``/``pytorch_outputs.json``.
    """
    options = options if options is not None else ExportOptions()
    say = progress or (lambda s: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is an existing file, not a folder: choose another --out")
    step = _Steps(say, 4 + options.fp16 + options.int8 + (options.engine != "none"))
    steps: Dict[str, float] = {}
    t0 = time.time()
    step(f"loading {model_path}")
    loaded = load_model_file(model_path, options.overrides())
    steps["load"] = time.time() - t0
    stride = max_stride(loaded.model)
    size = loaded.metadata.get("input_size")
    if size is None:
        raise ExportError(f"{model_path} records no input size; pass --input-size H W")
    size = check_input_size(size, stride)
    if loaded.family.task != "detection" and (options.decode == "activations" or options.topk):
        raise ExportError("--decode activations and --topk apply to detectors only; a classifier exports `logits`")
    profile = engine_profile(size, options, stride)  # validates --min-size/--max-size before any work
    library = None
    if options.engine != "none":
        from ..engines.library import select_library

        library = select_library(options.engine)  # an unusable --engine fails now, not after the export
        check_engine_options(options, library[0])
    # every refusal above leaves no folder behind; a folder this run creates goes again if the run fails
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _export(loaded, model_path, out_dir, size, stride, profile, library, options, step, say, steps)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _export(loaded: LoadedModel, model_path, out_dir: Path, size: Tuple[int, int], stride: int, profile, library,
            options: ExportOptions, step: "_Steps", say, steps: Dict[str, float]) -> Dict:
    cleanup_tmp(out_dir)  # what a killed export left behind (one export per output folder at a time)
    model = loaded.model
    family = loaded.family
    detection = family.task == "detection"
    lo, opt, hi = options.batch
    prov = provenance(options)
    onnx_prov = provenance(options, onnx_only=True)
    cfg = ExportConfig(input_size=size, batch_size=opt, dynamic_batch=(lo != hi), dynamic_hw=options.dynamic_hw,
                       opset=options.opset,
                       metadata={"autotimm_deploy.provenance": json.dumps(onnx_prov, sort_keys=True, separators=(",", ":"))})
    t = time.time()
    step(f"exporting ONNX (opset {options.opset}, input {opt}x3x{size[0]}x{size[1]}, "
         f"batch {'dynamic' if cfg.dynamic_batch else 'static'}, H/W {'dynamic' if cfg.dynamic_hw else 'static'})")
    feeds = parity_feeds(loaded, size, options, stride) if options.check else []
    first = feeds[0][1]["images"] if feeds and feeds[0][1]["images"].shape == (opt, 3, *size) else None
    raw, forward = export_onnx_with_forward(loaded, cfg, None if first is None else torch.from_numpy(first))
    decode = options.decode if detection else "raw"
    reference_cache: Dict = {}  # PyTorch runs once per parity input, for every artifact
    if first is not None:  # the export's own forward pass is the reference for the first parity input
        from ..parity.runners import cache_key, reference_from_forward

        reference_cache[cache_key(model, decode, options.topk, first)] = reference_from_forward(
            model, forward, size, decode, options.topk)
    del forward
    release_free_memory()  # the exporter's buffers (about 0.6 GB at 640 px)
    steps["export"] = time.time() - t
    exporter = get_metadata(raw).get("exporter", "torchscript")
    raw_opset = raw.opset_import[0].version
    if exporter != "torchscript":
        say(f"      exported with the {exporter}, opset {raw_opset}")
    artifacts = []
    raw_path = out_dir / "model.raw.onnx"
    # from here on the folder's files change: the old manifest goes first, so that it never describes a
    # mix of old and new files if this run dies (the new manifest is written last)
    remove_file(out_dir / "manifest.json")
    for name in _stale_artifacts(options):  # an earlier export's files this one will not replace
        remove_file(out_dir / name)
    atomic_write_bytes(raw_path, raw.SerializeToString())
    artifacts.append({"role": "onnx-raw", "file": raw_path.name, "precision": "fp32", "decode": "raw", **_io_info(raw),
                      "sha256": sha256_file(raw_path)})
    t = time.time()
    step(f"graph surgery: decode={decode}" + (f", top-k {options.topk}" if options.topk else "")
         + (f" ({family.name}: {family.convention})" if detection else ", constant folding"))
    if detection:
        static_hw = None if options.dynamic_hw else static_level_sizes(raw)
        fused = apply_decode(raw, decode, model.strides, model.num_classes, static_hw, options.topk, family)
    else:
        fused = fold_graph(raw)
    del raw  # written; 100+ MB for a large model, not needed again
    release_free_memory(collect=False)  # a protobuf has no reference cycles: no collection needed
    steps["surgery"] = time.time() - t
    onnx_path = out_dir / "model.onnx"
    atomic_write_bytes(onnx_path, fused.SerializeToString())
    artifacts.append({"role": "onnx", "file": onnx_path.name, "precision": "fp32", "decode": decode, **_io_info(fused),
                      "sha256": sha256_file(onnx_path)})
    fp16_path, plan = None, None
    if options.fp16:
        t = time.time()
        fp16_path, plan, fp16_io = _fp16_step(step, fused, loaded, size, options, out_dir)
        steps["fp16"] = time.time() - t
        artifacts.append({"role": "onnx-fp16", "file": fp16_path.name, "precision": "fp16", "decode": decode,
                          **fp16_io, "sha256": sha256_file(fp16_path),
                          "fp16_plan": {"fp16_nodes": plan.fp16_nodes, "fp32_nodes": len(plan.fp32_nodes),
                                        "casts": plan.casts, "overflow_kept_fp32": [str(o) for o in plan.overflow]}})
    fused_io = _io_info(fused)
    del fused  # on disk now: parity, INT8 and the engine read the files
    int8_report = None
    if options.int8:
        from .int8_step import int8_step

        t = time.time()
        int8_report, int8_artifacts = int8_step(step, say, options, loaded, model_path, onnx_path, out_dir, size)
        steps["int8"] = time.time() - t
        artifacts += [dict(a, decode=decode, **fused_io) if "precision" in a else a for a in int8_artifacts]
    parity: Optional[Dict] = None
    if options.check:
        from ..parity.check import FP16_TOLERANCES, FP32_TOLERANCES, run_parity

        t = time.time()
        targets = [(onnx_path, FP32_TOLERANCES)] + ([(fp16_path, FP16_TOLERANCES)] if fp16_path else [])
        step(f"parity vs PyTorch on {len(feeds)} inputs: {', '.join(p.name for p, _ in targets)} "
             "(Polygraphy, ONNX Runtime CPU)")
        reports = []
        for k, (path, tol) in enumerate(targets):
            rep = run_parity(model, path, feeds, decode, options.topk, tolerances=tol, save_dir=out_dir if k == 0 else None,
                             reference_cache=reference_cache, progress=say)
            if path == fp16_path and not rep.passed and options.fp16_repair_steps:
                rep, plan = _repair_fp16(rep, model, onnx_path, fp16_path, plan, feeds, decode, options, reference_cache,
                                         say, artifacts)
            reports.append(rep)
            say(f"      {path.name}: {'PASS' if rep.passed else 'FAIL'} ({rep.summary()})")
            for a in artifacts:
                if a["file"] == path.name:
                    a["parity"] = "pass" if rep.passed else "fail"
        steps["parity"] = time.time() - t
        parity = {"passed": all(r.passed for r in reports), "reports": [r.to_dict() for r in reports],
                  "markdown": [r.to_markdown() for r in reports]}
        if plan is not None and plan.repair:  # which blocks the FP16 repair kept in FP32, and their measured effect
            from .fp16_repair import repair_markdown

            parity["fp16_repair"] = plan.repair
            parity["markdown"].append(repair_markdown(plan.repair))
        if int8_report is not None:  # its gate already passed (a failing one stops the export)
            from .int8_repair import int8_markdown

            parity["int8"] = int8_report.to_dict()
            parity["markdown"].append(int8_markdown(int8_report))
        artifacts += [{"role": "polygraphy-inputs", "file": "inputs.json"},
                      {"role": "polygraphy-reference-outputs", "file": "pytorch_outputs.json"}]
    else:
        step("parity check skipped (--no-check)")
    engine_info = None
    if options.engine != "none":
        t = time.time()
        engine_info = engine_step(step, say, options, library, onnx_path, fp16_path, plan, profile, loaded, out_dir,
                                  prov)
        steps["engine_build"] = time.time() - t
        artifacts.append(engine_info["artifact"])
        artifacts.append({"role": "engine-sidecar", "file": engine_info["artifact"]["file"] + ".json"})
        if options.check:
            t = time.time()
            engine_info["parity"] = engine_parity(say, model, out_dir / engine_info["artifact"]["file"],
                                                   [f for f in feeds if fits(f[1]["images"].shape, profile)],
                                                   decode, options, parity, reference_cache)
            steps["engine_parity"] = time.time() - t
            engine_info["artifact"]["parity"] = engine_info["parity"]["status"]
    if parity is not None:
        md = parity.pop("markdown")
        if engine_info is not None:
            parity["engine"] = engine_info["parity"]
            md.append(f"# Engine `{engine_info['artifact']['file']}`\n\n{engine_info['parity']['summary']}\n")
        atomic_write_text(out_dir / "parity.json", strict_json.dumps(parity, indent=2) + "\n")
        atomic_write_text(out_dir / "parity.md", "\n".join(md))
        artifacts += [{"role": "parity-report", "file": "parity.json"}, {"role": "parity-report-md", "file": "parity.md"}]
    for a in artifacts:  # the manifest records every file's SHA-256 (those not hashed when written, now)
        a.setdefault("sha256", sha256_file(out_dir / a["file"]))
    manifest = {
        "autotimm_deploy_version": __version__,
        # absolute, so the folder works from any directory; relative to the folder too, so that moving the folder
        # and the model file together keeps it working
        "source": {"path": str(Path(model_path).resolve()),
                   "relative_to_export": os.path.relpath(Path(model_path).resolve(), out_dir.resolve()),
                   "sha256": loaded.sha256, "task": loaded.task, "config": loaded.config,
                   "overrides": options.overrides().to_dict(), **({"autotimm": loaded.metadata["autotimm"]}
                                                                  if "autotimm" in loaded.metadata else {})},
        "family": family.to_dict(),
        "input_size": list(size),
        "batch": list(options.batch),
        "dynamic_hw": options.dynamic_hw,
        "onnx_exporter": {"path": exporter.split(" ")[0], "opset": raw_opset,
                          "why": None if exporter == "torchscript" else exporter},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "artifacts": artifacts,
        "parity": parity,
        "engine": None if engine_info is None else {k: v for k, v in engine_info.items() if k != "artifact"},
        "timings_s": {k: round(v, 3) for k, v in steps.items()},
        "provenance": prov,
    }
    if plan is not None:
        manifest["fp16"] = plan.to_dict()
    if int8_report is not None:
        manifest["int8"] = int8_report.to_dict()
    if detection:
        manifest["strides"] = list(model.strides)
    manifest["class_names"] = loaded.metadata.get("class_names")
    atomic_write_text(out_dir / "manifest.json", strict_json.dumps(manifest, indent=2) + "\n")  # written last
    return manifest


def _fp16_step(step, fused: onnx.ModelProto, loaded: LoadedModel, size: Tuple[int, int], options: ExportOptions,
               out_dir: Path):
    from .fp16 import convert_to_fp16_guarded, probe_inputs

    islands = options.islands()
    step(f"FP16 ONNX: FP32 islands {', '.join(islands.op_types) or '-'} + nodes {', '.join(islands.node_names) or '-'}"
         + ("; overflow guard on extreme inputs" if options.overflow_guard else "; overflow guard off"))
    probes = [(label, {"images": x}) for label, x in
              probe_inputs((options.batch[0], 3, *size), loaded.metadata["mean"], loaded.metadata["std"], options.seed)]
    m16, plan = convert_to_fp16_guarded(fused, probes, islands, fp16_input=options.fp16_input,
                                        guard=options.overflow_guard, progress=step.say)
    for o in plan.overflow:
        step.say(f"      kept in FP32 to avoid FP16 overflow: {o}")
    path = out_dir / "model.fp16.onnx"
    atomic_write_bytes(path, m16.SerializeToString())
    return path, plan, _io_info(m16)


def _repair_fp16(rep, model, onnx_path: Path, fp16_path: Path, plan, feeds, decode: str, options: ExportOptions,
                 reference_cache: Dict, say, artifacts: List[Dict]):
    """FP16 parity failed: the repair of :mod:`.fp16_repair`, then the FP16 artifact's entry brought up to date."""
    from ..parity.check import FP16_TOLERANCES, run_parity
    from .fp16_repair import repair_fp16

    say(f"      {fp16_path.name}: FAIL ({rep.summary()}): repairing")
    check = lambda: run_parity(model, fp16_path, feeds, decode, options.topk, tolerances=FP16_TOLERANCES,  # noqa: E731
                               reference_cache=reference_cache)
    last, plan, history = repair_fp16(onnx_path, fp16_path, plan, options.islands(), options.fp16_input, check,
                                      feeds[0][1], options.fp16_repair_steps, say)
    plan.repair = [{"step": 0, "kept_fp32": [], "passed": False, "summary": rep.summary()}] + [vars(h) for h in history]
    entry = next(a for a in artifacts if a["file"] == fp16_path.name)
    entry.update(sha256=sha256_file(fp16_path))
    entry["fp16_plan"].update(fp16_nodes=plan.fp16_nodes, fp32_nodes=len(plan.fp32_nodes), casts=plan.casts,
                              repair_kept_fp32=[k["block"] for h in history for k in h.kept_fp32])
    return (last if last is not None else rep), plan
