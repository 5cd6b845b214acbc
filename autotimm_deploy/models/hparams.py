"""The hyper-parameters of an AutoTimm checkpoint, read with types and one-line errors (:class:`HParams`), and
the declaration of an AutoTimm task class that a checkpoint can hold (:class:`AutotimmClass`).

Each family module (:mod:`.families`) declares the AutoTimm classes it rebuilds next to its layers, as
``AUTOTIMM_CLASS``; :mod:`.autotimm_ckpt` tries them in the order of
:data:`autotimm_deploy.models.families.AUTOTIMM_CLASSES`.  This module imports neither torch nor timm at import
time and no other module of :mod:`autotimm_deploy.models`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

__all__ = ["HParams", "AutotimmClass", "DEFAULT_STRIDES"]

#: FCOS levels P3..P7 (AutoTimm's ObjectDetector and InstanceSegmentor default).
DEFAULT_STRIDES = (8, 16, 32, 64, 128)
_MISSING = object()


@dataclass(frozen=True, eq=False)
class HParams(Mapping):
    """A checkpoint's ``hyper_parameters`` (a read-only mapping) with typed accessors whose errors name the file.

    A key that is absent or ``None`` gives ``default`` (``required=True``: an error instead).

    >>> h = HParams(Path("m.ckpt"), {"num_classes": 3, "score_thresh": 0.2, "head_type": None})
    >>> h.int("num_classes"), h.float("score_thresh", 0.05), h.str("head_type", "fcn"), "num_classes" in h
    (3, 0.2, 'fcn', True)
    >>> h.int("num_classes", minimum=5)
    Traceback (most recent call last):
    ...
    autotimm_deploy.errors.ModelFileError: m.ckpt: hyper_parameters num_classes=3 must be an integer >= 5
    >>> h.int("fpn_channels", required=True)
    Traceback (most recent call last):
    ...
    autotimm_deploy.errors.ModelFileError: m.ckpt: hyper_parameters has no 'fpn_channels'; cannot rebuild the model
    """

    path: Path
    values: Mapping[str, Any]

    # -- the mapping: what matchers and callers read as they are
    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> builtins.int:
        return len(self.values)

    def error(self, message: builtins.str) -> ModelFileError:
        """A :class:`ModelFileError` ``"<path>: <message>"`` (to raise)."""
        return ModelFileError(f"{self.path}: {message}")

    def _value(self, key: builtins.str, required: builtins.bool) -> Any:
        value = self.values.get(key)
        if value is None:
            if required:
                raise self.error(f"hyper_parameters has no {key!r}; cannot rebuild the model")
            return _MISSING
        return value

    # -- typed accessors
    def int(self, key: builtins.str, default: Any = None, required: builtins.bool = False,
            minimum: Optional[builtins.int] = 1) -> Any:
        """An integer (not a bool) ``>= minimum`` (default 1: a positive integer; ``None``: any integer)."""
        value = self._value(key, required)
        if value is _MISSING:
            return default
        if isinstance(value, builtins.bool) or not isinstance(value, builtins.int) or \
                (minimum is not None and value < minimum):
            if minimum == 1:
                raise self.error(f"hyper_parameters {key}={value!r} must be a positive integer")
            raise self.error(f"hyper_parameters {key}={value!r} must be an integer"
                             + (f" >= {minimum}" if minimum is not None else ""))
        return builtins.int(value)

    def float(self, key: builtins.str, default: Any = None, required: builtins.bool = False) -> Any:
        """A number (int or float, not a bool), as a float."""
        value = self._value(key, required)
        if value is _MISSING:
            return default
        if isinstance(value, builtins.bool) or not isinstance(value, (builtins.int, builtins.float)):
            raise self.error(f"hyper_parameters {key}={value!r} must be a number")
        return builtins.float(value)

    def detection_postprocess(self, score_thresh: builtins.float, nms_thresh: builtins.float) -> Dict[builtins.str, Any]:
        """An AutoTimm detector's post-processing hyper-parameters (``score_thresh``, ``nms_thresh``,
        ``max_detections_per_image``, with its class's defaults) as :meth:`Family.with_postprocess` arguments."""
        return {"score_thresh": self.float("score_thresh", score_thresh),
                "iou_thresh": self.float("nms_thresh", nms_thresh),
                "max_detections": self.int("max_detections_per_image", 100)}

    def str(self, key: builtins.str, default: Any = None, required: builtins.bool = False) -> Any:
        """A string."""
        value = self._value(key, required)
        if value is _MISSING:
            return default
        if not isinstance(value, builtins.str):
            raise self.error(f"hyper_parameters {key}={value!r} must be a string")
        return value

    def bool(self, key: builtins.str, default: Any = False, required: builtins.bool = False) -> Any:
        """A boolean (``True``/``False``, or the integers 0 and 1 YAML and older configs may hold)."""
        value = self._value(key, required)
        if value is _MISSING:
            return default
        if isinstance(value, builtins.bool) or (isinstance(value, builtins.int) and value in (0, 1)):
            return builtins.bool(value)
        raise self.error(f"hyper_parameters {key}={value!r} must be true or false")

    def backbone(self, key: builtins.str = "backbone") -> builtins.str:
        """The timm model name of the backbone: required, never a Hugging Face Hub name (rebuilding it would
        contact the hub), and one that this timm knows."""
        import timm

        name = self.str(key, required=True)
        if name.startswith("hf-hub:") or name.startswith("hf_hub:"):
            raise self.error(f"backbone {name!r} is defined on the Hugging Face Hub; rebuilding it needs the "
                             "hub, which autotimm-deploy never contacts: train with a timm model name")
        if not timm.is_model(name):
            raise self.error(f"backbone {name!r} is not a model timm {timm.__version__} knows "
                             "(trained with a newer timm? upgrade timm)")
        return name

    def strides(self, key: builtins.str = "strides", default: Sequence[builtins.int] = DEFAULT_STRIDES
                ) -> List[builtins.int]:
        """A list of positive integers (a recorded ``None`` is an error, as any other non-list)."""
        strides = self.values.get(key, default)
        if not isinstance(strides, (list, tuple)) or \
                not all(isinstance(s, builtins.int) and not isinstance(s, builtins.bool) and s > 0 for s in strides):
            raise self.error(f"hyper_parameters {key}={strides!r} is not a list of positive integers")
        return [builtins.int(s) for s in strides]


@dataclass(frozen=True)
class AutotimmClass:
    """An AutoTimm LightningModule class a checkpoint may hold, declared beside the layers that rebuild it.

    ``name``: AutoTimm's class name (recorded as ``metadata["autotimm"]["task_class"]``); ``task``: the
    :class:`~autotimm_deploy.models.loaded.LoadedModel` task; ``matches(hp, state)``: whether the hyper-parameters
    (:class:`HParams`, a mapping) and the network's state dict (``_orig_mod.`` and loss/metric entries removed)
    are this class's; ``build(h, state) -> (module, config)``: the module in eval mode with ``state`` loaded
    strictly and the checkpoint's post-processing in its ``family``, and its constructor config;
    ``metadata(h)``: extra entries for ``metadata["autotimm"]`` (optional)."""

    name: str
    task: str
    matches: Callable[[HParams, Dict[str, "Tensor"]], bool]
    build: Callable[[HParams, Dict[str, "Tensor"]], Tuple["nn.Module", Dict[str, Any]]]
    metadata: Optional[Callable[[HParams], Dict[str, Any]]] = None
    description: str = ""
