"""A Triton Inference Server model repository from an export folder: ``write_repository(export, repo, options)``.

Everything comes from the export's ``manifest.json``: the network's I/O names, data types and dims, the batch
range (``max_batch_size`` is the profile's largest batch; the smallest must be 1, since Triton sends any batch up
to it), the input size, class names (``labels.txt``) and the ONNX metadata the Python steps read.  Model folders
of the same names are replaced; other models in ``repo`` are left as they are.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .._atomic import atomic_write_text
from ..errors import AutotimmError
from .configs import Plan, Tensor, ensemble_config, network_config, postprocess_config, preprocess_config
from .pbtxt import to_pbtxt, validate_config

__all__ = ["TritonOptions", "NETWORKS", "write_repository"]

NETWORKS = ("auto", "tensorrt", "onnxruntime", "python")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
KINDS = ("auto", "gpu", "cpu")
_ONNX_ROLE = {"fp32": "onnx", "fp16": "onnx-fp16"}


@dataclass
class TritonOptions:
    """How the repository is made.  ``network``: ``auto`` (the engine as ``tensorrt_plan`` when full TensorRT built
    it, else the ONNX as ``onnxruntime_onnx``), ``tensorrt``, ``onnxruntime`` or ``python`` (the CPU variant:
    ONNX Runtime on Triton's Python backend through autotimm-deploy's runtime).  ``precision`` picks the ONNX
    (``auto``: FP16 on a GPU when exported, else FP32; an engine has its own).  ``kind``: the network's instance
    group (``auto``: GPU for ``tensorrt``/``onnxruntime``, CPU for ``python``)."""

    name: Optional[str] = None  # default: the model file's stem
    network: str = "auto"
    precision: str = "auto"
    max_batch_size: Optional[int] = None  # default: the export's largest batch
    preferred_batch: Optional[Tuple[int, ...]] = None  # default: the export's optimum and largest batch (above 1)
    max_queue_delay_us: int = 1000
    instances: int = 1
    kind: str = "auto"
    step_instances: int = 1  # pre/post-processing instances (CPU)
    score_thresh: Optional[float] = None  # None: the model's own (as Predictor.predict)
    iou_thresh: Optional[float] = None
    max_detections: Optional[int] = None
    top_k: int = 5
    threads: int = 0  # ONNX Runtime intra-op threads of the Python network (0: ONNX Runtime's default)

    def validate(self) -> "TritonOptions":
        for key, allowed in (("network", NETWORKS), ("precision", PRECISIONS), ("kind", KINDS)):
            if getattr(self, key) not in allowed:
                raise AutotimmError(f"triton {key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise AutotimmError(f"triton model name {self.name!r}: use letters, digits, '_', '-' and '.'")
        for key in ("instances", "step_instances", "top_k"):
            if getattr(self, key) < 1:
                raise AutotimmError(f"triton {key} must be at least 1, got {getattr(self, key)}")
        if self.max_queue_delay_us < 0 or self.threads < 0:
            raise AutotimmError("triton max queue delay and threads must be >= 0")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise AutotimmError(f"triton max batch size must be at least 1, got {self.max_batch_size}")
        if self.network == "tensorrt" and self.precision not in ("auto",):
            raise AutotimmError("the precision chooses an ONNX; a tensorrt_plan network is the engine, whose "
                                "precision was set at export")
        return self


def _tensors(specs: List[Dict]) -> List[Tensor]:
    out = []
    for s in specs:
        shape = s["shape"]
        if not shape or isinstance(shape[0], int):
            raise AutotimmError(f"tensor {s['name']!r} has a static batch dimension ({shape}): Triton batches requests; "
                                "re-export with a dynamic batch (--batch 1:OPT:MAX)")
        out.append(Tensor(s["name"], s["dtype"], [d if isinstance(d, int) else -1 for d in shape[1:]]))
    return out


def _choose(manifest: Dict, opts: TritonOptions) -> Tuple[str, Dict, str, str]:
    """(network, the artifact it runs, instance kind, why)."""
    arts = {a["role"]: a for a in manifest["artifacts"]}
    engine = arts.get("engine")
    network = opts.network
    if network == "auto":
        network = "tensorrt" if engine and engine.get("library") == "tensorrt" else "onnxruntime"
    kind = opts.kind if opts.kind != "auto" else ("cpu" if network == "python" else "gpu")
    if network == "tensorrt":
        if not engine:
            raise AutotimmError("the export has no engine (exported with --engine none?): use the onnxruntime or "
                                "python network")
        if engine.get("library") != "tensorrt":
            raise AutotimmError(f"the export's engine was built by {engine.get('library')} "
                                f"{engine.get('library_version')}; Triton's tensorrt_plan backend loads engines of full "
                                "TensorRT only (re-export with --engine tensorrt on a host whose TensorRT matches the "
                                "Triton release), or use the onnxruntime network")
        if kind != "gpu":
            raise AutotimmError("a tensorrt_plan network runs on a GPU only (instance kind gpu)")
        return network, engine, kind, f"{engine['library']} {engine['library_version']} engine"
    precision = opts.precision
    if precision == "auto":
        precision = "fp16" if kind == "gpu" and "onnx-fp16" in arts else "fp32"
    role = _ONNX_ROLE.get(precision) or ("onnx-int8" if kind == "gpu" else "onnx-int8-cpu")
    if role not in arts:
        raise AutotimmError(f"the export has no {precision.upper()} ONNX ({role}): re-export with --{precision}")
    return network, arts[role], kind, f"{arts[role]['file']} ({precision})"


def _onnx_metadata(path: Path) -> Dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def _model_py(step: str, name: str) -> str:
    from .. import __version__

    return (f"# generated by autotimm-deploy {__version__}: the {step} step of {name!r}\n"
            "# needs autotimm-deploy (pip install autotimm-deploy[serve]) in the Python environment of Triton's Python "
            "backend\n"
            "from autotimm_deploy.serve.triton_model import TritonPythonModel  # noqa: F401\n")


def _write_model(tmp: Path, config: Dict, files: Dict[str, str | Path], version_files: Dict[str, str | Path]) -> str:
    """One model folder: config.pbtxt (validated), extra files beside it and in version 1; returns its name."""
    text = to_pbtxt(config) + "\n"
    validate_config(text, f"{config['name']}/config.pbtxt")
    d = tmp / config["name"]
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(text)
    for where, items in ((d, files), (d / "1", version_files)):
        for fname, content in items.items():
            if isinstance(content, Path):
                shutil.copyfile(content, where / fname)
            else:
                (where / fname).write_text(content)
    return config["name"]


def write_repository(export_dir: str | Path, repo_dir: str | Path, options: Optional[TritonOptions] = None,
                     progress=None) -> Dict:
    """Write (or refresh) the models of one export in the Triton model repository ``repo_dir``; returns a summary
    (model names, network, artifact, batch) also written to ``repo_dir/<name>/autotimm-deploy.json``."""
    opts = (options or TritonOptions()).validate()
    export_dir, repo_dir = Path(export_dir), Path(repo_dir)
    mpath = export_dir / "manifest.json"
    if not mpath.exists():
        raise AutotimmError(f"{export_dir}: not an export directory (no manifest.json); run autotimm-export first")
    manifest = json.loads(mpath.read_text())
    name = opts.name or re.sub(r"[^A-Za-z0-9_.-]", "_", Path(manifest["source"]["path"]).stem)
    network, art, kind, why = _choose(manifest, opts)
    onnx_art = art if network != "tensorrt" else next(a for a in manifest["artifacts"] if a["file"] == art["source_onnx"])
    lo, opt_b, hi = manifest["batch"]
    if lo != 1:
        raise AutotimmError(f"the export's smallest batch is {lo}; Triton sends any batch from 1 to max_batch_size: "
                            "re-export with --batch 1:OPT:MAX")
    max_batch = opts.max_batch_size or hi
    if max_batch > hi:
        raise AutotimmError(f"triton max batch size {max_batch} is above the export's largest batch {hi}")
    preferred = sorted({b for b in (opts.preferred_batch or (opt_b, max_batch)) if 1 < b <= max_batch})
    meta = _onnx_metadata(export_dir / onnx_art["file"])
    post = {"score_thresh": opts.score_thresh, "iou_thresh": opts.iou_thresh, "max_detections": opts.max_detections}
    notes = f"{name}: {why}, from {export_dir.resolve()}"
    if network == "tensorrt":
        cc = ", ".join(art.get("targets", {}).get("compute_capabilities", [])) or "the build GPU's"
        notes += (f"\nengine: {art['library']} {art['library_version']}, precision {art['precision']}, compute "
                  f"capability {cc}.\nTriton's TensorRT backend must ship this TensorRT version (see the Triton release "
                  "notes) and the GPU must match; otherwise rebuild the engine on the serving host.")
    plan = Plan(name=name, task=manifest["source"]["task"], network=network,
                net_inputs=_tensors(onnx_art["inputs"]), net_outputs=_tensors(onnx_art["outputs"]),
                input_hw=manifest["input_size"], max_batch_size=max_batch, preferred_batch=preferred,
                max_queue_delay_us=opts.max_queue_delay_us, instances=opts.instances, kind=f"KIND_{kind.upper()}",
                step_instances=opts.step_instances, top_k=opts.top_k,
                step_params={k: "" if v is None else str(v) for k, v in post.items()},
                network_params={"onnx": "model.onnx", "threads": str(opts.threads)}, notes=notes)
    if plan.task == "classification":
        plan.top_k = min(plan.top_k, plan.net_outputs[0].dims[-1])
    labels = "\n".join(manifest["class_names"]) + "\n"
    meta_json = json.dumps(meta, indent=1)
    repo_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}.{name}.", dir=repo_dir.resolve().parent))
    try:
        models = [_write_model(tmp, ensemble_config(plan, encoded), {"labels.txt": labels}, {})
                  for encoded in (True, False)]
        models += [_write_model(tmp, preprocess_config(plan, encoded), {},
                                {"model.py": _model_py("preprocess", name), "model.json": meta_json})
                   for encoded in (True, False)]
        net = network_config(plan)
        if network == "python":
            files = {"model.py": _model_py("network", name), "model.json": meta_json,
                     "model.onnx": export_dir / art["file"]}
        else:
            files = {net["default_model_filename"]: export_dir / art["file"]}
        models.append(_write_model(tmp, net, {}, files))
        models.append(_write_model(tmp, postprocess_config(plan), {"labels.txt": labels},
                                   {"model.py": _model_py("postprocess", name), "model.json": meta_json}))
        summary = {"name": name, "network": network, "artifact": art["file"], "why": why, "kind": kind,
                   "max_batch_size": max_batch, "preferred_batch": preferred, "task": plan.task,
                   "models": models, "options": asdict(opts)}
        atomic_write_text(tmp / name / "autotimm-deploy.json", json.dumps(summary, indent=1) + "\n")
        for d in sorted(tmp.iterdir()):
            target = repo_dir / d.name
            if target.exists():
                shutil.rmtree(target)
            d.rename(target)
            if progress:
                progress(f"triton: wrote {target}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
