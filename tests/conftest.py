import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm/GroupNorm random statistics and affine params (timm zero-inits some gammas)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@pytest.fixture
def small_detector():
    from autotimm_deploy import ObjectDetector

    torch.manual_seed(0)
    return randomize_norms(ObjectDetector("test_resnet", num_classes=4, fpn_channels=32, num_convs=1))


@pytest.fixture
def small_classifier():
    from autotimm_deploy import ImageClassifier

    torch.manual_seed(0)
    return randomize_norms(ImageClassifier("test_resnet", num_classes=4))
