"""The checkpoints ``tests/autotimm/builders.py`` has real AutoTimm write (semantic / instance segmentation, YOLOX)
load safely, carry what AutoTimm and Lightning write, and rebuild into AutoTimm modules whose own ``predict()``
gives non-trivial output."""

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


KINDS = ("semantic_deeplab", "semantic_fcn", "instance", "yolox_detector")
VARIANTS = [(kind, compiled) for kind in KINDS for compiled in (False, True)]


@pytest.fixture(scope="module")
def builders(autotimm_builders):
    assert autotimm_builders.KINDS == KINDS
    return autotimm_builders


@pytest.fixture(scope="module")
def built(tmp_path_factory, builders):
    made = {}

    def get(kind: str, compiled: bool) -> Path:
        if (kind, compiled) not in made:
            out = tmp_path_factory.mktemp(f"{kind}-{'compiled' if compiled else 'plain'}")
            made[kind, compiled] = builders.build_checkpoint(kind, out, compile_model=compiled)
        return made[kind, compiled]

    return get


def _images(builders, n: int = 4) -> torch.Tensor:
    return builders.calibration_images(builders.N_CALIB + n)[builders.N_CALIB:]  # images the builder never saw


@pytest.mark.parametrize("kind,compiled", VARIANTS)
def test_checkpoint_as_autotimm_writes_it(kind, compiled, built):
    path = built(kind, compiled)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert {"state_dict", "hyper_parameters", "datamodule_hyper_parameters", "pytorch-lightning_version",
            "optimizer_states", "global_step"} <= set(ckpt)
    assert ckpt["global_step"] == 1
    assert ckpt["datamodule_hyper_parameters"]["image_size"] == 128
    hp = ckpt["hyper_parameters"]
    assert hp["lr"] == 0.0 and hp["compile_model"] is compiled and hp["seed"] is None and hp["deterministic"] is False
    assert {"username", "timestamp", "batch_size"} <= set(hp) and hp["batch_size"] == 8
    orig_mod = [k for k in ckpt["state_dict"] if "._orig_mod." in k]
    assert bool(orig_mod) is compiled
    if compiled:
        assert len(orig_mod) == len(ckpt["state_dict"])  # every submodule is compiled, no plain key left
    if kind.startswith("semantic_"):
        assert hp["num_classes"] == 5 and hp["backbone"] == "test_efficientnet"
        assert hp["head_type"] == {"semantic_deeplab": "deeplabv3plus", "semantic_fcn": "fcn"}[kind]
        assert ckpt["datamodule_hyper_parameters"]["format"] == "png"
    elif kind == "instance":
        assert hp["num_classes"] == 4 and hp["backbone"] == "test_efficientnet"
        assert hp["fpn_channels"] == 64 and hp["head_num_convs"] == 1
    else:
        assert hp["num_classes"] == 4 and hp["model_name"] == "yolox-nano"
        assert "backbone" not in hp


@pytest.mark.parametrize("kind,compiled", VARIANTS)
def test_rebuilt_autotimm_module_predicts(kind, compiled, built, builders):
    model = builders.rebuild(built(kind, compiled))
    x = _images(builders)
    with torch.no_grad():
        out = model.predict(x)
    if kind.startswith("semantic_"):
        assert out.dtype == torch.long and out.shape[0] == len(x)
        for labels in out:
            assert torch.unique(labels).numel() >= 2  # not a constant label map
        assert torch.unique(out).numel() >= 3
        return
    counts = [len(p["scores"]) for p in out]
    assert min(counts) >= 1 and 5 <= np.mean(counts) <= 100, counts
    for p in out:
        wh = p["boxes"][:, 2:] - p["boxes"][:, :2]
        assert float(wh.median()) > 8  # boxes of tens of pixels, not points
        assert p["labels"].unique().numel() >= 2
    if kind == "instance":
        for p in out:
            assert p["masks"].dtype == torch.bool and tuple(p["masks"].shape) == (len(p["scores"]), 128, 128)
            assert bool(p["masks"].flatten(1).any(1).float().mean() > 0.5)  # most detections have a mask


def test_outputs_depend_on_the_image(built, builders):
    """Random-init BatchNorms alone would leave YOLOX's deep CSPDarknet with vanishing activations: every image
    would give the same detections.  The builder's weights must not."""
    for kind in ("yolox_detector", "instance"):
        model = builders.rebuild(built(kind, False))
        x = _images(builders, 2)
        with torch.no_grad():
            cls = model(x)[0]
        assert all(float((c[0] - c[1]).abs().mean()) > 1e-2 for c in cls[:2])


def test_builds_are_deterministic(tmp_path, built, builders):
    first = torch.load(built("yolox_detector", False), map_location="cpu", weights_only=True)["state_dict"]
    again = torch.load(builders.build_checkpoint("yolox_detector", tmp_path), map_location="cpu",
                       weights_only=True)["state_dict"]
    assert list(first) == list(again)
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = torch.load(builders.build_checkpoint("yolox_detector", tmp_path / "s1", seed=1, filename="s1.ckpt"),
                       map_location="cpu", weights_only=True)["state_dict"]
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_overrides_reach_the_module(tmp_path, builders):
    path = builders.build_checkpoint("semantic_fcn", tmp_path, freeze_backbone=True, n_train=8, n_val=0)
    assert torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]["freeze_backbone"] is True
    with pytest.raises(ValueError, match="kind must be one of"):
        builders.build_checkpoint("panoptic", tmp_path)
