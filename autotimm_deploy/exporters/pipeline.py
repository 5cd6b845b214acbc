"""The export pipeline as a Python API: model file -> ONNX -> graph surgery -> parity -> manifest.

>>> from autotimm_deploy.demo import demo_model_path
>>> import tempfile
>>> manifest = export_model(demo_model_path("detector"), tempfile.mkdtemp(), ExportOptions(), progress=None)
>>> manifest["parity"]["passed"], [a["role"] for a in manifest["artifacts"]][:2]
(True, ['onnx-raw', 'onnx'])
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from .. import __version__
from .._atomic import TMP_PREFIX, atomic_write_bytes, atomic_write_text, sha256_file
from ..errors import ExportError
from ..models.io import LoadedModel, load_model_file
from .onnx_export import DEFAULT_OPSET, ExportConfig, check_input_size, export_onnx, max_stride
from .surgery import DECODE_MODES, apply_decode

__all__ = ["ExportOptions", "export_model", "parity_feeds", "level_sizes"]

Progress = Optional[Callable[[str], None]]


@dataclass
class ExportOptions:
    """Options of :func:`export_model` (the CLI's flags)."""

    decode: str = "boxes"
    opset: int = DEFAULT_OPSET
    input_size: Optional[Tuple[int, int]] = None
    batch: Tuple[int, int, int] = (1, 1, 8)  # MIN:OPT:MAX; dynamic batch unless MIN == MAX
    dynamic_hw: bool = False
    topk: Optional[int] = None
    check: bool = True
    random_inputs: int = 2
    demo_images: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ExportError(f"--decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ExportError(f"--batch MIN:OPT:MAX needs 1 <= MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
        if not 7 <= self.opset <= 21:
            raise ExportError(f"--opset must be between 7 and 21, got {self.opset}")


def level_sizes(size: Tuple[int, int], strides: Sequence[int]) -> List[Tuple[int, int]]:
    """(H, W) of each FPN level for an input of ``size`` (ceil division, as the max-pool levels)."""
    out, (h, w) = [], size
    for s in strides:
        out.append((-(-h // s), -(-w // s)))
    return out


def parity_feeds(loaded: LoadedModel, size: Tuple[int, int], options: ExportOptions,
                 stride: int) -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """Seeded random inputs at the traced shape and a second shape, plus synthetic demo images."""
    from ..demo.shapes import render_classification_sample, render_detection_sample, SPLIT_SEEDS
    from ..demo.train import to_tensor

    rng = np.random.default_rng(options.seed)
    lo, opt, hi = options.batch
    h, w = size
    feeds = []
    for i in range(options.random_inputs):
        feeds.append((f"random#{i} {opt}x3x{h}x{w}", {"images": rng.standard_normal((opt, 3, h, w), dtype=np.float32)}))
    second_b = hi if hi != opt else opt
    second_hw = (h + stride, w + 2 * stride) if options.dynamic_hw else (h, w)
    if (second_b, second_hw) != (opt, (h, w)):
        feeds.append((f"random second shape {second_b}x3x{second_hw[0]}x{second_hw[1]}",
                      {"images": rng.standard_normal((second_b, 3, *second_hw), dtype=np.float32)}))
    if options.demo_images:
        n = min(options.demo_images, hi)
        base = SPLIT_SEEDS["val"]
        if loaded.task == "detection":
            imgs = [render_detection_sample(base + k, size=max(h, w))[0][:h, :w] for k in range(n)]
        else:
            imgs = [render_classification_sample(base + k, size=max(h, w))[0][:h, :w] for k in range(n)]
        feeds.append((f"{n} synthetic shapes images", {"images": to_tensor(imgs, loaded.metadata["mean"], loaded.metadata["std"]).numpy()}))
    return feeds


def _io_info(model: onnx.ModelProto) -> Dict[str, List[Dict]]:
    def info(vs):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in vs]
    return {"inputs": info(model.graph.input), "outputs": info(model.graph.output)}


def _cleanup_tmp(out_dir: Path) -> None:
    for p in out_dir.glob(TMP_PREFIX + "*"):
        try:
            p.unlink()
        except OSError:
            pass


def export_model(model_path: str | Path, out_dir: str | Path, options: Optional[ExportOptions] = None,
                 progress: Progress = print) -> Dict:
    """Export ``model_path`` into ``out_dir`` and return the manifest (also written as manifest.json).

    Artifacts: ``model.raw.onnx`` (raw per-level outputs), ``model.onnx`` (with ``options.decode``
    fused), ``parity.json``/``parity.md`` and Polygraphy's ``inputs.json``/``pytorch_outputs.json``.
    """
    options = options if options is not None else ExportOptions()
    say = progress or (lambda s: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _cleanup_tmp(out_dir)
    steps: Dict[str, float] = {}
    t0 = time.time()
    say(f"[1/4] loading {model_path}")
    loaded = load_model_file(model_path)
    steps["load"] = time.time() - t0
    model = loaded.model
    stride = max_stride(model)
    size = options.input_size or loaded.metadata.get("input_size")
    if size is None:
        raise ExportError(f"{model_path} records no input size; pass --input-size H W")
    size = check_input_size(size, stride)
    if loaded.task != "detection" and (options.decode == "activations" or options.topk):
        raise ExportError("--decode activations and --topk apply to detectors only; a classifier exports `logits`")
    lo, opt, hi = options.batch
    cfg = ExportConfig(input_size=size, batch_size=opt, dynamic_batch=(lo != hi), dynamic_hw=options.dynamic_hw,
                       opset=options.opset)
    t = time.time()
    say(f"[2/4] exporting ONNX (opset {options.opset}, input {opt}x3x{size[0]}x{size[1]}, "
        f"batch {'dynamic' if cfg.dynamic_batch else 'static'}, H/W {'dynamic' if cfg.dynamic_hw else 'static'})")
    raw = export_onnx(loaded, cfg)
    steps["export"] = time.time() - t
    artifacts = []
    raw_path = out_dir / "model.raw.onnx"
    atomic_write_bytes(raw_path, raw.SerializeToString())
    artifacts.append({"role": "onnx-raw", "file": raw_path.name, "precision": "fp32", "decode": "raw", **_io_info(raw),
                      "sha256": sha256_file(raw_path)})
    t = time.time()
    decode = options.decode if loaded.task == "detection" else "raw"
    say(f"[3/4] graph surgery: decode={decode}" + (f", top-k {options.topk}" if options.topk else ""))
    if loaded.task == "detection":
        static_hw = None if options.dynamic_hw else level_sizes(size, model.strides)
        fused = apply_decode(raw, decode, model.strides, model.num_classes, static_hw, options.topk)
    else:
        fused = raw
    steps["surgery"] = time.time() - t
    onnx_path = out_dir / "model.onnx"
    atomic_write_bytes(onnx_path, fused.SerializeToString())
    artifacts.append({"role": "onnx", "file": onnx_path.name, "precision": "fp32", "decode": decode, **_io_info(fused),
                      "sha256": sha256_file(onnx_path)})
    parity = None
    if options.check:
        from ..parity.check import run_parity

        t = time.time()
        feeds = parity_feeds(loaded, size, options, stride)
        say(f"[4/4] parity vs PyTorch on {len(feeds)} inputs (Polygraphy, ONNX Runtime CPU)")
        report = run_parity(model, onnx_path, feeds, decode, options.topk, save_dir=out_dir)
        steps["parity"] = time.time() - t
        atomic_write_text(out_dir / "parity.json", json.dumps(report.to_dict(), indent=2) + "\n")
        atomic_write_text(out_dir / "parity.md", report.to_markdown())
        parity = report.to_dict()
        for a in artifacts:
            if a["file"] == onnx_path.name:
                a["parity"] = "pass" if report.passed else "fail"
        artifacts += [{"role": "parity-report", "file": "parity.json"}, {"role": "parity-report-md", "file": "parity.md"},
                      {"role": "polygraphy-inputs", "file": "inputs.json"},
                      {"role": "polygraphy-reference-outputs", "file": "pytorch_outputs.json"}]
    else:
        say("[4/4] parity check skipped (--no-check)")
    manifest = {
        "autotimm_deploy_version": __version__,
        "source": {"path": str(model_path), "sha256": loaded.sha256, "task": loaded.task, "config": loaded.config},
        "input_size": list(size),
        "batch": list(options.batch),
        "dynamic_hw": options.dynamic_hw,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "artifacts": artifacts,
        "parity": parity,
        "timings_s": {k: round(v, 3) for k, v in steps.items()},
    }
    if loaded.task == "detection":
        manifest["strides"] = list(model.strides)
    manifest["class_names"] = loaded.metadata.get("class_names")
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")  # written last
    return manifest
