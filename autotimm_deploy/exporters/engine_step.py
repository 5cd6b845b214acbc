"""The engine stage of the export pipeline: the optimisation profile, the build (through the engine cache)
and the engine's parity run where this machine can execute it, or the reason it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

from .. import layout
from ..errors import ExportError
from ..models.loaded import LoadedModel
from .onnx_export import check_input_size

if TYPE_CHECKING:
    from .options import ExportOptions

__all__ = ["engine_profile", "fits", "engine_step", "engine_parity", "check_engine_options"]


def engine_profile(size: Tuple[int, int], options: "ExportOptions", stride: int) -> Dict[str, Tuple]:
    """The optimisation profile for input ``images``: ``--batch`` MIN:OPT:MAX and, with ``--dynamic-hw``,
    H/W from ``--min-size`` (default half the input size) to ``--max-size`` (default twice)."""
    lo, opt, hi = options.batch
    h, w = size
    if options.dynamic_hw:
        mn = check_input_size(options.min_size, stride) if options.min_size else \
            (max(stride, h // 2 // stride * stride), max(stride, w // 2 // stride * stride))
        mx = check_input_size(options.max_size, stride) if options.max_size else (2 * h, 2 * w)
        if not (mn[0] <= h <= mx[0] and mn[1] <= w <= mx[1]):
            raise ExportError(f"the input size {h}x{w} must lie within --min-size {mn[0]}x{mn[1]} and "
                              f"--max-size {mx[0]}x{mx[1]}")
    else:
        mn = mx = (h, w)
    return {"images": ((lo, 3, *mn), (opt, 3, h, w), (hi, 3, *mx))}


def check_engine_options(options: "ExportOptions", lib) -> None:
    """The engine flags against the library that will build, before any work: ``--target-cc`` (TensorRT-RTX
    targets only), and a cache folder that can be written."""
    import os

    from ..engines.library import RTX_TARGETS
    from ..engines.sidecar import default_cache_dir

    if options.target_cc:
        if not lib.ahead_of_time:
            raise ExportError(f"--target-cc applies to TensorRT-RTX builds; {lib.name} builds for the GPU present")
        bad = [t for t in options.target_cc if t not in RTX_TARGETS]
        if bad:
            raise ExportError(f"--target-cc: {', '.join(bad)} is not a TensorRT-RTX target; choose from "
                              f"{', '.join(RTX_TARGETS)} (SM90, i.e. H100/H200, is not one)")
    if options.cache:
        root = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
        probe = root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise ExportError(f"--cache-dir {root} cannot be written (" + (f"{probe} is not a folder" if not probe.is_dir()
                              else f"no write permission on {probe}") + "); pass a writable --cache-dir or --no-cache")


def fits(shape: Sequence[int], profile: Dict[str, Tuple]) -> bool:
    lo, _, hi = profile["images"]
    return all(a <= s <= b for a, s, b in zip(lo, shape, hi))


def engine_step(step, say, options: "ExportOptions", library, onnx_path: Path, fp16_path: Optional[Path], plan,
                profile, loaded: LoadedModel, out_dir: Path, prov: Dict, network: str = layout.MAIN) -> Dict:
    """Build the engine of ``network`` from the FP16 ONNX (strongly typed libraries) or the FP32 ONNX (the INT8
    Q/DQ ONNX for the main network of an INT8 export), through the cache."""
    from ..engines.build import BuildConfig, engine_from_onnx
    from ..engines.sidecar import EngineCache

    lib, why = library
    precision = "int8" if options.int8 else ("fp16" if options.fp16 else "fp32")
    if network != layout.MAIN:
        precision = layout.extra_engine_precision(precision)
    fp32_layers: Tuple[str, ...] = ()
    if precision == "int8":
        source = onnx_path.parent / layout.onnx_file("int8")  # explicit Q/DQ (the TensorRT form)
    elif precision == "fp16" and lib.strongly_typed:
        source = fp16_path  # precision is in the graph's types
    else:
        source = onnx_path  # FP32 network; on TensorRT 10 the FP16 flag + pinned FP32 islands
        fp32_layers = tuple(plan.fp32_nodes) if plan is not None else ()
    name = layout.engine_file(precision, network)
    step(f"building {precision.upper()} engine with {lib.name} {lib.version} from {source.name} ({why})")
    config = BuildConfig(profiles=[profile], precision=precision, workspace_mib=options.workspace_mib,
                         targets=tuple(options.target_cc), fp32_layers=fp32_layers,
                         fp32_islands=options.islands(loaded.family).to_dict() if options.fp16 or options.int8 else None)
    cache = EngineCache(options.cache_dir) if options.cache else None
    if cache is not None and not lib.ahead_of_time:
        from ..engines.library import gpu_info

        gpu = gpu_info() or {"name": "none"}
        config.timing_cache = cache.timing_cache_path(lib.name, lib.version, str(gpu["name"]))
    sidecar = engine_from_onnx(source, out_dir / name, lib, config, cache, progress=lambda s: say("      " + s.strip()),
                               provenance={"source_sha256": loaded.sha256, "onnx_file": source.name, **prov})
    size_mb = sidecar["engine"]["bytes"] / 1e6
    targets = sidecar["targets"]
    where = ", ".join(targets["compute_capabilities"]) if "compute_capabilities" in targets else targets["gpu"]["name"]
    say(f"      {name}: {size_mb:.1f} MB for {where}, build {sidecar['build']['seconds']:.1f}s, cache {sidecar['cache']}")
    return {"library": lib.describe(), "selected_because": why, "sidecar": name + ".json", "cache": sidecar["cache"],
            "artifact": {"role": layout.engine_role(network), "file": name, "precision": precision, "library": lib.name,
                         "library_version": lib.version, "targets": targets, "sha256": sidecar["engine"]["sha256"],
                         "source_onnx": source.name}}


def engine_parity(say, model, engine_path: Path, feeds, decode: str, options: "ExportOptions",
                   parity: Optional[Dict], reference_cache: Dict) -> Dict:
    """Run the engine against PyTorch where this machine can; otherwise say exactly why not."""
    from ..engines.load import check_engine, engine_runnable

    sidecar = check_engine(engine_path)
    ok, why = engine_runnable(sidecar)
    onnx_verdict = "INT8 ONNX gate" if options.int8 else ("FP16 ONNX" if options.fp16 else "ONNX")
    if not ok:
        summary = f"engine built, not executed: {why}; the {onnx_verdict} parity verdict stands"
        say(f"      {summary}")
        return {"status": "not executed", "reason": why, "summary": summary}
    from ..engines.runner import EngineRunner
    from ..parity.check import FP16_TOLERANCES, FP32_TOLERANCES, INT8_TOLERANCES, run_parity

    tol = INT8_TOLERANCES if options.int8 else (FP16_TOLERANCES if options.fp16 else FP32_TOLERANCES)
    rep = run_parity(model, engine_path, feeds, decode, options.topk, tolerances=tol,
                     runner=EngineRunner(engine_path, name=engine_path.name), reference_cache=reference_cache)
    summary = f"executed on {why}: {'PASS' if rep.passed else 'FAIL'} ({rep.summary()})"
    say(f"      engine parity {summary}")
    if parity is not None:
        parity["passed"] = parity["passed"] and rep.passed
        parity["reports"].append(rep.to_dict())
        parity["markdown"].append(rep.to_markdown())
    return {"status": "pass" if rep.passed else "fail", "executed_on": why, "summary": summary}
