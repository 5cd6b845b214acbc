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
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from .._atomic import atomic_write_bytes
from .._compat import check_torch_version
from ..errors import ModelFileError
from .classifier import ImageClassifier
from .detector import ObjectDetector
from .overrides import ModelOverrides, read_class_names  # noqa: F401 (public here too)
from .safe_load import safe_torch_load

__all__ = ["save_model", "load_model", "load_model_file", "LoadedModel", "ModelOverrides", "read_class_names",
           "FORMAT_NAME", "FORMAT_VERSION"]

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

    @property
    def family(self):
        """The model's :class:`~autotimm_deploy.models.family.Family` declaration."""
        return self.model.family


# timm.create_model keywords that load weights or configs from elsewhere (a path, the Hugging Face Hub)
_BANNED_BACKBONE_KWARGS = frozenset({"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                                     "cache_dir", "features_only", "out_indices"})
def _check_format(path: Path, obj: Any) -> Dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: not an autotimm-deploy model file nor an AutoTimm checkpoint (expected a dict with "
            f"format={FORMAT_NAME!r}, or a Lightning checkpoint with state_dict and hyper_parameters; a bare state "
            "dict or a pickled module is not accepted). Save models with autotimm_deploy.save_model"
        )
    return obj


def _read_safetensors(path: Path, raw: bytes) -> Dict[str, Any]:
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


def _read_regular_file(path: Path) -> bytes:
    try:
        st = path.stat()  # follows symlinks: a link to /dev/zero is judged by what it points to
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO blocks on open, /dev/zero never ends
        raise ModelFileError(f"{path}: not a regular file (a device, pipe or socket); expected a model file "
                             "(.pt or .safetensors) or an AutoTimm checkpoint (.ckpt)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror}") from None
    if not raw:
        raise ModelFileError(f"{path}: file is empty")
    return raw


def check_state_dict(path: Path, state: Any) -> Dict[str, torch.Tensor]:
    """A dict of str -> tensor, or a :class:`ModelFileError` naming the first bad entry."""
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: the state dict is a {type(state).__name__}, not a dict of tensors")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ModelFileError(f"{path}: state dict entry {k!r} is not a tensor ({type(v).__name__}) "
                                 "or its name is not a string")
    return state


def build_and_load(path: Path, factory: Callable[[], nn.Module], state: Dict[str, torch.Tensor], what: str) -> nn.Module:
    """``factory()`` with ``state`` loaded strictly, in eval mode; ``what`` names the model in errors.

    A skeleton is built on the meta device first: a config that asks for a giant model costs no memory
    before its keys and shapes are compared with the state dict the file actually holds."""
    try:
        with torch.device("meta"):
            skeleton = factory()
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot build {what}: {str(exc).splitlines()[0]}") from None
    except Exception:  # a backbone whose construction does not work on the meta device: build it for real
        try:
            skeleton = factory()
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: cannot build {what}: {str(exc).splitlines()[0]}") from None
    expected = skeleton.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"{len(mismatched)} with the wrong shape (e.g. {mismatched[:2]})")
        raise ModelFileError(f"{path}: state dict does not match {what}: " + "; ".join(parts))
    del skeleton, expected
    try:
        model = factory()
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: state dict cannot be loaded into {what}: "
                             f"{str(exc).strip().splitlines()[-1].strip()}") from None
    return model.eval()


def _load_own_format(path: Path, obj: Dict[str, Any], digest: str) -> LoadedModel:
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


def load_model_file(path: str | os.PathLike, overrides: Optional[ModelOverrides] = None) -> LoadedModel:
    """Read and verify a model file and rebuild its module (in eval mode), without executing file code.

    ``path``: a model file written by :func:`save_model` (``.pt`` / ``.safetensors``), an AutoTimm
    (PyTorch Lightning) checkpoint ``.ckpt``, or a Lightning log directory holding ``checkpoints/*.ckpt``
    (and ``hparams.yaml``); see :mod:`autotimm_deploy.models.autotimm_ckpt`.  ``overrides`` replace what
    the file records (or does not) about class names, input size and normalisation.
    """
    from . import autotimm_ckpt

    check_torch_version()
    path = Path(path)
    hparams_yaml = None
    if path.is_dir():
        path, hparams_yaml = autotimm_ckpt.find_checkpoint(path)
    raw = _read_regular_file(path)
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix == ".safetensors" or raw[8:10] == b"{\"":
        loaded = _load_own_format(path, _read_safetensors(path, raw), digest)
    else:
        obj = safe_torch_load(path, raw)
        if autotimm_ckpt.is_lightning_checkpoint(obj):
            loaded = autotimm_ckpt.load_checkpoint(path, obj, digest, hparams_yaml)
        else:
            loaded = _load_own_format(path, _check_format(path, obj), digest)
    return (overrides or ModelOverrides()).apply(loaded)


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild the module saved at ``path`` (eval mode). See :func:`load_model_file` for its metadata."""
    return load_model_file(path).model
