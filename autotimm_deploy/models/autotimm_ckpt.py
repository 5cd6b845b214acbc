"""AutoTimm checkpoints: PyTorch Lightning ``.ckpt`` files of AutoTimm's ``ImageClassifier`` and
``ObjectDetector`` (FCOS and YOLOX heads), rebuilt without importing ``autotimm`` and without downloading
anything (the backbone is always created with ``pretrained=False``; the checkpoint holds the weights).

What is read (docs/autotimm.md has the whole mapping):

- the file is read like every model file: ``torch.load(weights_only=True)`` after the archive checks, a
  refusal naming the offending global (:func:`~autotimm_deploy.models.io.safe_torch_load`);
- ``hyper_parameters`` (or, when absent, ``hparams.yaml`` of a Lightning log directory) say which model
  it is: ``detection_arch`` (fcos / yolox) makes an ``ObjectDetector``, ``multi_label`` an
  ``ImageClassifier``; ``backbone``, ``num_classes``, ``fpn_channels``, ``head_num_convs``, ``strides``
  rebuild it; ``score_thresh``, ``nms_thresh`` and ``max_detections_per_image`` become the family's
  post-processing defaults;
- ``datamodule_hyper_parameters.image_size`` is the input size (``--input-size`` overrides it);
- ``torch.compile`` (AutoTimm's default ``compile_model=True``) writes ``._orig_mod`` into every key:
  those segments are removed; loss and metric entries are not part of the network and are dropped;
  any other key the network does not have is an error.

Anything that cannot be mapped (another AutoTimm task, an unknown ``detection_arch``, a backbone timm
does not know, missing or unexpected weights) raises :class:`~autotimm_deploy.errors.ModelFileError`
with one line naming the cause.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm

from ..errors import ModelFileError
from .families.autotimm import AutotimmClassifier, AutotimmDetector
from .io import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, build_and_load, check_state_dict

__all__ = ["find_checkpoint", "is_lightning_checkpoint", "load_checkpoint", "read_hparams_yaml", "strip_compile"]

#: Parts of an AutoTimm LightningModule's state dict that are not the network (losses, metrics).
_NOT_NETWORK = ("focal_loss.", "giou_loss.", "criterion.", "train_metrics.", "val_metrics.", "test_metrics.",
                "_val_confusion.", "loss_fn.")
#: Other AutoTimm tasks, recognised to say so instead of failing on missing keys.
_OTHER_TASKS = (("head_type", None, "SemanticSegmentor"), (None, "mask_head.", "InstanceSegmentor"),
                ("model_name", None, "YOLOXDetector (CSPDarknet + PAFPN)"))
_SUPPORTED = "autotimm-deploy deploys AutoTimm ImageClassifier and ObjectDetector (fcos, yolox) checkpoints"


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


def _task(path: Path, hp: Dict[str, Any], state: Dict[str, Any]) -> str:
    for key, prefix, name in _OTHER_TASKS:
        if (key and key in hp) or (prefix and any(k.startswith(prefix) for k in state)):
            raise ModelFileError(f"{path}: an AutoTimm {name} checkpoint; {_SUPPORTED}")
    if "detection_arch" in hp or any(k.startswith("fpn.") for k in state):
        return "detection"
    if "multi_label" in hp or "head.fc.weight" in state:
        return "classification"
    raise ModelFileError(f"{path}: a Lightning checkpoint, but not one AutoTimm's ImageClassifier or ObjectDetector "
                         f"wrote (hyper_parameters: {sorted(hp)[:8]}); {_SUPPORTED}")


def _get(path: Path, hp: Dict[str, Any], key: str, kind, default=None, required: bool = False):
    if key not in hp or hp[key] is None:
        if required:
            raise ModelFileError(f"{path}: hyper_parameters has no {key!r}; cannot rebuild the model")
        return default
    value = hp[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ModelFileError(f"{path}: hyper_parameters {key}={value!r} must be a positive integer")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ModelFileError(f"{path}: hyper_parameters {key}={value!r} must be a number")
    if kind is str and not isinstance(value, str):
        raise ModelFileError(f"{path}: hyper_parameters {key}={value!r} must be a string")
    return kind(value) if kind in (int, float) else value


def _backbone(path: Path, hp: Dict[str, Any]) -> str:
    name = _get(path, hp, "backbone", str, required=True)
    if name.startswith("hf-hub:") or name.startswith("hf_hub:"):
        raise ModelFileError(f"{path}: backbone {name!r} is defined on the Hugging Face Hub; rebuilding it needs the "
                             "hub, which autotimm-deploy never contacts: train with a timm model name")
    if not timm.is_model(name):
        raise ModelFileError(f"{path}: backbone {name!r} is not a model timm {timm.__version__} knows "
                             "(trained with a newer timm? upgrade timm)")
    return name


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
    task = _task(path, hp, state)
    state = {k: v for k, v in state.items() if not k.startswith(_NOT_NETWORK)}
    backbone = _backbone(path, hp)
    num_classes = _get(path, hp, "num_classes", int, required=True)
    if task == "detection":
        arch = hp.get("detection_arch", "fcos")
        if arch not in ("fcos", "yolox"):
            raise ModelFileError(f"{path}: unknown detection_arch {arch!r}; autotimm-deploy knows 'fcos' and 'yolox'")
        strides = hp.get("strides", (8, 16, 32, 64, 128))
        if not isinstance(strides, (list, tuple)) or not all(isinstance(s, int) and s > 0 for s in strides):
            raise ModelFileError(f"{path}: hyper_parameters strides={strides!r} is not a list of positive integers")
        config = {"backbone": backbone, "num_classes": num_classes, "detection_arch": arch,
                  "fpn_channels": _get(path, hp, "fpn_channels", int, 256),
                  "head_num_convs": _get(path, hp, "head_num_convs", int, 4), "strides": list(strides)}
        model = build_and_load(path, lambda: AutotimmDetector(**config), state,
                               f"an AutoTimm {arch.upper()} ObjectDetector ({backbone!r})")
        model.family = model.family.with_postprocess(
            score_thresh=_get(path, hp, "score_thresh", float, 0.05), iou_thresh=_get(path, hp, "nms_thresh", float, 0.5),
            max_detections=_get(path, hp, "max_detections_per_image", int, 100))
    else:
        config = {"backbone": backbone, "num_classes": num_classes, "multi_label": bool(hp.get("multi_label", False))}
        model = build_and_load(path, lambda: AutotimmClassifier(**config), state,
                               f"an AutoTimm ImageClassifier ({backbone!r})")
    metadata = {
        "class_names": [f"class_{i}" for i in range(num_classes)],
        "input_size": _input_size(path, dm),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "autotimm": {"task_class": "ObjectDetector" if task == "detection" else "ImageClassifier",
                     "compiled": bool(compiled), "full_checkpoint": "optimizer_states" in obj,
                     "lightning_version": obj.get("pytorch-lightning_version"),
                     "epoch": obj.get("epoch"), "global_step": obj.get("global_step"),
                     "hparams_from": "checkpoint" if obj.get("hyper_parameters") else str(hparams_yaml)},
    }
    return LoadedModel(model=model, task=task, config=config, metadata=metadata, sha256=digest, path=path)
