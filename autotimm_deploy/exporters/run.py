"""The state one export carries from step to step (:class:`ExportRun`), and what the steps share: the recorded
provenance, the parity inputs, the manifest entries of ONNX files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._atomic import atomic_write_bytes, sha256_file
from .events import Reporter
from .options import ExportOptions

__all__ = ["ExportRun", "provenance", "level_sizes", "parity_feeds", "io_info", "NOT_IN_ONNX"]

#: ExportOptions left out of all recorded provenance: a local folder, which would make the records
#: depend on where the cache lives (it changes no artifact).
_NOT_PROVENANCE = ("cache_dir", "calib", "int8_eval")  # INT8: the images are identified by their SHA-256 instead
#: ExportOptions that change no ONNX file (verification, engine build and cache settings): left out of
#: the ONNX metadata, so that re-exporting with, say, ``--no-check`` or another ``--engine`` gives the same
#: ONNX bytes and so the same engine cache key.  Sidecars and the manifest record them.
NOT_IN_ONNX = ("check", "random_inputs", "demo_images", "min_size", "max_size", "engine", "target_cc",
               "workspace_mib", "cache", "int8", "calib_count", "calib_method", "int8_max_drop", "int8_repair_steps",
               "int8_task_gate")


def provenance(options: ExportOptions, onnx_only: bool = False) -> Dict:
    """What made an export: toolchain versions and the options (the CLI flags), as recorded in the engine
    sidecars and the manifest; with ``onnx_only`` the options that shape the ONNX files (all but
    :data:`NOT_IN_ONNX`), as written into their metadata (key ``autotimm_deploy.provenance``).  No paths,
    clocks or host names: the same model file and flags give byte-identical ONNX files.

    >>> sorted(set(provenance(ExportOptions())["options"]) - set(provenance(ExportOptions(), onnx_only=True)["options"]))
    ['cache', 'calib_count', 'calib_method', 'check', 'demo_images', 'engine', 'int8', 'int8_max_drop', 'int8_repair_steps', 'int8_task_gate', 'max_size', 'min_size', 'random_inputs', 'target_cc', 'workspace_mib']
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


def parity_feeds(loaded, size: Tuple[int, int], options: ExportOptions,
                 stride: int) -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """Seeded random inputs at the traced shape and synthetic demo images (one batch of ``demo_images`` scenes of
    the shapes dataset, normalised as the model's runtime does), plus a random input of a second shape where no
    feed has one yet: another batch size when the demo batch does not already give one (it does at the default
    1:1:8 profile: batch 4 next to batch 1), and with ``dynamic_hw`` another H/W always."""
    from ..demo.shapes import SPLIT_SEEDS, render_detection_sample
    from ..images import letterbox_images

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
        imgs = [render_detection_sample(base + k, size=max(h, w))[0][:h, :w] for k in range(n)]
        batch, _ = letterbox_images(imgs, (h, w), loaded.metadata["mean"], loaded.metadata["std"])
        demo.append((f"{n} synthetic shapes images", {"images": batch}))
    shapes = {f[1]["images"].shape for f in feeds + demo}
    other_batch = any(s[0] != opt for s in shapes)
    if (second_b, second_hw) != (opt, (h, w)) and (options.dynamic_hw or not other_batch):
        feeds.append((f"random second shape {second_b}x3x{second_hw[0]}x{second_hw[1]}", {"images": second}))
    return feeds + demo


def io_info(model) -> Dict[str, List[Dict]]:
    """The inputs and outputs of an ONNX model as a manifest records them: name, dtype, shape (symbols as text)."""
    import onnx

    def info(vs):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in vs]
    return {"inputs": info(model.graph.input), "outputs": info(model.graph.output)}


@dataclass
class ExportRun:
    """One export: its inputs, and what each step adds for the next (see :mod:`.pipeline`)."""

    model_path: Any
    out_dir: Path
    options: ExportOptions
    loaded: Any  # models.io.LoadedModel
    task: Any  # tasks.Task
    decode: str
    size: Tuple[int, int]
    stride: int
    profile: Dict
    library: Any
    report: Reporter
    feeds: List[Tuple[str, Dict[str, np.ndarray]]] = field(default_factory=list)
    reference_cache: Dict = field(default_factory=dict)  # PyTorch runs once per parity input, for every artifact
    artifacts: List[Dict] = field(default_factory=list)
    raw: Any = None  # the raw ONNX (until the surgery has used it)
    fused: Any = None  # model.onnx in memory (until FP16 and INT8 have used it)
    onnx_path: Optional[Path] = None
    fp16_path: Optional[Path] = None
    plan: Any = None  # the FP16 plan
    int8_report: Any = None
    parity: Optional[Dict] = None
    engine_info: Optional[Dict] = None
    exporter: str = "torchscript"
    opset: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    first_reference: Optional[Dict[str, np.ndarray]] = None  # PyTorch's outputs on the traced input
    network_feeds: Dict[str, List] = field(default_factory=dict)  # extra networks' example inputs

    @property
    def model(self):
        return self.loaded.model

    @property
    def family(self):
        return self.loaded.family

    def say(self, text: str) -> None:
        self.report.say(text)

    def entry(self, file: str) -> Dict:
        """The manifest entry of ``file``."""
        return next(a for a in self.artifacts if a["file"] == file)

    def write_onnx(self, model, file: str, role: str, precision: str, decode: str) -> Path:
        """Write an ONNX file of the export (atomically) and its manifest entry."""
        path = self.out_dir / file
        atomic_write_bytes(path, model.SerializeToString())
        self.artifacts.append({"role": role, "file": file, "precision": precision, "decode": decode, **io_info(model),
                               "sha256": sha256_file(path)})
        return path
