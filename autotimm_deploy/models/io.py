"""Model files: one file holding the task, constructor config, state dict and metadata.

Loading never executes code from the file: ``.pt`` files are read with
``torch.load(..., weights_only=True)`` and ``.safetensors`` files hold the config as JSON in
their metadata.  Every problem raises :class:`~autotimm_deploy.errors.ModelFileError` with a
message that names the problem.
"""

from __future__ import annotations

import hashlib
import io
import inspect
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .._atomic import atomic_write_bytes
from ..errors import ModelFileError
from .classifier import ImageClassifier
from .detector import ObjectDetector

__all__ = ["save_model", "load_model", "load_model_file", "LoadedModel", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "autotimm-deploy-model"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TASKS = {"detection": ObjectDetector, "classification": ImageClassifier}


def _task_of(model: nn.Module) -> str:
    for task, cls in _TASKS.items():
        if isinstance(model, cls):
            return task
    raise TypeError(
        f"save_model supports ObjectDetector and ImageClassifier, got {type(model).__name__}"
    )


def _clean_metadata(
    model: nn.Module,
    class_names: Optional[Sequence[str]],
    input_size: Optional[Sequence[int]],
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
) -> Dict[str, Any]:
    num_classes = model.num_classes
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the model has {num_classes} classes")
    if input_size is not None:
        input_size = [int(v) for v in input_size]
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (H, W) with positive ints, got {input_size}")
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) != 3:
            raise ValueError(f"{name} must have 3 values (R, G, B), got {list(v)}")
    return {
        "class_names": class_names if class_names is not None else [f"class_{i}" for i in range(num_classes)],
        "input_size": input_size,
        "mean": [float(v) for v in (mean if mean is not None else IMAGENET_MEAN)],
        "std": [float(v) for v in (std if std is not None else IMAGENET_STD)],
    }


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: Optional[Sequence[str]] = None,
    input_size: Optional[Sequence[int]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Path:
    """Write ``model`` to ``path`` (``.pt``, or ``.safetensors``) atomically and return the path.

    >>> import tempfile, pathlib
    >>> m = ImageClassifier("resnet18", num_classes=2)
    >>> p = save_model(m, pathlib.Path(tempfile.mkdtemp()) / "m.pt", class_names=["cat", "dog"])
    >>> load_model(p).config["num_classes"]
    2
    """
    task = _task_of(model)
    path = Path(path)
    metadata = _clean_metadata(model, class_names, input_size, mean, std)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save as st_save

        header = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "task": task,
            "config": json.dumps(model.config, sort_keys=True),
            "metadata": json.dumps(metadata, sort_keys=True),
        }
        data = st_save(state, metadata=header)
    else:
        payload = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "task": task,
            "config": dict(model.config),
            "metadata": metadata,
            "state_dict": state,
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
    atomic_write_bytes(path, data)
    return path


@dataclass
class LoadedModel:
    """A model rebuilt from a model file, with what the file said about it."""

    model: nn.Module
    task: str
    config: Dict[str, Any]
    metadata: Dict[str, Any]
    sha256: str
    path: Path
    extra: Dict[str, Any] = field(default_factory=dict)


def _read_pt(path: Path, raw: bytes) -> Dict[str, Any]:
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        if raw[:2] == b"\x80\x02" or raw[:1] == b"\x80":
            raise ModelFileError(
                f"{path}: legacy (non-zip) torch serialisation is not accepted; re-save the model with "
                "autotimm_deploy.save_model"
            )
        raise ModelFileError(f"{path}: not a model file (not a torch zip archive nor safetensors)")
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        names = zf.namelist()
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise ModelFileError(
                f"{path}: this is a TorchScript archive, which holds code; autotimm-deploy only loads "
                "model files written by autotimm_deploy.save_model"
            )
        bad = zf.testzip()
        if bad is not None:
            raise ModelFileError(f"{path}: corrupt archive member {bad!r} (file damaged or truncated)")
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe globals, RuntimeError for storage errors
        unsafe: List[str] = []
        try:
            unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(raw)))
        except Exception:
            pass
        if unsafe:
            raise ModelFileError(
                f"{path}: refused to load: the file references code or objects that are not allowed "
                f"({', '.join(sorted(unsafe))}); model files may hold only tensors and plain data. "
                "Only load files you trust, and re-save them with autotimm_deploy.save_model."
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: could not read the model file safely: {first}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: not an autotimm-deploy model file (expected a dict with format={FORMAT_NAME!r}; "
            "a bare state dict or a pickled module is not accepted). Save models with autotimm_deploy.save_model"
        )
    return obj


def _read_safetensors(path: Path, raw: bytes) -> Dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        state = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors file: {exc}") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: safetensors file has no autotimm-deploy config in its metadata; save it with "
            "autotimm_deploy.save_model(model, 'model.safetensors')"
        )
    try:
        return {
            "format": FORMAT_NAME,
            "format_version": int(meta.get("format_version", 0)),
            "task": meta.get("task"),
            "config": json.loads(meta["config"]),
            "metadata": json.loads(meta["metadata"]),
            "state_dict": state,
        }
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: malformed autotimm-deploy metadata in safetensors header: {exc}") from None


def load_model_file(path: str | os.PathLike) -> LoadedModel:
    """Read and verify a model file and rebuild its module (in eval mode), without executing file code."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, expected a model file (.pt or .safetensors)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror}") from None
    if not raw:
        raise ModelFileError(f"{path}: file is empty")
    digest = hashlib.sha256(raw).hexdigest()
    obj = _read_safetensors(path, raw) if raw[8:10] == b"{\"" else _read_pt(path, raw)
    if obj.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {obj.get('format_version')!r} is not supported "
            f"(this toolkit reads version {FORMAT_VERSION})"
        )
    task = obj.get("task")
    if task not in _TASKS:
        raise ModelFileError(f"{path}: unknown task {task!r}; expected one of {sorted(_TASKS)}")
    config = obj.get("config")
    state = obj.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ModelFileError(f"{path}: model file lacks a config dict or a state dict")
    cls = _TASKS[task]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ModelFileError(f"{path}: config has unknown keys {unknown}; allowed: {sorted(allowed)}")
    try:
        model = cls(**config)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: config cannot build a {cls.__name__}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"{len(mismatched)} with the wrong shape (e.g. {mismatched[:2]})")
        raise ModelFileError(
            f"{path}: state dict does not match its config ({config.get('backbone')!r} {task}): " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    metadata = dict(obj.get("metadata") or {})
    return LoadedModel(model=model, task=task, config=config, metadata=metadata, sha256=digest, path=path)


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild the module saved at ``path`` (eval mode). See :func:`load_model_file` for its metadata."""
    return load_model_file(path).model
