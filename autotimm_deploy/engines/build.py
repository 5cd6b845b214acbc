"""Build TensorRT / TensorRT-RTX engines from ONNX: one interface for both libraries.

:func:`build_engine` parses an ONNX file, applies a :class:`BuildConfig` (optimisation profiles,
workspace, precision, TensorRT-RTX compute-capability targets, full TensorRT timing cache) and returns
a :class:`BuiltEngine`.  :func:`engine_from_onnx` adds the sidecar and the cache: it writes
``<engine>`` + ``<engine>.json`` and skips the build when the cache has an engine with the same key.

Parser and builder errors become :class:`~autotimm_deploy.errors.EngineBuildError` naming the ONNX
node and op that failed.

Example (it builds a real engine ahead of time, no GPU needed; ``tests/engines/test_build.py`` runs it, doctests
build no engine)::

    from autotimm_deploy.engines.library import import_library
    from autotimm_deploy.engines.build import BuildConfig, engine_from_onnx, static_profile

    side = engine_from_onnx("m.onnx", "m.engine", import_library("tensorrt-rtx"),
                            BuildConfig(profiles=[static_profile("images", (1, 3, 64, 64))], targets=("SM86",)),
                            cache=None, progress=None)
    side["library"]["name"], side["precision"], side["io"]["outputs"][0]["name"], side["cache"]
    # ('tensorrt-rtx', 'fp32', 'logits', 'off')
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import platform
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import onnx

from .. import __version__
from .._atomic import atomic_write_bytes, sha256_file
from ..errors import EngineBuildError, EngineError
from .library import RTX_TARGETS, TrtLibrary, gpu_info
from .sidecar import SIDECAR_FORMAT, EngineCache, cache_key, write_engine

__all__ = ["BuildConfig", "BuiltEngine", "Profile", "static_profile", "build_engine", "engine_from_onnx",
           "default_targets"]

Shape = Tuple[int, ...]
Profile = Dict[str, Tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)
Progress = Optional[Callable[[str], None]]


def static_profile(name: str, shape: Sequence[int]) -> Profile:
    s = tuple(int(v) for v in shape)
    return {name: (s, s, s)}


@dataclass
class BuildConfig:
    """How to build.  ``precision`` is "fp32", "fp16" or "int8" (a Q/DQ ONNX: explicit quantization).  ``targets``: TensorRT-RTX compute
    capabilities (e.g. ``("SM86", "SM89")``; empty: the GPU present, else every target).
    ``fp32_layers``: with TensorRT 10's FP16 flag, ONNX node names pinned to FP32 (the islands)."""

    profiles: List[Profile] = field(default_factory=list)
    precision: str = "fp32"
    workspace_mib: Optional[int] = None
    targets: Tuple[str, ...] = ()
    fp32_layers: Tuple[str, ...] = ()
    fp32_islands: Optional[Dict] = None  # recorded in the sidecar and the cache key
    timing_cache: Optional[Path] = None  # full TensorRT only

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16", "int8"):
            raise EngineError(f"precision must be fp32, fp16 or int8, got {self.precision!r}")
        bad = [t for t in self.targets if t not in RTX_TARGETS]
        if bad:
            raise EngineError(f"--target-cc: unknown target(s) {bad}; TensorRT-RTX builds for {', '.join(RTX_TARGETS)} "
                              "(SM90, i.e. H100/H200, is not a TensorRT-RTX target)")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise EngineError(f"--workspace must be >= 1 MiB, got {self.workspace_mib}")
        for prof in self.profiles:
            for name, (lo, opt, hi) in prof.items():
                if not (len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi))):
                    raise EngineError(f"profile for {name!r} needs min <= opt <= max in every dim, got {lo} {opt} {hi}")


@dataclass
class BuiltEngine:
    data: bytes
    io: Dict[str, List[Dict]]
    seconds: float
    targets: Dict
    warnings: List[str]


def default_targets() -> Tuple[str, ...]:
    """TensorRT-RTX targets when ``--target-cc`` is not given: the GPU present if it is a target, else all."""
    gpu = gpu_info()
    if gpu is not None and gpu["sm"] in RTX_TARGETS:
        return (str(gpu["sm"]),)
    return RTX_TARGETS


_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT64": "int64", "INT32": "int32", "BOOL": "bool", "INT8": "int8",
           "BF16": "bfloat16", "UINT8": "uint8"}


def _dtype_name(dt) -> str:
    return _DTYPES.get(str(dt).split(".")[-1], str(dt).split(".")[-1].lower())


class _Logger:
    """A TensorRT logger that keeps warnings and errors for error messages."""

    @staticmethod
    def make(trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: List[str] = []
                self.warnings: List[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                    self.errors.append(msg)
                elif severity == trt.ILogger.WARNING:
                    self.warnings.append(msg)

        return Logger()


class _CtrlC:
    """Ctrl-C during a build.  Python raises KeyboardInterrupt in whatever Python code runs next, which during a
    build is a logger or progress callback, and the library swallows exceptions raised in its callbacks (an
    export interrupted during the build used to finish with exit 0).  While the library runs, SIGINT only sets
    ``pressed`` (the progress monitor then cancels the build); leaving the block raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.pressed = False

    def __enter__(self) -> "_CtrlC":
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._press)
        return self

    def _press(self, signum, frame) -> None:
        self.pressed = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.pressed and exc[0] is None:
            raise KeyboardInterrupt


def _progress_monitor(trt, say: Callable[[str], None], ctrl_c: "_CtrlC"):
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        """Progress lines; cancels the build once Ctrl-C was pressed (``ctrl_c``, see :class:`_CtrlC`)."""

        def __init__(self):
            base.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                say(f"  builder: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return not ctrl_c.pressed  # False cancels the build

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def _node_index(onnx_path: Path) -> List[Tuple[str, str]]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return sorted(((n.name, n.op_type) for n in model.graph.node if n.name), key=lambda t: -len(t[0]))


def _explain(messages: Sequence[str], nodes: Sequence[Tuple[str, str]]) -> str:
    """Builder messages, each followed by the ONNX node/op it mentions (TensorRT names layers after nodes)."""
    out = []
    for m in messages:
        first = m.strip().splitlines()[0][:600]
        hit = next(((n, op) for n, op in nodes if n in m), None)
        out.append(f"{first} [ONNX node {hit[0]!r}, op {hit[1]}]" if hit else first)
    return "; ".join(out)


def build_engine(onnx_path: str | Path, lib: TrtLibrary, config: BuildConfig, progress: Progress = None) -> BuiltEngine:
    """Parse ``onnx_path`` and build a serialized engine with ``lib`` (no sidecar, no cache)."""
    trt = lib.module
    say = progress or (lambda s: None)
    onnx_path = Path(onnx_path)
    logger = _Logger.make(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineError(f"{lib.name} could not create a builder: {'; '.join(logger.errors) or 'no reason given'}")
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    with _CtrlC():  # the parser logs through Python callbacks too
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errs = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errs.append(f"node {e.node()} {e.node_name()!r} ({e.node_operator()}): {e.desc()}")
        raise EngineBuildError(f"{lib.name} {lib.version} could not parse {onnx_path.name}: " + "; ".join(errs or logger.errors))
    cfg = builder.create_builder_config()
    if config.workspace_mib is not None:
        cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    if config.precision == "fp16" and not lib.strongly_typed:
        # TensorRT 10: FP16 by builder flag; the FP32 islands are pinned by precision constraints
        cfg.set_flag(trt.BuilderFlag.FP16)
        cfg.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pins = set(config.fp32_layers)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if any(layer.name == p or layer.name.startswith(p + "_") or fnmatch.fnmatchcase(layer.name, p) for p in pins):
                layer.precision = trt.float32
                for k in range(layer.num_outputs):
                    layer.set_output_type(k, trt.float32)
    if config.precision == "int8":
        has_q = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
        if not has_q:
            raise EngineError(f"an INT8 engine needs a Q/DQ ONNX (model.int8.onnx from `autotimm-export --int8`), but "
                              f"{onnx_path.name} has no QuantizeLinear")
        if not lib.strongly_typed:  # TensorRT 10: explicit quantization still needs the INT8 flag
            cfg.set_flag(trt.BuilderFlag.INT8)
    if config.precision == "fp16" and lib.strongly_typed:
        has16 = any(_dtype_name(network.get_layer(i).get_output(k).dtype) == "float16"
                    for i in range(network.num_layers) for k in range(network.get_layer(i).num_outputs))
        if not has16:
            raise EngineError(f"{lib.name} {lib.version} is strongly typed: an FP16 engine needs the FP16 ONNX "
                              f"(model.fp16.onnx from `autotimm-export --fp16`), but {onnx_path.name} has no float16 tensor")
    if lib.ahead_of_time:
        targets = list(config.targets or default_targets())
        cfg.num_compute_capabilities = len(targets)
        for i, t in enumerate(targets):
            cfg.set_compute_capability(getattr(trt.ComputeCapability, t), i)
        target_info: Dict = {"compute_capabilities": targets}
    else:
        gpu = gpu_info()
        if gpu is None:
            raise EngineError(f"full TensorRT ({lib.name} {lib.version}) builds on a GPU and none is present; "
                              "use --engine tensorrt-rtx to build ahead of time")
        target_info = {"gpu": gpu}
    timing = None
    if config.timing_cache is not None and not lib.ahead_of_time:
        blob = config.timing_cache.read_bytes() if config.timing_cache.exists() else b""
        timing = cfg.create_timing_cache(blob)
        cfg.set_timing_cache(timing, ignore_mismatch=False)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for prof in config.profiles:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.items():
            if name not in {t.name for t in inputs}:
                raise EngineError(f"profile names input {name!r}, the network's inputs are {[t.name for t in inputs]}")
            p.set_shape(name, lo, opt, hi)
        cfg.add_optimization_profile(p)
    dynamic = [t.name for t in inputs if any(d < 0 for d in t.shape)]
    if dynamic and not config.profiles:
        raise EngineError(f"inputs {dynamic} have dynamic dims: give an optimisation profile (--batch MIN:OPT:MAX)")
    start = time.time()
    with _CtrlC() as ctrl_c:  # Ctrl-C cancels the build and raises KeyboardInterrupt afterwards
        monitor = _progress_monitor(trt, say, ctrl_c)  # always: it is also what cancels the build
        if monitor is not None and hasattr(cfg, "progress_monitor"):
            cfg.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, cfg)
    seconds = time.time() - start
    if serialized is None:
        raise EngineBuildError(f"{lib.name} {lib.version} failed to build {onnx_path.name}: "
                               + _explain(logger.errors or ["no error message"], _node_index(onnx_path)))
    if timing is not None:
        atomic_write_bytes(config.timing_cache, bytes(cfg.get_timing_cache().serialize()))

    def io(t):
        return {"name": t.name, "dtype": _dtype_name(t.dtype), "shape": [int(d) for d in t.shape]}

    io_info = {"inputs": [io(t) for t in inputs], "outputs": [io(network.get_output(i)) for i in range(network.num_outputs)]}
    return BuiltEngine(bytes(serialized), io_info, seconds, target_info, list(logger.warnings))


def _profiles_json(profiles: Sequence[Profile]) -> List[Dict]:
    return [{n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, (lo, opt, hi) in p.items()} for p in profiles]


def _failed_target(message: str) -> Optional[str]:
    """The SMxx a TensorRT-RTX compile error names ("... for Turing (SM75): FP32 GEMM is not supported")."""
    import re

    m = re.search(r"\((SM\d+)\)", message)
    return m.group(1) if m else None


def engine_from_onnx(onnx_path: str | Path, engine_path: str | Path, lib: TrtLibrary, config: BuildConfig,
                     cache: Optional[EngineCache] = None, progress: Progress = print,
                     provenance: Optional[Dict] = None) -> Dict:
    """Build (or take from ``cache``) the engine for ``onnx_path``; write it and its sidecar; return the sidecar."""
    say = progress or (lambda s: None)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    onnx_sha = sha256_file(onnx_path)
    if lib.ahead_of_time:
        targets: object = list(config.targets or default_targets())
    else:
        gpu = gpu_info()
        targets = {k: gpu[k] for k in ("name", "compute_capability", "cuda_runtime")} if gpu else None
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    # an INT8 graph's calibration (method, image count, SHA-256 of the images) is in its bytes already; named in the
    # key too, so that a cache entry says what it was calibrated on
    calibration = {"calibration": json.loads(meta["calibration"])} if "calibration" in meta else {}
    key_fields = {
        "onnx_sha256": onnx_sha, "library": lib.name, "library_version": lib.version, "precision": config.precision,
        "profiles": _profiles_json(config.profiles), "targets": targets, "workspace_mib": config.workspace_mib,
        "fp32_islands": config.fp32_islands, "builder": {"fp32_layers": sorted(config.fp32_layers),
                                                         "strongly_typed": lib.strongly_typed, **calibration},
    }
    key = cache_key(key_fields)
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        data, sidecar = hit
        say(f"  engine cache hit ({key[:12]}): same ONNX, library, precision, profiles and targets; not rebuilt")
        sidecar = dict(sidecar, cache="hit")
    else:
        dropped: Dict[str, str] = {}
        while True:
            try:
                built = build_engine(onnx_path, lib, replace(config, targets=tuple(targets)) if lib.ahead_of_time
                                     else config, progress)
                break
            except EngineBuildError as exc:
                # default TensorRT-RTX targets: drop an architecture that cannot compile this graph and say so;
                # targets the user named (--target-cc) are never dropped silently
                sm = _failed_target(str(exc))
                if config.targets or not lib.ahead_of_time or sm not in targets or len(targets) == 1:
                    raise
                targets = [t for t in targets if t != sm]
                dropped[sm] = str(exc).split(": ", 1)[-1][:300]
                say(f"  {sm} dropped from the default targets: {lib.name} cannot compile this graph for it "
                    f"(name targets with --target-cc to make this an error)")
        data = built.data
        sidecar = {
            "format": SIDECAR_FORMAT,
            "engine": {"file": engine_path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
            "library": lib.describe(),
            "precision": config.precision,
            "strongly_typed": lib.strongly_typed,
            "targets": built.targets,
            "profiles": key_fields["profiles"],
            "io": built.io,
            "onnx": {"file": onnx_path.name, "sha256": onnx_sha},
            "model": meta,
            "workspace_mib": config.workspace_mib,
            "fp32_islands": config.fp32_islands,
            "dropped_targets": dropped,
            "build": {"seconds": round(built.seconds, 3), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "host": platform.node(), "warnings": len(built.warnings)},
            "provenance": {"autotimm_deploy": __version__, **(provenance or {})},
            "cache_key": key,
            "cache_key_fields": key_fields,
            "cache": "miss" if cache is not None else "off",
        }
        if cache is not None:
            cache.put(key, data, {**sidecar, "cache": "stored"})
    sidecar["engine"] = dict(sidecar["engine"], file=engine_path.name)
    write_engine(engine_path, data, sidecar)  # crash-safe pair; check_engine also verifies size + SHA-256
    return sidecar

