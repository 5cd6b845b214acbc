"""Random-init helpers that make parity checks on untrained models meaningful.

timm zero-initialises the last BatchNorm gamma of residual blocks and the spec's head init
(std 0.01, cls bias -4.6) makes every output nearly constant: parity on such a model cannot see
errors in those branches.  These helpers give BatchNorms random statistics and the head
He-normal weights.
"""

from __future__ import annotations

import torch

__all__ = ["randomize_norms", "spread_head"]


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm running statistics and affine parameters; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def spread_head(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """He-normal weights and zero biases for every conv of ``model.head``.

    Logits come out ~N(0, 2) and distances exp(N(0, 2)) px, so boxes, scores and detections
    depend on the backbone.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.zero_()
    return model
