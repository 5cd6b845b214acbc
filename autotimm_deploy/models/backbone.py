"""timm ``features_only`` backbones returning [C3, C4, C5] (strides 8, 16, 32)."""

from __future__ import annotations

from typing import Any, List, Tuple

import timm
from torch import Tensor, nn

from ..errors import AutotimmError

__all__ = ["create_feature_backbone", "nchw_features", "backbone_channels", "backbone_strides", "FEATURE_STRIDES"]

#: The strides of the three backbone levels the FPN consumes (C3, C4, C5).
FEATURE_STRIDES = (8, 16, 32)


class PretrainedWeightsError(AutotimmError):
    """Pretrained weights were requested but could not be obtained."""


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"backbone name must be a non-empty str, got {name!r}")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown timm backbone {name!r}.{hint} See timm.list_models() for all names.")


def _create(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # network, hub or cache errors all mean: no weights here
        raise PretrainedWeightsError(
            f"could not fetch pretrained weights for {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Use pretrained=False and load trained weights from a model file instead "
            "(autotimm_deploy.load_model), or pre-populate the Hugging Face cache."
        ) from exc


def _all_levels(name: str, **kwargs: Any) -> List[Tuple[int, int]]:
    """(out_index, stride) of every level timm can return for ``name``.

    timm's ``features_only`` default returns only some levels (sedarknet21: strides 1-16, its stride-32
    stage is index 5), so the list comes from the full model's ``feature_info``, built on the meta device
    (no memory, no weights); models that cannot be built there fall back to the ``features_only`` default."""
    import torch

    try:
        with torch.device("meta"):
            info = getattr(timm.create_model(name, pretrained=False, **kwargs), "feature_info", None)
        if info and all("reduction" in f for f in info):
            return [(i, int(f["reduction"])) for i, f in enumerate(info)]
    except Exception:  # fall back to timm's features_only default below, which raises a clear error itself
        pass
    try:
        probe = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    except Exception as exc:
        raise ValueError(f"timm backbone {name!r} does not support features_only: {exc}") from exc
    return [(int(i), int(r)) for i, r in zip(probe.feature_info.out_indices, probe.feature_info.reduction())]


def create_feature_backbone(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Create a timm ``features_only`` backbone returning [C3, C4, C5] (strides 8, 16, 32).

    The levels are chosen from timm's ``feature_info`` by their reduction, never hard-coded;
    the returned module's ``feature_info.channels()`` and ``feature_info.reduction()`` give
    the channels and strides.

    >>> import torch
    >>> bb = create_feature_backbone("resnet18")
    >>> bb.feature_info.channels(), bb.feature_info.reduction()
    ([128, 256, 512], [8, 16, 32])
    >>> [tuple(f.shape) for f in bb(torch.randn(1, 3, 64, 64))]
    [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    """
    _check_name(name)
    if "features_only" in kwargs or "out_indices" in kwargs:
        raise ValueError("create_feature_backbone chooses features_only/out_indices itself; do not pass them")
    levels = _all_levels(name, **kwargs)
    reductions = [r for _, r in levels]
    indices: List[int] = []
    for stride in FEATURE_STRIDES:
        # the last level with this reduction is the deepest (most semantic) one
        matches = [i for i, r in levels if r == stride]
        if not matches:
            raise ValueError(
                f"backbone {name!r} has feature levels with strides {reductions}; "
                f"the FPN needs levels at strides {list(FEATURE_STRIDES)}"
            )
        indices.append(matches[-1])
    return _create(name, pretrained, features_only=True, out_indices=tuple(indices), **kwargs)


def nchw_features(backbone: nn.Module, feats: List[Tensor]) -> List[Tensor]:
    """The backbone's feature maps as (B, C, H, W): timm's ``features_only`` swin/swinv2 return (B, H, W, C)
    and say so in ``output_fmt``; the FPN takes channels first."""
    if str(getattr(backbone, "output_fmt", "NCHW")).endswith("NHWC"):
        return [f.permute(0, 3, 1, 2) for f in feats]
    return list(feats)


def backbone_channels(backbone: nn.Module) -> List[int]:
    """Channels of each returned level, from timm's ``feature_info``."""
    return list(backbone.feature_info.channels())


def backbone_strides(backbone: nn.Module) -> List[int]:
    """Stride of each returned level, from timm's ``feature_info``."""
    return list(backbone.feature_info.reduction())
