"""What every model-file reader shares: the :class:`LoadedModel` it returns, the metadata it records, and the
checks of the file and of its state dict (:mod:`.readers` picks the reader; :mod:`.io` and
:mod:`.autotimm_ckpt` are readers).

This module imports no other module of :mod:`autotimm_deploy.models`: every reader and every family module
may import it.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..errors import ModelFileError

__all__ = ["LoadedModel", "IMAGENET_MEAN", "IMAGENET_STD", "clean_metadata", "check_state_dict", "build_and_load",
           "read_regular_file"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def clean_metadata(
    model: nn.Module,
    class_names: Optional[Sequence[str]],
    input_size: Optional[Sequence[int]],
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
) -> Dict[str, Any]:
    """Class names, input size (H, W) and normalisation of ``model``, checked, with the defaults filled in
    (``class_i``, ImageNet mean/std); a :class:`ValueError` names what does not fit.

    >>> m = nn.Linear(8, 2)
    >>> m.num_classes = 2
    >>> meta = clean_metadata(m, None, (32, 48), None, None)
    >>> meta["class_names"], meta["input_size"]
    (['class_0', 'class_1'], [32, 48])
    """
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


def read_regular_file(path: Path) -> bytes:
    """The bytes of the regular file ``path``; a device, pipe, socket, a missing, unreadable or empty file is a
    :class:`ModelFileError` (a FIFO would block on open, ``/dev/zero`` never ends)."""
    try:
        st = path.stat()  # follows symlinks: a link to /dev/zero is judged by what it points to
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
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
