"""The Python runtime: ``load(path)`` gives a :class:`Predictor` for anything ``autotimm-export`` wrote.

>>> from autotimm_deploy.engines import load
>>> from autotimm_deploy.demo import demo_model_path
>>> from autotimm_deploy.demo.shapes import render_detection_sample
>>> image, boxes, labels = render_detection_sample(2_000_000, size=128)
>>> predictor = load(demo_model_path("detector"))         # a model file, an .onnx, an .engine or an export dir
>>> result = predictor.predict(image, score_thresh=0.3)[0]
>>> predictor.backend.name, sorted(result.labels.tolist()) == sorted(labels.tolist())
('pytorch (eager, CPU, FP32)', True)

Every backend shares one contract: ``infer(dict of arrays) -> dict of arrays`` on network inputs,
and ``predict(images)``: resize to the network size as the model family declares (letterbox: aspect
kept, top-left or centred, padded with the mean colour or a fixed one; or resize + centre crop),
normalise with the recorded mean/std, cast to the input dtype, run in batches that fit the batch
range, decode whatever the graph did not fuse, post-process with the family's rule (per-class or
argmax candidates, thresholds recorded with the model), and boxes mapped back to the original image
pixels.  Classifiers return class probabilities (softmax, or sigmoid for multi-label families).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import AutotimmError, EngineIncompatible
from ..artifact import ArtifactInfo
from ..images import ImageLike, Letterbox, letterbox_images, load_image
from ..tasks import get_task
from ..tasks.classification import Classification, probabilities
from ..tasks.detection import Detections
from .backends import (Backend, EngineBackend, OnnxRuntimeBackend, TorchBackend, TorchNetworkBackend,
                       onnxruntime_providers)

__all__ = ["ArtifactInfo", "Detections", "Classification", "Predictor", "load", "load_image", "Letterbox",
           "letterbox_images", "probabilities"]

BACKENDS = ("auto", "tensorrt", "onnxruntime", "pytorch")


class Predictor:
    """A backend plus the pre/post-processing its metadata describes."""

    def __init__(self, backend: Backend, info: ArtifactInfo, source: str = "", why: str = "",
                 networks: Optional[Dict[str, Backend]] = None) -> None:
        self.backend, self.info, self.source, self.why = backend, info, source, why
        self.networks = dict(networks or {})  # the task's extra networks (instance segmentation's mask head)

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self.backend.infer(feed)

    def _target_size(self, h: int, w: int, resize: str) -> Tuple[int, int]:
        """The network input size for an HxW image: ``fit`` (every backend's default): the model's input size;
        ``native``: the image's own size padded up to a stride multiple, where the artifact takes dynamic H/W
        and that size lies in its profile (else ``fit``)."""
        info = self.info
        if resize == "native" and info.dynamic_hw:
            s = max(info.strides) if info.strides else 1  # a pooled classifier takes any size
            th, tw = -(-h // s) * s, -(-w // s) * s
            lo, hi = info.hw_range or ((s, s), (1 << 30, 1 << 30))
            if lo[0] <= th <= hi[0] and lo[1] <= tw <= hi[1]:
                return th, tw
        return tuple(info.input_size)

    def preprocess(self, images: Sequence[np.ndarray], size: Tuple[int, int]) -> Tuple[np.ndarray, List[Letterbox]]:
        """Resize each image into ``size`` as the family declares and normalise: (B, 3, H, W) in the backend's
        input dtype."""
        batch, boxes = letterbox_images(images, size, self.info.mean, self.info.std, self.info.family.preprocess)
        return batch.astype(self.backend.input_dtype, copy=False), boxes

    def predict(self, images: Union[ImageLike, Sequence[ImageLike]], score_thresh: Optional[float] = None,
                iou_thresh: Optional[float] = None, max_detections: Optional[int] = None,
                class_agnostic: bool = False, resize: str = "fit") -> List:
        """Run on one image or a list; returns one result per image, in order.  Thresholds left ``None`` are
        the model's own (``info.family.postprocess``: an AutoTimm checkpoint's score/NMS thresholds and
        maximum detections; 0.05 / 0.6 / 100 for the seed's models).  The result type is the task's
        (:class:`~autotimm_deploy.tasks.detection.Detections`, :class:`~autotimm_deploy.tasks.classification.Classification`, ...).

        ``resize``: ``fit`` (default, the same for every backend, so an engine, an ONNX and the model file give
        the same detections on the same image): resized into the model's input size as its family declares;
        ``native``: at the image's own resolution (padded to a stride multiple) where the artifact takes
        dynamic H/W (``--dynamic-hw`` exports and model files) and the size fits its profile."""
        if resize not in ("fit", "native"):
            raise AutotimmError(f"resize must be 'fit' or 'native', got {resize!r}")
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        arrays = [load_image(im) for im in images]
        lo, hi = self.info.batch
        task = get_task(self.info.task)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(self._target_size(*a.shape[:2], resize), []).append(i)
        results: List = [None] * len(arrays)
        for size, idx in groups.items():
            for start in range(0, len(idx), hi):
                chunk = idx[start:start + hi]
                batch, boxes = self.preprocess([arrays[i] for i in chunk], size)
                n = len(chunk)
                if n < lo:  # static or minimum batch: pad with copies, drop their outputs
                    batch = np.concatenate([batch] + [batch[-1:]] * (lo - n))
                out = self.backend.infer({self.backend.input_name: batch})
                out = {k: np.asarray(v)[:n] for k, v in out.items()}
                for i, r in zip(chunk, task.postprocess(out, self.info, size, boxes, score_thresh=score_thresh,
                                                        iou_thresh=iou_thresh, max_detections=max_detections,
                                                        class_agnostic=class_agnostic, networks=self.networks)):
                    results[i] = r
        return results

    def _with(self, source: str, why: str) -> "Predictor":
        self.source, self.why = source, why
        return self

    def describe(self) -> str:
        return f"{self.backend.name} <- {self.source}" + (f" ({self.why})" if self.why else "")


def _onnx_info(path: Path) -> ArtifactInfo:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    dims = m.graph.input[0].type.tensor_type.shape.dim
    b = dims[0].dim_value
    return ArtifactInfo.from_metadata(meta, batch=(b, b) if b else (1, 1 << 30))


def _engine_info(sidecar: Dict) -> ArtifactInfo:
    prof = sidecar["profiles"][0]
    lo, hi = prof[sidecar["io"]["inputs"][0]["name"]]["min"], prof[sidecar["io"]["inputs"][0]["name"]]["max"]
    return ArtifactInfo.from_metadata(sidecar.get("model", {}), batch=(lo[0], hi[0]),
                                      hw_range=((lo[2], lo[3]), (hi[2], hi[3])))


def _model_file_info(backend: TorchBackend) -> ArtifactInfo:
    loaded = backend.loaded
    meta = loaded.metadata
    size = meta.get("input_size") or [224, 224]
    strides = tuple(getattr(loaded.model, "strides", ()))
    return ArtifactInfo(loaded.task, list(meta["class_names"]), tuple(size), tuple(meta["mean"]), tuple(meta["std"]),
                        "raw", strides, dynamic_hw=True, family=loaded.family,  # PyTorch takes any size
                        overrides=meta.get("overrides", {}))


def _sibling_networks(path: Path, info: ArtifactInfo, make) -> Dict[str, Backend]:
    """The task's extra networks beside a main network's file (``mask.fp16.onnx`` beside ``model.fp16.onnx``...);
    a task that needs one that is not there is an error naming it."""
    from .. import layout

    nets = {}
    for name in get_task(info.task).extra_networks:
        found = [path.parent / f for f in layout.siblings(path.name, name) if (path.parent / f).exists()]
        if not found:
            raise AutotimmError(f"{path}: a {info.task} model needs its {name} network beside it "
                                f"({' or '.join(layout.siblings(path.name, name))}): load the export directory")
        nets[name] = make(found[0])
    return nets


def _source_model(export_dir: Path, source: Dict) -> Path:
    """The export's model file: where the manifest says, else at the same place relative to the (moved) folder."""
    tried = [Path(source["path"])]
    if source.get("relative_to_export"):
        tried.append(Path(os.path.normpath(export_dir / source["relative_to_export"])))
    for p in tried:
        if p.exists():
            return p
    raise AutotimmError(f"{export_dir}: the export's source model file is gone (looked for "
                        f"{' and '.join(str(p) for p in tried)}); pass the model file itself to load it")


def load(path: str | Path, backend: str = "auto", precision: Optional[str] = None,
         providers: Optional[Sequence[str]] = None, cuda_graphs: bool = False,
         allow_host_code: bool = False, overrides: Optional[Dict] = None) -> Predictor:
    """A :class:`Predictor` for ``path``: an export directory or its ``manifest.json``, an ``.engine``,
    an ``.onnx`` or a model file (``.pt``/``.safetensors``).

    ``backend``: ``auto`` (an export directory: the engine if this machine can run it, else ONNX
    Runtime on the FP32 ONNX, or the FP16 ONNX when ``precision="fp16"`` or ONNX Runtime has CUDA, or the
    INT8 ONNX when ``precision="int8"``: its CPU form on CPU, its TensorRT form with CUDA),
    ``tensorrt`` (the engine; an error says why it cannot run), ``onnxruntime`` or ``pytorch``
    (the export's source model file).  ``predictor.why`` says what was chosen and why.
    Engines are checked in a child process before they are deserialised (:mod:`.probe`) and their host
    code stays disallowed unless ``allow_host_code=True``: set it only for engines you built or trust.
    ``overrides`` (a model file or checkpoint only): class names, input size, mean/std the file does not
    record, as :class:`~autotimm_deploy.models.io.ModelOverrides` fields.
    """
    from .load import check_engine, engine_runnable

    if backend not in BACKENDS:
        raise AutotimmError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = Path(path)
    if not path.exists():
        raise AutotimmError(f"{path}: no such file or directory")
    model_file = path.suffix.lower() in (".pt", ".pth", ".safetensors", ".ckpt")
    checkpoint_dir = path.is_dir() and not (path / "manifest.json").exists() and (
        any(path.glob("*.ckpt")) or any(path.glob("checkpoints/*.ckpt")))  # a Lightning log directory
    if precision is not None and not (path.is_dir() and not checkpoint_dir) and path.name != "manifest.json":
        raise AutotimmError(f"--precision chooses between an export directory's FP32, FP16 and INT8 ONNX; {path} is one "
                            "file: load the file you want")
    if overrides and not (model_file or checkpoint_dir):
        raise AutotimmError(f"{path}: class names, input size and mean/std are recorded in an export; they can be given "
                            "only for a model file or checkpoint (re-export with them)")
    if (path.is_dir() and not checkpoint_dir) or path.name == "manifest.json":
        d = path if path.is_dir() else path.parent
        mpath = d / "manifest.json"
        if not mpath.exists():
            raise AutotimmError(f"{d}: not an export directory (no manifest.json); run autotimm-export first")
        manifest = json.loads(mpath.read_text())
        arts = {a["role"]: a for a in manifest["artifacts"]}
        why = ""
        if backend in ("auto", "tensorrt") and "engine" in arts:
            engine = d / arts["engine"]["file"]
            ok, reason = engine_runnable(check_engine(engine))
            if ok:
                return load(engine, "tensorrt", cuda_graphs=cuda_graphs, allow_host_code=allow_host_code)._with(
                    str(engine), f"engine runs here: {reason}")
            if backend == "tensorrt":
                raise EngineIncompatible(f"{engine}: cannot run here: {reason}")
            why = f"engine not runnable here ({reason}); "
        elif backend == "tensorrt":
            raise AutotimmError(f"{d}: the export has no engine (exported with --engine none?)")
        if backend == "pytorch":
            src = _source_model(d, manifest["source"])
            return load(src, "pytorch", overrides=manifest["source"].get("overrides"))._with(
                str(src), "the export's source model file")
        cuda = "CUDAExecutionProvider" in (providers or onnxruntime_providers())
        if precision == "int8":  # the CPU form on CPU (U8S8 kernels), the TensorRT form with CUDA
            role = "onnx-int8" if cuda else "onnx-int8-cpu"
            if role not in arts:
                raise AutotimmError(f"{d}: no INT8 ONNX in this export (export with --int8)")
            onnx_path = d / arts[role]["file"]
            return load(onnx_path, "onnxruntime", providers=providers)._with(
                str(onnx_path), why + f"ONNX Runtime on the INT8 ONNX ({arts[role].get('runtime', role)})")
        want16 = precision == "fp16" or (precision is None and cuda)
        role = "onnx-fp16" if want16 and "onnx-fp16" in arts else "onnx"
        if precision == "fp16" and role != "onnx-fp16":
            raise AutotimmError(f"{d}: no FP16 ONNX in this export (export with --fp16)")
        onnx_path = d / arts[role]["file"]
        return load(onnx_path, "onnxruntime", providers=providers)._with(
            str(onnx_path), why + f"ONNX Runtime on the {'FP16' if role == 'onnx-fp16' else 'FP32'} ONNX")
    suffix = path.suffix.lower()
    if suffix in (".engine", ".plan"):
        if backend not in ("auto", "tensorrt"):
            raise AutotimmError(f"{path} is an engine: use backend tensorrt (or auto)")
        be = EngineBackend(path, cuda_graphs=cuda_graphs, allow_host_code=allow_host_code)
        info = _engine_info(be.sidecar)
        nets = _sibling_networks(path, info, lambda p: EngineBackend(p, cuda_graphs, allow_host_code))
        return Predictor(be, info, str(path), "engine", nets)
    if suffix == ".onnx":
        if backend not in ("auto", "onnxruntime"):
            raise AutotimmError(f"{path} is an ONNX file: use backend onnxruntime (or auto)")
        be = OnnxRuntimeBackend(path, providers)
        info = _onnx_info(path)
        return Predictor(be, info, str(path), "ONNX Runtime",
                         _sibling_networks(path, info, lambda p: OnnxRuntimeBackend(p, providers)))
    if model_file or checkpoint_dir:
        if backend not in ("auto", "pytorch"):
            raise AutotimmError(f"{path} is a model file: use backend pytorch (or auto)")
        be = TorchBackend(path, overrides=overrides)
        task = get_task(be.loaded.family.task)
        nets = {name: TorchNetworkBackend(be.loaded.model, name) for name in task.extra_networks}
        return Predictor(be, _model_file_info(be), str(path), "PyTorch reference", nets)
    raise AutotimmError(f"{path}: unknown artifact type {suffix!r}; expected an export directory, manifest.json, "
                        ".engine, .onnx, .pt, .safetensors or an AutoTimm .ckpt")
