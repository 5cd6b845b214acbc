import os

import pytest
import torch

from autotimm_deploy.parity.random_init import randomize_norms

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


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
