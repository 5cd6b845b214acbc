"""Reading a model file: :func:`load_model_file` and the registry of file readers it picks from.

Every file goes through the same checks first (a regular file, its SHA-256, then either a ``.safetensors``
header or one ``torch.load(weights_only=True)`` after the archive checks of :mod:`.safe_load`); the object read
goes to the first registered :class:`Reader` whose ``matches`` accepts it.  The readers, in order:

- ``autotimm-lightning``: an AutoTimm (PyTorch Lightning) checkpoint (:mod:`.autotimm_ckpt`);
- ``autotimm-deploy``: a model file written by :func:`~autotimm_deploy.models.io.save_model` (:mod:`.io`).

A new kind of file is one reader (:func:`register_reader`); the reader modules never import this one.

>>> [r.name for r in readers()]
['autotimm-lightning', 'autotimm-deploy']
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from torch import nn

from .._compat import check_torch_version
from . import autotimm_ckpt, io
from .loaded import LoadedModel, read_regular_file
from .overrides import ModelOverrides
from .safe_load import safe_torch_load

__all__ = ["Reader", "register_reader", "unregister_reader", "readers", "find_reader", "load_model_file",
           "load_model"]


@dataclass(frozen=True)
class Reader:
    """One kind of model file.  ``matches(obj)``: whether the object read from a file (a dict, for every reader
    so far) is this kind; ``read(path, obj, digest, hparams_yaml)``: the :class:`LoadedModel` (``digest``: the
    file's SHA-256; ``hparams_yaml``: the ``hparams.yaml`` of the Lightning log directory the file was found in,
    or None).  ``description``: one line, for listings and errors."""

    name: str
    description: str
    matches: Callable[[Any], bool]
    read: Callable[[Path, Any, str, Optional[Path]], LoadedModel]


_READERS: List[Reader] = [
    Reader("autotimm-lightning", "an AutoTimm (PyTorch Lightning) checkpoint: state_dict and hyper_parameters",
           autotimm_ckpt.is_lightning_checkpoint, autotimm_ckpt.load_checkpoint),
    Reader("autotimm-deploy", "a model file written by autotimm_deploy.save_model (.pt or .safetensors)",
           io.is_own_format, io.read_own_format),
]


def register_reader(reader: Reader, first: bool = False) -> Reader:
    """Add ``reader`` after the registered ones (``first``: before them, so that it is tried first) and return
    it.  A name already registered is a :class:`ValueError` (unregister the old reader first)."""
    if not isinstance(reader, Reader):
        raise TypeError(f"register_reader expects a Reader, got {type(reader).__name__}")
    if any(r.name == reader.name for r in _READERS):
        raise ValueError(f"a model-file reader named {reader.name!r} is already registered")
    _READERS.insert(0, reader) if first else _READERS.append(reader)
    return reader


def unregister_reader(name: str) -> Reader:
    """Remove the reader called ``name`` and return it (a :class:`KeyError` when there is none)."""
    for i, r in enumerate(_READERS):
        if r.name == name:
            return _READERS.pop(i)
    raise KeyError(f"no model-file reader named {name!r}; registered: {[r.name for r in _READERS]}")


def readers() -> Tuple[Reader, ...]:
    """The registered readers, in the order they are tried."""
    return tuple(_READERS)


def find_reader(obj: Any) -> Optional[Reader]:
    """The first registered reader whose ``matches`` accepts ``obj``, or None."""
    return next((r for r in _READERS if r.matches(obj)), None)


def load_model_file(path: str | os.PathLike, overrides: Optional[ModelOverrides] = None) -> LoadedModel:
    """Read and verify a model file and rebuild its module (in eval mode), without executing file code.

    ``path``: a model file written by :func:`~autotimm_deploy.models.io.save_model` (``.pt`` /
    ``.safetensors``), an AutoTimm (PyTorch Lightning) checkpoint ``.ckpt``, or a Lightning log directory holding
    ``checkpoints/*.ckpt`` (and ``hparams.yaml``); see :mod:`autotimm_deploy.models.autotimm_ckpt`.  ``overrides``
    replace what the file records (or does not) about class names, input size and normalisation.
    """
    check_torch_version()
    path = Path(path)
    hparams_yaml = None
    if path.is_dir():
        path, hparams_yaml = autotimm_ckpt.find_checkpoint(path)
    raw = read_regular_file(path)
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix == ".safetensors" or raw[8:10] == b"{\"":
        obj = io.read_safetensors(path, raw)
    else:
        obj = safe_torch_load(path, raw)
    reader = find_reader(obj)
    if reader is None:
        raise io.not_a_model_file(path)
    loaded = reader.read(path, obj, digest, hparams_yaml)
    return (overrides or ModelOverrides()).apply(loaded)


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild the module saved at ``path`` (eval mode). See :func:`load_model_file` for its metadata."""
    return load_model_file(path).model
