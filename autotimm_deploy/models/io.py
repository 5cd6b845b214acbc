"""The own model-file format: one file holding the task, constructor config, state dict and metadata
(:func:`save_model`; read back by :func:`~autotimm_deploy.models.readers.load_model_file`, whose registry
holds this module's reader).

Loading never executes code from the file: ``.pt`` files are read with
``torch.load(..., weights_only=True)`` and ``.safetensors`` files hold the config as JSON in
their metadata.  Every problem raises :class:`~autotimm_deploy.errors.ModelFileError` with a
message that names the problem.
"""

from __future__ import annotations

import io
import inspect
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from .._atomic import atomic_write_bytes
from ..errors import ModelFileError
from .classifier import ImageClassifier
from .detector import ObjectDetector
from .loaded import LoadedModel, build_and_load, check_state_dict, clean_metadata

__all__ = ["save_model", "FORMAT_NAME", "FORMAT_VERSION", "is_own_format", "read_own_format", "read_safetensors",
           "not_a_model_file"]

FORMAT_NAME = "autotimm-deploy-model"
FORMAT_VERSION = 1

_TASKS = {"detection": ObjectDetector, "classification": ImageClassifier}


def _task_of(model: nn.Module) -> str:
    for task, cls in _TASKS.items():
        if isinstance(model, cls):
            return task
    raise TypeError(
        f"save_model supports ObjectDetector and ImageClassifier, got {type(model).__name__}"
    )


def _canonical_safetensors(data: bytes) -> bytes:
    """Re-serialise a safetensors header with sorted keys: ``safetensors`` writes ``__metadata__`` from a Rust
    HashMap, whose order changes from process to process, so the same model would not give the same bytes.
    The header stays padded to a multiple of 8 bytes; tensor offsets are relative to the data, which is unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    blob = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob + data[8 + n :]


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
    >>> from autotimm_deploy.models.readers import load_model_file
    >>> m = ImageClassifier("resnet18", num_classes=2)
    >>> p = save_model(m, pathlib.Path(tempfile.mkdtemp()) / "m.pt", class_names=["cat", "dog"])
    >>> load_model_file(p).config["num_classes"]
    2
    """
    task = _task_of(model)
    path = Path(path)
    metadata = clean_metadata(model, class_names, input_size, mean, std)
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
        data = _canonical_safetensors(st_save(state, metadata=header))
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


# timm.create_model keywords that load weights or configs from elsewhere (a path, the Hugging Face Hub)
_BANNED_BACKBONE_KWARGS = frozenset({"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                                     "cache_dir", "features_only", "out_indices"})


def is_own_format(obj: Any) -> bool:
    """A dict that says it is this format (``format``: :data:`FORMAT_NAME`); its version is checked on reading."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT_NAME


def not_a_model_file(path: Path) -> ModelFileError:
    """The error for a file that no reader recognises (to raise)."""
    return ModelFileError(
        f"{path}: not an autotimm-deploy model file nor an AutoTimm checkpoint (expected a dict with "
        f"format={FORMAT_NAME!r}, or a Lightning checkpoint with state_dict and hyper_parameters; a bare state "
        "dict or a pickled module is not accepted). Save models with autotimm_deploy.save_model"
    )


def _check_format(path: Path, obj: Any) -> Dict[str, Any]:
    if not is_own_format(obj):
        raise not_a_model_file(path)
    return obj


def read_safetensors(path: Path, raw: bytes) -> Dict[str, Any]:
    """A ``.safetensors`` file written by :func:`save_model` (its bytes ``raw``) as the dict a ``.pt`` file holds;
    a damaged file, or one without this format's metadata, is a :class:`ModelFileError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    if len(raw) < 8:
        raise ModelFileError(f"{path}: corrupt safetensors file: {len(raw)} bytes, shorter than its 8-byte header length")
    header_len = int.from_bytes(raw[:8], "little")
    if header_len > len(raw) - 8:
        raise ModelFileError(
            f"{path}: corrupt safetensors file: header length {header_len} points past the end of the "
            f"{len(raw)}-byte file (damaged or truncated)"
        )
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors file: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors file: header is JSON but not an object")
    try:
        state = st_load(raw)
    except (SafetensorError, ValueError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors file: {str(exc).splitlines()[0]}") from None
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
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


def read_own_format(path: Path, obj: Dict[str, Any], digest: str, hparams_yaml: Optional[Path] = None) -> LoadedModel:
    """Rebuild the model of a file in this format (``obj``: the dict :func:`save_model` wrote, read safely, or
    :func:`read_safetensors`' result); ``hparams_yaml`` is not used (the reader signature of
    :mod:`.readers`)."""
    if obj.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {obj.get('format_version')!r} is not supported "
            f"(this toolkit reads version {FORMAT_VERSION})"
        )
    task = obj.get("task")
    if task not in _TASKS:
        raise ModelFileError(f"{path}: unknown task {task!r}; expected one of {sorted(_TASKS)}")
    config = obj.get("config")
    if not isinstance(config, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ModelFileError(f"{path}: model file lacks a config dict or a state dict")
    state = check_state_dict(path, obj["state_dict"])
    if not all(isinstance(k, str) for k in config):
        raise ModelFileError(f"{path}: config keys must be strings")
    cls = _TASKS[task]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ModelFileError(f"{path}: config has unknown keys {unknown}; allowed: {sorted(allowed)}")
    kwargs = config.get("backbone_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelFileError(f"{path}: config backbone_kwargs must be a dict, got {type(kwargs).__name__}")
    banned = sorted(set(kwargs) & _BANNED_BACKBONE_KWARGS)
    if banned:
        raise ModelFileError(
            f"{path}: config backbone_kwargs {banned} would make timm read or download weights or configs "
            "outside the model file; the file's own state dict holds the weights"
        )
    # the weights come from the file: never let a config download pretrained ones
    build = {**config, "pretrained_backbone": False} if "pretrained_backbone" in allowed else dict(config)
    model = build_and_load(path, lambda: cls(**build), state, f"its config ({config.get('backbone')!r} {task})")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: model file metadata must be a dict, got {type(metadata).__name__}")
    return LoadedModel(model=model, task=task, config=config, metadata=dict(metadata), sha256=digest, path=path)
