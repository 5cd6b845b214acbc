"""Reading AutoTimm (Lightning) checkpoints without autotimm: what maps, and one clear error for what does not.

Checkpoints here are written in AutoTimm's layout by the tests themselves (state dict of this package's
AutoTimm modules, ``hyper_parameters`` as AutoTimm saves them); tests/autotimm/ uses checkpoints written by
real AutoTimm."""

import os
import zipfile

import pytest
import torch

from autotimm_deploy.cli.export import main as export_main
from autotimm_deploy.errors import ModelFileError
from autotimm_deploy.models.autotimm_ckpt import find_checkpoint, read_hparams_yaml
from autotimm_deploy.models.families.autotimm import AutotimmClassifier, AutotimmDetector
from autotimm_deploy.models.overrides import ModelOverrides, read_class_names
from autotimm_deploy.models.readers import load_model_file

HP = {"backbone": "test_resnet", "num_classes": 3, "detection_arch": "fcos", "fpn_channels": 64, "head_num_convs": 1,
      "strides": (8, 16, 32, 64, 128), "score_thresh": 0.2, "nms_thresh": 0.4, "max_detections_per_image": 7,
      "lr": 1e-3, "compile_model": True}


def _ckpt(path, arch="fcos", hp=None, compiled=True, extra_state=None, drop=None, **top):
    torch.manual_seed(0)
    hp = {**HP, "detection_arch": arch, **(hp or {})}
    if arch == "classifier":
        model = AutotimmClassifier("test_resnet", 3)
        hp = {k: v for k, v in hp.items() if k not in ("detection_arch", "fpn_channels", "strides")}
        hp["multi_label"] = False
    else:
        model = AutotimmDetector("test_resnet", 3, arch, 64, 1)
    state = {k: v for k, v in model.state_dict().items() if k not in (drop or ())}
    if compiled:
        state = {k.replace(".", "._orig_mod.", 1): v for k, v in state.items()}
    state.update(extra_state or {})
    obj = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.6", "state_dict": state,
           "hyper_parameters": hp, "datamodule_hyper_parameters": {"image_size": 128, "batch_size": 8},
           "optimizer_states": [], **top}
    torch.save(obj, path)
    return model, path


@pytest.mark.parametrize("arch, family, outputs", [("fcos", "autotimm-fcos", 3), ("yolox", "autotimm-yolox", 2),
                                                   ("classifier", "autotimm-classifier", 1)])
def test_checkpoints_map_to_their_family(tmp_path, arch, family, outputs):
    model, path = _ckpt(tmp_path / "best.ckpt", arch, extra_state={"focal_loss.alpha": torch.tensor(0.25)})
    loaded = load_model_file(path)
    assert loaded.family.name == family and len(loaded.family.outputs) == outputs
    assert loaded.metadata["input_size"] == [128, 128] and loaded.metadata["autotimm"]["compiled"]
    assert loaded.metadata["class_names"] == ["class_0", "class_1", "class_2"]
    for k, v in model.state_dict().items():  # the weights, not a fresh init
        assert torch.equal(loaded.model.state_dict()[k], v), k
    if arch != "classifier":
        rule = loaded.family.postprocess
        assert (rule.score_thresh, rule.iou_thresh, rule.max_detections, rule.candidates, rule.pre_nms_top_k) == \
            (0.2, 0.4, 7, "argmax", None)
        assert loaded.model.strides == (8, 16, 32, 64, 128)
        with torch.no_grad():
            out = loaded.model(torch.randn(1, 3, 128, 128))
        assert len(out) == outputs and [t.shape[-1] for t in out[0]] == [16, 8, 4, 2, 1]


def test_yolox_uses_at_most_two_convs_per_branch(tmp_path):
    _, path = _ckpt(tmp_path / "y.ckpt", "yolox")
    assert len(load_model_file(path).model.head.cls_convs) == 1  # head_num_convs=1
    model = AutotimmDetector("test_resnet", 3, "yolox", 64, head_num_convs=4)
    assert len(model.head.cls_convs) == 2  # min(head_num_convs, 2), as AutoTimm


def test_overrides_and_class_names_file(tmp_path):
    _, path = _ckpt(tmp_path / "m.ckpt")
    (tmp_path / "names.txt").write_text("cat\n\ndog\nbird\n")
    (tmp_path / "names.json").write_text('["cat", "dog", "bird"]')
    names = read_class_names(tmp_path / "names.txt")
    assert names == read_class_names(tmp_path / "names.json") == ("cat", "dog", "bird")
    loaded = load_model_file(path, ModelOverrides(class_names=names, input_size=(96, 160), mean=(0.5,) * 3))
    assert loaded.metadata["class_names"] == ["cat", "dog", "bird"] and loaded.metadata["input_size"] == [96, 160]
    assert loaded.metadata["mean"] == [0.5] * 3 and loaded.metadata["std"] == pytest.approx([0.229, 0.224, 0.225])
    with pytest.raises(ModelFileError, match="class_names has 2 names but the model has 3 classes"):
        load_model_file(path, ModelOverrides(class_names=("a", "b")))
    (tmp_path / "bad.json").write_text('["a", 1]')
    with pytest.raises(ModelFileError, match="JSON list of strings"):
        read_class_names(tmp_path / "bad.json")


def test_lightning_log_directory(tmp_path):
    run = tmp_path / "lightning_logs" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    _ckpt(run / "checkpoints" / "best-epoch=3-val_map=0.5000.ckpt", hyper_parameters={})
    (run / "hparams.yaml").write_text("backbone: test_resnet\nnum_classes: 3\ndetection_arch: fcos\nfpn_channels: 64\n"
                                      "head_num_convs: 1\nstrides: !!python/tuple\n- 8\n- 16\n- 32\n- 64\n- 128\n"
                                      "score_thresh: 0.3\n")
    assert read_hparams_yaml(run / "hparams.yaml")["strides"] == [8, 16, 32, 64, 128]
    loaded = load_model_file(run)  # hyper_parameters empty in the checkpoint: hparams.yaml says what it is
    assert loaded.family.postprocess.score_thresh == 0.3 and loaded.metadata["autotimm"]["hparams_from"].endswith(
        "hparams.yaml")
    _ckpt(run / "checkpoints" / "last.ckpt")
    assert find_checkpoint(run)[0].name.startswith("best-")  # the best one wins over last.ckpt
    _ckpt(run / "checkpoints" / "best-epoch=4-val_map=0.6000.ckpt")
    with pytest.raises(ModelFileError, match="holds 2 checkpoints .*pass the one to deploy"):
        load_model_file(run)
    with pytest.raises(ModelFileError, match="is a directory, but not a Lightning log directory"):
        load_model_file(tmp_path / "lightning_logs")


@pytest.mark.parametrize("change, match", [
    (dict(hp={"detection_arch": "retinanet"}), "unknown detection_arch 'retinanet'"),
    # recognised by their hyper-parameters / keys (tests/models/test_readers.py reads real ones): an ObjectDetector's
    # weights do not fit them
    (dict(hp={"head_type": "fcn"}), r"does not match an AutoTimm SemanticSegmentor \(fcn, 'test_resnet'\)"),
    (dict(extra_state={"mask_head.conv.weight": torch.zeros(1)}),
     r"state dict does not match an AutoTimm InstanceSegmentor \('test_resnet'\)"),
    (dict(hp={"head_type": "unet"}), "unknown head_type 'unet'; AutoTimm's SemanticSegmentor heads are"),
    (dict(hp={"model_name": "yolox-q"}, extra_state={"neck.x": torch.zeros(1)}),
     "unknown YOLOXDetector model_name 'yolox-q'; AutoTimm's variants are yolox-nano, yolox-tiny"),
    (dict(hp={"score_thresh": 1.5}), "hyper_parameters of an AutoTimm ObjectDetector do not make a valid model: "
                                     "bad thresholds: score 1.5"),
    (dict(hp={"backbone": "resnet_does_not_exist"}), "'resnet_does_not_exist' is not a model timm"),
    (dict(hp={"backbone": "hf-hub:timm/resnet18.a1_in1k"}), "defined on the Hugging Face Hub"),
    (dict(hp={"num_classes": 0}), "num_classes=0 must be a positive integer"),
    (dict(hp={"fpn_channels": 48}), "fpn_channels must be a multiple of 32"),
    (dict(drop=["head.cls_pred.weight"]), r"1 missing \(e.g. \['head.cls_pred.weight'\]\)"),
    (dict(extra_state={"head.extra.weight": torch.zeros(1)}), r"1 unexpected \(e.g. \['head.extra.weight'\]\)"),
    (dict(hp={"num_classes": 5}), "with the wrong shape"),
    (dict(hyper_parameters=None), "records no hyper_parameters"),
])
def test_what_cannot_be_mapped_is_one_error(tmp_path, change, match):
    hp_top = {"hyper_parameters": change.pop("hyper_parameters")} if "hyper_parameters" in change else {}
    _, path = _ckpt(tmp_path / "x.ckpt", **change, **hp_top)
    with pytest.raises(ModelFileError, match=match):
        load_model_file(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch CANARY_CKPT",))


def test_hostile_checkpoint_is_refused_naming_the_global(tmp_path, monkeypatch, capsys):
    """A Lightning-shaped checkpoint whose hyper_parameters hold a pickled os.system call: nothing runs."""
    monkeypatch.chdir(tmp_path)
    _, good = _ckpt(tmp_path / "good.ckpt")
    obj = torch.load(good, weights_only=True)
    obj["hyper_parameters"]["callback"] = _Payload()
    torch.save(obj, tmp_path / "evil.ckpt")
    with zipfile.ZipFile(tmp_path / "evil.ckpt") as z:  # the payload is really in the pickle
        assert b"system" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    with pytest.raises(ModelFileError, match=r"refused to load.*\((posix|os)\.system\)"):
        load_model_file(tmp_path / "evil.ckpt")
    code = export_main([str(tmp_path / "evil.ckpt"), "--out", str(tmp_path / "out"), "--engine", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("autotimm-export: error:") and "system" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "CANARY_CKPT").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", ["unknown_arch", "not_a_checkpoint", "bad_input_size"])
def test_refusals_leave_no_output_folder(tmp_path, capsys, make):
    if make == "unknown_arch":
        _, path = _ckpt(tmp_path / "m.ckpt", hp={"detection_arch": "ssd"})
        args = []
    elif make == "not_a_checkpoint":
        path = tmp_path / "m.pt"
        torch.save({"weights": torch.zeros(2)}, path)
        args = []
    else:
        _, path = _ckpt(tmp_path / "m.ckpt")
        args = ["--input-size", "100", "100"]
    out = tmp_path / "deep" / "out"
    assert export_main([str(path), "--out", str(out), "--engine", "none", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then one error line
    assert err[-1].startswith("autotimm-export: error:") and sum("error" in line for line in err) == 1
    assert not out.exists() and not out.parent.exists()
