"""Fixtures for the tests against real AutoTimm: checkpoints AutoTimm itself wrote
(scripts/make_autotimm_fixtures.py, tests/fixtures/autotimm/fixtures.json) and AutoTimm's own modules
built from them.  autotimm-deploy never imports autotimm; these tests do, as the reference."""

import functools
import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "autotimm"
INDEX = json.loads((FIXTURES / "fixtures.json").read_text())["fixtures"]


def _path(name: str) -> Path:
    return FIXTURES / INDEX[name]["file"]


@functools.lru_cache(maxsize=None)
def _autotimm_model(name: str):
    import autotimm
    from autotimm import BackboneConfig, FeatureBackboneConfig

    ckpt = torch.load(_path(name), map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    common = dict(num_classes=hp["num_classes"], compile_model=False, seed=None, deterministic=False)
    if "detection_arch" in hp:
        model = autotimm.ObjectDetector(
            backbone=FeatureBackboneConfig(model_name=hp["backbone"], pretrained=False),
            detection_arch=hp["detection_arch"], fpn_channels=hp["fpn_channels"], head_num_convs=hp["head_num_convs"],
            score_thresh=hp["score_thresh"], nms_thresh=hp["nms_thresh"],
            max_detections_per_image=hp["max_detections_per_image"], strides=tuple(hp["strides"]), **common)
    else:
        model = autotimm.ImageClassifier(backbone=BackboneConfig(model_name=hp["backbone"], pretrained=False),
                                         multi_label=hp["multi_label"], head_dropout=hp["head_dropout"], **common)
    model.load_state_dict({k.replace("._orig_mod", ""): v for k, v in ckpt["state_dict"].items()}, strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def fixture_path():
    """``fixture_path(name)``: the checkpoint file of a fixture named in fixtures.json."""
    return _path


@pytest.fixture
def autotimm_model():
    """``autotimm_model(name)``: AutoTimm's own LightningModule for a fixture, constructed with pretrained=False and
    compile off (its load_from_checkpoint would download the backbone), the checkpoint's weights loaded strictly.
    A fresh copy's thresholds may be changed by a test: each call after the first returns a deep copy."""
    import copy

    return lambda name: copy.deepcopy(_autotimm_model(name))
