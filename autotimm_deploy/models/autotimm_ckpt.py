"""AutoTimm checkpoints: PyTorch Lightning ``.ckpt`` files of every AutoTimm task class (``ImageClassifier``,
``ObjectDetector`` with FCOS and YOLOX heads, ``YOLOXDetector``, ``SemanticSegmentor``, ``InstanceSegmentor``),
rebuilt without importing ``autotimm`` and without downloading anything (a timm backbone is always created with
``pretrained=False``; the checkpoint holds the weights).

What is read (docs/autotimm.md has the whole mapping):

- the file is read like every model file: ``torch.load(weights_only=True)`` after the archive checks, a
  refusal naming the offending global (:func:`~autotimm_deploy.models.safe_load.safe_torch_load`);
- ``hyper_parameters`` (or, when absent, ``hparams.yaml`` of a Lightning log directory) and the state dict say
  which class it is: the first :class:`~autotimm_deploy.models.hparams.AutotimmClass` of
  :func:`~autotimm_deploy.models.families.autotimm_classes` whose ``matches`` accepts them (each declared beside
  its layers in its family module); its ``build`` rebuilds the network from the hyper-parameters (``backbone``,
  ``num_classes``, ...) and makes ``score_thresh``, ``nms_thresh``, ``max_detections_per_image`` (and
  ``mask_threshold``) the family's post-processing defaults;
- ``datamodule_hyper_parameters.image_size`` is the input size (``--input-size`` overrides it);
- ``torch.compile`` (AutoTimm's default ``compile_model=True``) writes ``._orig_mod`` into every key:
  those segments are removed; loss and metric entries are not part of the network and are dropped;
  any other key the network does not have is an error.

Anything that cannot be mapped (an unknown class, an unknown ``detection_arch``, ``head_type`` or YOLOX
``model_name``, a backbone timm does not know, missing or unexpected weights) raises
:class:`~autotimm_deploy.errors.ModelFileError` with one line naming the cause.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import ModelFileError
from .families import autotimm_classes
from .hparams import AutotimmClass, HParams
from .loaded import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, check_state_dict

__all__ = ["find_checkpoint", "is_lightning_checkpoint", "load_checkpoint", "read_hparams_yaml", "strip_compile",
           "match_class"]

#: Parts of an AutoTimm LightningModule's state dict that are not the network (losses, metrics).
_NOT_NETWORK = ("focal_loss.", "giou_loss.", "mask_loss_fn.", "criterion.", "train_metrics.", "val_metrics.",
                "test_metrics.", "_val_confusion.", "loss_fn.")


def _names(last: str) -> str:
    """The AutoTimm class names, ``"A, B, ... <last> E"``."""
    names = [c.name for c in autotimm_classes()]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def is_lightning_checkpoint(obj: Any) -> bool:
    """A Lightning checkpoint: a dict with ``state_dict`` and Lightning's own keys."""
    return (isinstance(obj, dict) and "state_dict" in obj
            and any(k in obj for k in ("pytorch-lightning_version", "hyper_parameters", "hparams_name")))


def find_checkpoint(directory: Path) -> Tuple[Path, Optional[Path]]:
    """The checkpoint of a Lightning log directory (``checkpoints/*.ckpt`` or ``*.ckpt``) and its
    ``hparams.yaml`` (None when absent).  Several checkpoints: the single ``best-*`` one, else an error
    listing them."""
    found = sorted(directory.glob("checkpoints/*.ckpt")) or sorted(directory.glob("*.ckpt"))
    if not found:
        raise ModelFileError(f"{directory}: is a directory, but not a Lightning log directory (no checkpoints/*.ckpt "
                             "or *.ckpt in it); expected a model file (.pt, .safetensors) or a checkpoint (.ckpt)")
    best = [p for p in found if p.name.startswith("best")]
    pick = best if best else found
    if len(pick) > 1:
        names = ", ".join(p.name for p in pick[:6]) + (" ..." if len(pick) > 6 else "")
        raise ModelFileError(f"{directory}: holds {len(pick)} checkpoints ({names}); pass the one to deploy")
    hparams = next((p for p in (directory / "hparams.yaml", pick[0].parent.parent / "hparams.yaml") if p.is_file()),
                   None)
    return pick[0], hparams


def read_hparams_yaml(path: Path) -> Dict[str, Any]:
    """Lightning's ``hparams.yaml`` with YAML's safe loader (plus ``!!python/tuple`` read as a list)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelFileError(f"{path}: cannot read hparams.yaml: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: hparams.yaml does not hold a mapping of hyper-parameters")
    return data


def strip_compile(state: Dict[str, Any]) -> Dict[str, Any]:
    """Remove the ``_orig_mod.`` segments ``torch.compile`` puts into state-dict keys.

    >>> list(strip_compile({"backbone._orig_mod.conv.weight": 0, "_orig_mod.head.fc.bias": 1}))
    ['backbone.conv.weight', 'head.fc.bias']
    """
    return {re.sub(r"(^|\.)_orig_mod\.", r"\1", k): v for k, v in state.items()}


def match_class(path: Path, hp: HParams, state: Dict[str, Any]) -> AutotimmClass:
    """The first AutoTimm class (in :data:`~autotimm_deploy.models.families.AUTOTIMM_CLASSES` order) whose
    ``matches`` accepts the hyper-parameters and the state dict; none: a :class:`ModelFileError` listing the
    supported classes."""
    for cls in autotimm_classes():
        if cls.matches(hp, state):
            return cls
    raise ModelFileError(f"{path}: a Lightning checkpoint, but not one AutoTimm's {_names('or')} wrote "
                         f"(hyper_parameters: {sorted(hp)[:8]}); autotimm-deploy deploys AutoTimm "
                         f"{_names('and')} checkpoints")


def _input_size(path: Path, dm: Dict[str, Any]) -> Optional[list]:
    size = dm.get("image_size")
    if size is None:
        return None
    size = [size, size] if isinstance(size, int) else list(size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ModelFileError(f"{path}: datamodule_hyper_parameters image_size={dm.get('image_size')!r} is not a size")
    return size


def load_checkpoint(path: Path, obj: Dict[str, Any], digest: str, hparams_yaml: Optional[Path] = None) -> LoadedModel:
    """Rebuild the network an AutoTimm Lightning checkpoint (already read safely) holds."""
    hp = obj.get("hyper_parameters")
    if not hp and hparams_yaml is not None:
        hp = read_hparams_yaml(hparams_yaml)
    if not isinstance(hp, dict) or not hp:
        raise ModelFileError(f"{path}: the checkpoint records no hyper_parameters (and no hparams.yaml is beside it): "
                             "cannot tell which AutoTimm model it holds")
    dm = obj.get("datamodule_hyper_parameters") or {}
    dm = dm if isinstance(dm, dict) else {}
    raw_state = check_state_dict(path, obj["state_dict"])
    state = strip_compile(raw_state)
    compiled = len(state) and any("_orig_mod." in k for k in raw_state)
    h = HParams(path, hp)
    cls = match_class(path, h, state)
    state = {k: v for k, v in state.items() if not k.startswith(_NOT_NETWORK)}
    try:
        model, config = cls.build(h, state)
        extra = cls.metadata(h) if cls.metadata is not None else {}
    except ValueError as exc:  # e.g. a threshold outside [0, 1] in the family's post-processing
        raise ModelFileError(f"{path}: hyper_parameters of an AutoTimm {cls.name} do not make a valid model: "
                             f"{str(exc).splitlines()[0]}") from None
    metadata = {
        "class_names": [f"class_{i}" for i in range(model.num_classes)],
        "input_size": _input_size(path, dm),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "autotimm": {"task_class": cls.name,
                     "compiled": bool(compiled), "full_checkpoint": "optimizer_states" in obj,
                     "lightning_version": obj.get("pytorch-lightning_version"),
                     "epoch": obj.get("epoch"), "global_step": obj.get("global_step"),
                     "hparams_from": "checkpoint" if obj.get("hyper_parameters") else str(hparams_yaml),
                     **extra},
    }
    return LoadedModel(model=model, task=cls.task, config=config, metadata=metadata, sha256=digest, path=path)
