import os
import pickle

import numpy as np
import pytest
import torch

from autotimm_deploy import ModelFileError, load_model, load_model_file, save_model


def _outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return [t for group in out for t in group] if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_is_bit_identical(tmp_path, small_detector, suffix):
    path = save_model(small_detector, tmp_path / f"det{suffix}", class_names=["a", "b", "c", "d"], input_size=(64, 96))
    loaded = load_model_file(path)
    x = torch.randn(2, 3, 64, 96)
    for a, b in zip(_outputs(small_detector, x), _outputs(loaded.model, x)):
        assert torch.equal(a, b)
    assert loaded.task == "detection" and not loaded.model.training
    assert loaded.metadata["class_names"] == ["a", "b", "c", "d"] and loaded.metadata["input_size"] == [64, 96]
    assert loaded.config["backbone"] == "test_resnet" and len(loaded.sha256) == 64


def test_classifier_round_trip(tmp_path, small_classifier):
    model = load_model(save_model(small_classifier, tmp_path / "c.pt"))
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(_outputs(small_classifier, x)[0], _outputs(model, x)[0])


def test_save_validates_metadata(tmp_path, small_classifier):
    with pytest.raises(ValueError, match="class_names has 2 names but the model has 4 classes"):
        save_model(small_classifier, tmp_path / "c.pt", class_names=["a", "b"])
    with pytest.raises(TypeError, match="supports ObjectDetector and ImageClassifier"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "l.pt")


class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_hostile_pickle_never_runs(tmp_path):
    canary = tmp_path / "CANARY"
    path = tmp_path / "evil.pt"
    torch.save({"format": "autotimm-deploy-model", "payload": _Canary(canary)}, path)
    with pytest.raises(ModelFileError, match=r"refused to load.*(posix|os)\.system"):
        load_model(path)
    assert not canary.exists()


def test_pickled_module_is_refused(tmp_path, small_classifier):
    path = tmp_path / "module.pt"
    torch.save(small_classifier, path)
    with pytest.raises(ModelFileError, match="refused to load.*ImageClassifier"):
        load_model(path)


@pytest.mark.parametrize("content, match", [
    (b"", "file is empty"),
    # seeded, and not starting with a pickle's 0x80 (os.urandom did 1 time in 256: "legacy" instead)
    (b"\x00" + np.random.default_rng(0).bytes(4095), "not a model file"),
    (pickle.dumps({"a": 1}, protocol=2), "legacy"),
])
def test_broken_files(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        load_model(path)


def test_truncated_file(tmp_path, small_detector):
    path = save_model(small_detector, tmp_path / "d.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=str(path)):
        load_model(path)


def test_bare_state_dict_is_not_a_model_file(tmp_path, small_detector):
    path = tmp_path / "sd.pt"
    torch.save(small_detector.state_dict(), path)
    with pytest.raises(ModelFileError, match="not an autotimm-deploy model file"):
        load_model(path)


def test_state_dict_mismatch(tmp_path, small_detector):
    path = save_model(small_detector, tmp_path / "d.pt")
    obj = torch.load(path, weights_only=True)
    obj["config"]["fpn_channels"] = 64
    torch.save(obj, path)
    with pytest.raises(ModelFileError, match="state dict does not match its config.*wrong shape"):
        load_model(path)
    obj["config"]["fpn_channels"] = 32
    obj["config"]["bogus"] = 1
    torch.save(obj, path)
    with pytest.raises(ModelFileError, match=r"unknown keys \['bogus'\]"):
        load_model(path)


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_model(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ModelFileError, match="is a directory"):
        load_model(tmp_path)


def test_corrupt_safetensors(tmp_path, small_classifier):
    path = save_model(small_classifier, tmp_path / "c.safetensors")
    data = bytearray(path.read_bytes())
    data[8:12] = b"{\"x\""
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt safetensors"):
        load_model(path)


def test_interrupted_save_leaves_previous_file(tmp_path, small_classifier, monkeypatch):
    path = save_model(small_classifier, tmp_path / "c.pt")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(small_classifier, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
